#!/usr/bin/env bash
# EFS over HTTPS on loopback: 1 GiB PUT/GET with curl, 4 KiB GET and PUT at 16 clients with
# wrk, and the server's peak RSS. Durable (every acknowledged write is fsynced) and with login
# (every request carries a real token). Bounded: about 2 minutes.
#
#   bench/http.sh [--size-mib 1024] [--duration 10]
#
# Installs wrk (Debian) when missing. Builds the release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=1024
DUR=10
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --duration) DUR=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin efs-server --bin efsctl
BIN=$PWD/target/release
W=$(mktemp -d /var/tmp/efs-bench.XXXXXX)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$W"' EXIT
cd "$W"
"$BIN/efs-server" --data ./d --listen 127.0.0.1:0 ${EFS_BENCH_SERVER_ARGS:-} > srv.out 2> srv.err &
PID=$!
for _ in $(seq 100); do grep -q '^Listening on' srv.out 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^Listening on //p' srv.out)
"$BIN/efsctl" --data ./d create-fs bench > /dev/null
"$BIN/efsctl" --data ./d create-user bench --fs bench --out ./bench_key > /dev/null
CURL="curl -sS --fail --cacert ./d/system/tls-cert.pem"
TOKEN=$(EFS_URL=$URL EFS_USER=bench EFS_KEY=./bench_key.pem CURL_OPTS="--cacert ./d/system/tls-cert.pem" \
        "$OLDPWD/scripts/login-curl-openssl.sh")
H="Authorization: Bearer $TOKEN"

rss() { awk '/VmHWM/ {print $2}' /proc/$PID/status; }
echo "# EFS HTTPS benchmark, $(date -u +%F), $(nproc) cores, server $URL"
echo "rss_kib_idle $(rss)"

head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > big.bin
out=$($CURL -H "$H" -T big.bin -w '%{time_total} %{speed_upload}' -o /dev/null "$URL/big.bin")
echo "put_big_mib $SIZE_MIB seconds $(echo $out | cut -d' ' -f1) MBps $(echo $out | awk '{printf "%.0f", $2/1e6}')"
echo "rss_kib_after_put $(rss)"
out=$($CURL -H "$H" -w '%{time_total} %{speed_download}' -o got.bin "$URL/big.bin")
echo "get_big_mib $SIZE_MIB seconds $(echo $out | cut -d' ' -f1) MBps $(echo $out | awk '{printf "%.0f", $2/1e6}')"
echo "rss_kib_after_get $(rss)"
cmp -s big.bin got.bin && echo "big_roundtrip ok" || { echo "big_roundtrip MISMATCH"; exit 1; }
rm -f big.bin got.bin

head -c 4096 /dev/urandom > small.bin
$CURL -H "$H" -T small.bin -o /dev/null "$URL/small/4k.bin"
echo "## GET 4 KiB, 16 connections, ${DUR}s"
wrk -t2 -c16 -d${DUR}s --latency -H "$H" "$URL/small/4k.bin" | tee wrk_get.txt | grep -E 'Requests/sec|50%|99%|Non-2xx|errors' || true
cat > put.lua <<'LUA'
local body = string.rep("x", 4096)
local n = 0
local id = math.random(1, 1e9)
wrk.method = "PUT"
wrk.body = body
request = function()
  n = n + 1
  return wrk.format("PUT", "/put/" .. id .. "/" .. n, nil, body)
end
LUA
echo "## PUT 4 KiB new names, 16 connections, ${DUR}s"
wrk -t2 -c16 -d${DUR}s --latency -s put.lua -H "$H" "$URL" | tee wrk_put.txt | grep -E 'Requests/sec|50%|99%|Non-2xx|errors' || true
echo "rss_kib_peak $(rss)"
