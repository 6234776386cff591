#!/usr/bin/env bash
# The efs command line against a release server on loopback: a 1 GiB file up and down with
# `efs cp` and with curl in the same run (MB/s of each), the efs client's peak RSS during
# those transfers, and `efs cp --sync` of 10,000 small files (first run, then a run with
# nothing to do).
#
#   bench/cli.sh [--size-mib 1024] [--files 10000]
#
# Builds the release binaries first. Peak RSS is VmHWM of /proc/PID/status, read every
# 20 ms while the client runs (it only grows, so the last reading is the peak).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=1024
FILES=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v curl >/dev/null && command -v openssl >/dev/null || {
  echo "needs curl and openssl (scripts/test.sh installs them)" >&2; exit 2; }
cargo build --release --quiet --bin efs-server --bin efsctl --bin efs
BIN=$PWD/target/release
SCRIPTS=$PWD/scripts
W=$(mktemp -d /var/tmp/efs-cli-bench.XXXXXX)
PID=
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
cd "$W"

"$BIN/efs-server" --data ./d --listen 127.0.0.1:0 > srv.out 2> srv.err &
PID=$!
for _ in $(seq 100); do grep -q '^Listening on' srv.out 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^Listening on //p' srv.out)
[ -n "$URL" ] || { echo "the server did not start:" >&2; cat srv.err >&2; exit 1; }
"$BIN/efsctl" --data ./d create-fs bench > /dev/null
"$BIN/efsctl" --data ./d create-user bench --fs bench --out ./bench_key > /dev/null

# The client's own environment: nothing from the caller's configuration or agent.
export EFS_CONFIG_DIR=$W/cfg XDG_CACHE_HOME=$W/cache
unset SSH_AUTH_SOCK EFS_LOG
CA=$W/d/system/tls-cert.pem
"$BIN/efs" remote add bench "$URL" --user bench --key ./bench_key --ca "$CA" 2> /dev/null

CURL="curl -sS --fail --cacert $CA"
TOKEN=$(EFS_URL=$URL EFS_USER=bench EFS_KEY=./bench_key.pem CURL_OPTS="--cacert $CA" \
        "$SCRIPTS/login-curl-openssl.sh")
H="Authorization: Bearer $TOKEN"

now() { date +%s.%N; }
# measure NAME CMD...: runs CMD, prints "NAME seconds S peak_rss_kib R", sets SECS.
measure() {
  local name=$1; shift
  local t0 t1 hwm=0 v
  t0=$(now)
  "$@" &
  local p=$!
  while kill -0 "$p" 2>/dev/null; do
    v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    [ -n "$v" ] && hwm=$v
    sleep 0.02
  done
  wait "$p"
  t1=$(now)
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  echo "$name seconds $SECS peak_rss_kib $hwm"
}
mbps() { awk -v s="$SECS" -v m="$SIZE_MIB" 'BEGIN {printf "%.0f", m * 1048576 / s / 1e6}'; }

echo "# efs CLI benchmark, $(date -u +%F), $(nproc) cores, server $URL, release build"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > big.bin

measure efs_cp_up "$BIN/efs" cp -q big.bin bench:/big-efs.bin
echo "efs_cp_up_mib $SIZE_MIB MBps $(mbps)"
measure efs_cp_down "$BIN/efs" cp -q bench:/big-efs.bin got-efs.bin
echo "efs_cp_down_mib $SIZE_MIB MBps $(mbps)"
cmp -s big.bin got-efs.bin && echo "efs_roundtrip ok" || { echo "efs_roundtrip MISMATCH"; exit 1; }
rm -f got-efs.bin

measure curl_put $CURL -H "$H" -T big.bin -o /dev/null "$URL/big-curl.bin"
echo "curl_put_mib $SIZE_MIB MBps $(mbps)"
measure curl_get $CURL -H "$H" -o got-curl.bin "$URL/big-curl.bin"
echo "curl_get_mib $SIZE_MIB MBps $(mbps)"
cmp -s big.bin got-curl.bin && echo "curl_roundtrip ok" || { echo "curl_roundtrip MISMATCH"; exit 1; }
rm -f big.bin got-curl.bin

# 10,000 small files (1–4 KiB) in 100 directories.
mkdir small
for d in $(seq 0 99); do mkdir "small/d$d"; done
head -c $((FILES * 4096)) /dev/urandom > pool.bin
awk -v n="$FILES" 'BEGIN { for (i = 0; i < n; i++) print i }' | while read -r i; do
  dd if=pool.bin of="small/d$((i % 100))/f$i.bin" bs=1024 skip=$((i * 4)) count=$((1 + i % 4)) status=none
done
rm -f pool.bin
measure sync_first "$BIN/efs" cp --sync -q small bench:/small
measure sync_nochange "$BIN/efs" cp --sync small bench:/small
"$BIN/efs" cp --sync --dry-run small bench:/small | tail -1
echo "server_peak_rss_kib $(awk '/^VmHWM/ {print $2}' /proc/$PID/status)"
