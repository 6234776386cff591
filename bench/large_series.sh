#!/usr/bin/env bash
# A series of large one-stream PUTs to new names against one efs-server, each followed by two
# GETs of the file just written: MB/s of each, and the server's CPU time per PUT. What
# docs/benchmarks-history.md's direct I/O figures (run 14, "What this session changed") came from.
#
#   bench/large_series.sh                     # 5 × 1 GiB, 5 s pause (with `sync`) before each
#   bench/large_series.sh --mib 64 --count 8 --pause 0
#   bench/large_series.sh --bin DIR           # efs-server and efsctl from DIR (no build)
#
# Needs curl, openssl (for the login script) and a release build (made when --bin is not given).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MIB=1024; COUNT=5; PAUSE=5; BIN=
while [ $# -gt 0 ]; do
  case $1 in
    --mib) MIB=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    --pause) PAUSE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "large_series.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  (cd "$REPO" && cargo build --release --quiet --bin efs-server --bin efsctl)
  BIN=$REPO/target/release
fi
W=$(mktemp -d /var/tmp/efs-series.XXXXXX)
cd "$W"
"$BIN/efs-server" --data ./d --listen 127.0.0.1:0 > srv.out 2> srv.err &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$W"' EXIT
for _ in $(seq 100); do grep -q '^Listening on' srv.out 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^Listening on //p' srv.out)
[ -n "$URL" ] || { echo "efs-server did not start:" >&2; cat srv.err >&2; exit 1; }
"$BIN/efsctl" --data ./d create-fs bench > /dev/null
"$BIN/efsctl" --data ./d create-user bench --fs bench --out ./key > /dev/null
TOKEN=$(EFS_URL=$URL EFS_USER=bench EFS_KEY=./key.pem CURL_OPTS="--cacert ./d/system/tls-cert.pem" \
        "$REPO/scripts/login-curl-openssl.sh")
head -c $((MIB << 20)) /dev/urandom > src.bin
C=(curl -sS --fail --http1.1 --cacert ./d/system/tls-cert.pem -H "Authorization: Bearer $TOKEN" -o /dev/null)
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
tick=$(getconf CLK_TCK)
echo "PUT MB/s | server CPU s | GET MB/s | GET again MB/s   ($COUNT × $MIB MiB, pause $PAUSE s)"
for i in $(seq "$COUNT"); do
  sync; sleep "$PAUSE"
  t0=$(cpu)
  put=$("${C[@]}" -T src.bin -w '%{speed_upload}' "$URL/series/f$i")
  t1=$(cpu)
  g1=$("${C[@]}" -w '%{speed_download}' "$URL/series/f$i")
  g2=$("${C[@]}" -w '%{speed_download}' "$URL/series/f$i")
  awk -v p="$put" -v c=$((t1 - t0)) -v t="$tick" -v a="$g1" -v b="$g2" \
    'BEGIN { printf "%8.0f | %12.2f | %8.0f | %14.0f\n", p / 1e6, c / t, a / 1e6, b / 1e6 }'
done
