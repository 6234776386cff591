#!/usr/bin/env bash
# How long a data dir kept by bench/scale.sh takes to serve after a start: efs-server is
# started on it (cache off, as in scale.sh), a user it already has logs in, and `HEAD
# /records/` is sent until it answers 200 (file requests wait for the start-up check of the
# index digest). Prints, per run, exec to "Listening on", exec to the first answer, and the
# bytes the server read from the disk (/proc/PID/io).
#
#   bench/first_answer.sh [--cold] [--runs 3] [DIR]   # DIR: a kept scale dir, default
#                                                     # /var/tmp/efs-scale/large
#
# --cold drops the kernel's page cache before each run (root: `echo 3 >
# /proc/sys/vm/drop_caches`; the whole machine's cache), as after a reboot.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
COLD=
RUNS=3
D=/var/tmp/efs-scale/large
while [ $# -gt 0 ]; do
  case "$1" in
    --cold) COLD=1; shift ;;
    --runs) RUNS=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "first_answer.sh: unknown option $1" >&2; exit 2 ;;
    *) D=$1; shift ;;
  esac
done
[ -e "$D/data/system/keyparts.json" ] || { echo "first_answer.sh: $D has no data dir (run bench/scale.sh --keep first)" >&2; exit 2; }
USER_KEY=$(find "$D" -maxdepth 1 -name 'key-u*.pem' | head -1)
[ -n "$USER_KEY" ] || { echo "first_answer.sh: no user key in $D (bench/scale.sh --keep leaves one)" >&2; exit 2; }
USER_NAME=$(basename "$USER_KEY" .pem); USER_NAME=${USER_NAME#key-}
cargo build --release --quiet --bin efs-server
BIN=$REPO/target/release
OUT=$(mktemp -d)
SPID=
cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT
CERT=$D/data/system/tls-cert.pem
for run in $(seq "$RUNS"); do
  if [ -n "$COLD" ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
  t0=$(date +%s.%N)
  "$BIN/efs-server" --data "$D/data" --listen 127.0.0.1:0 --cache-size 0 > "$OUT/out" 2> "$OUT/err" &
  SPID=$!
  for _ in $(seq 6000); do grep -q '^Listening on' "$OUT/out" 2>/dev/null && break; sleep 0.005; done
  t1=$(date +%s.%N)
  url=$(sed -n 's/^Listening on //p' "$OUT/out")
  [ -n "$url" ] || { cat "$OUT/err" >&2; exit 1; }
  token=$(EFS_URL=$url EFS_USER=$USER_NAME EFS_KEY=$USER_KEY CURL_OPTS="--cacert $CERT" \
          "$REPO/scripts/login-curl-openssl.sh")
  code=000
  for _ in $(seq 6000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CERT" -I \
           -H "Authorization: Bearer $token" "$url/records/" || true)
    [ "$code" = 200 ] && break
    sleep 0.01
  done
  t2=$(date +%s.%N)
  read_bytes=$(awk '/^read_bytes/ {print $2}' "/proc/$SPID/io")
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
  awk -v a="$t0" -v b="$t1" -v c="$t2" -v r="$read_bytes" -v n="$run" -v k="${COLD:+cold}" -v h="$code" \
    'BEGIN {printf "run %d%s: listening %.3f s, first answer %.3f s (HTTP %s), %.0f MB read from the disk\n", n, (k ? " (cold)" : ""), b - a, c - a, h, r / 1e6}'
done
