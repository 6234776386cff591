#!/usr/bin/env bash
# Scale runs: a filesystem of 1,000 files against one of 1,000,000 (same shape: files of
# 512 B - 2 KiB in /records/dNNNN/, 1,000 per directory), measured the same way:
#   - start-up time (exec of efs-server to "Listening on"), index bytes per file,
#   - stat (HEAD) and GET latency p50/p99 of random existing files, one request at a time on
#     one keep-alive connection (bench/scale_latency.py), real token, cache off (the index,
#     not the cache, is measured),
#   - `efsctl fsck` time (server stopped),
# and a directory of 100,000 entries listed page by page (1,000 per page, one connection).
# The files are written by crates/efs-core/examples/scale_gen.rs through efs-core's own
# upload/commit path (durable, group commit), since 1M HTTP PUTs would take too long.
#
#   bench/scale.sh [--files 1000000] [--small 1000] [--big-dir 100000] [--duration 10]
#                  [--keep DIR]   # reuse/keep the generated data dirs in DIR
#
# Prints a table and writes scale.json beside it (in DIR with --keep, else the current dir).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
FILES=1000000
SMALL=1000
BIG=100000
DUR=10
KEEP=
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES=$2; shift 2 ;;
    --small) SMALL=$2; shift 2 ;;
    --big-dir) BIG=$2; shift 2 ;;
    --duration) DUR=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "scale.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
cargo build --release --quiet --bin efs-server --bin efsctl
cargo build --release --quiet -p efs-core --example scale_gen
BIN=$REPO/target/release
if [ -n "$KEEP" ]; then mkdir -p "$KEEP"; W=$(cd "$KEEP" && pwd); else W=$(mktemp -d /var/tmp/efs-scale.XXXXXX); fi
OUTDIR=${KEEP:-$PWD}
SPID=
cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
  [ -n "$KEEP" ] || rm -rf "$W"
}
trap cleanup EXIT
RES=$W/scale.tsv
: > "$RES"
log() { echo "[$(date +%T)] $*" >&2; }


# measure NAME FILES DIRS BIGDIR
measure() {
  local name=$1 n=$2 dirs=$3 big=$4 d=$W/$1
  if [ ! -e "$d/data/system/keyparts.json" ]; then
    log "$name: generating $n files in $dirs directories (+ $big in /bigdir)"
    "$BIN/examples/scale_gen" "$d/data" "$n" "$dirs" "$big" | tee "$d.gen"
  fi
  local index; index=$(find "$d/data/fs" -name index.redb -printf '%s\n' | head -1)
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN/efs-server" --data "$d/data" --listen 127.0.0.1:0 --cache-size 0 > "$d.out" 2> "$d.err" &
  SPID=$!
  for _ in $(seq 2000); do grep -q '^Listening on' "$d.out" 2>/dev/null && break; sleep 0.005; done
  t1=$(date +%s.%N)
  local url; url=$(sed -n 's/^Listening on //p' "$d.out")
  [ -n "$url" ] || { cat "$d.err" >&2; exit 1; }
  local startup; startup=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  log "$name: started in $startup s; index $index bytes"
  local user=u$(date +%s%N)
  "$BIN/efsctl" --data "$d/data" create-user "$user" --fs bench --out "$d/key-$user" > /dev/null
  local token
  token=$(EFS_URL=$url EFS_USER=$user EFS_KEY=$d/key-$user.pem CURL_OPTS="--cacert $d/data/system/tls-cert.pem" \
          "$REPO/scripts/login-curl-openssl.sh")
  # Requests wait while the start-up check of the index digest runs (it reads the whole
  # index once): the first answered request, counted from the exec like start-up (and so
  # including the user creation and the login above), says when the server is really usable.
  local code=000
  for _ in $(seq 6000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$d/data/system/tls-cert.pem" \
           -I -H "Authorization: Bearer $token" "$url/records/" || true)
    [ "$code" = 200 ] && break
    sleep 0.01
  done
  local t2; t2=$(date +%s.%N)
  local first; first=$(awk -v a="$t0" -v b="$t2" 'BEGIN {printf "%.3f", b - a}')
  log "$name: first file request answered $first s after the exec (HTTP $code)"
  printf '%s	first_answer	seconds	%s
' "$name" "$first" >> "$RES"
  local m out
  for m in HEAD GET; do
    out=$(python3 "$REPO/bench/scale_latency.py" "$m" "$url" "$d/data/system/tls-cert.pem" "$token" "$n" "$dirs" "$DUR")
    local reqs p50 p99 err; read -r reqs p50 p99 err <<< "$out"
    printf '%s\t%s\trequests\t%s\n%s\t%s\tp50_ms\t%s\n%s\t%s\tp99_ms\t%s\n%s\t%s\terrors\t%s\n' \
      "$name" "$m" "$reqs" "$name" "$m" "$p50" "$name" "$m" "$p99" "$name" "$m" "$err" >> "$RES"
    log "$name $m: $reqs requests, p50 $p50 ms, p99 $p99 ms, $err errors"
  done
  if [ "$big" -gt 0 ]; then
    local out; out=$(python3 "$REPO/bench/compare_list.py" efs "$url/bigdir/" "$d/data/system/tls-cert.pem" \
                     "Authorization: Bearer $token" 3)
    local ln lmed lmax; read -r ln lmed lmax <<< "$out"
    printf '%s\tlist_bigdir\tentries\t%s\n%s\tlist_bigdir\tseconds_median\t%s\n%s\tlist_bigdir\tms_per_page\t%s\n' \
      "$name" "$ln" "$name" "$lmed" "$name" "$(awk -v s="$lmed" -v n="$ln" 'BEGIN {printf "%.2f", s * 1000 / (n / 1000)}')" >> "$RES"
    log "$name: listed $ln entries of /bigdir/ in $lmed s (pages of 1,000)"
  fi
  kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
  t0=$(date +%s.%N)
  "$BIN/efsctl" --data "$d/data" fsck --fs bench > "$d.fsck" 2>&1 || { cat "$d.fsck" >&2; exit 1; }
  t1=$(date +%s.%N)
  local fsck; fsck=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  log "$name: fsck $fsck s: $(tail -1 "$d.fsck")"
  printf '%s\tstartup\tseconds\t%s\n%s\tindex\tbytes\t%s\n%s\tindex\tbytes_per_file\t%s\n%s\tfsck\tseconds\t%s\n' \
    "$name" "$startup" "$name" "$index" "$name" "$(awk -v b="$index" -v n="$((n + big))" 'BEGIN {printf "%.0f", b / n}')" "$name" "$fsck" >> "$RES"
}

mkdir -p "$W/small" "$W/large"
measure small "$SMALL" "$(( SMALL < 1000 ? 1 : SMALL / 1000 ))" 0
measure large "$FILES" "$(( FILES < 1000 ? 1 : FILES / 1000 ))" "$BIG"

python3 - "$RES" "$OUTDIR/scale.json" "$(uptime)" <<'PY'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
d = {}
for name, what, key, val in rows:
    d.setdefault(name, {}).setdefault(what, {})[key] = float(val)
d["uptime"] = sys.argv[3]
json.dump(d, open(sys.argv[2], "w"), indent=2)
s, l = d["small"], d["large"]
print(f"# {sys.argv[3].strip()}")
print("| | 1,000 files | 1,000,000 files | ratio |")
print("|---|---:|---:|---:|")
for what, key, label in [("HEAD", "p50_ms", "stat p50 ms"), ("HEAD", "p99_ms", "stat p99 ms"),

                         ("GET", "p50_ms", "GET p50 ms"), ("GET", "p99_ms", "GET p99 ms"),

                         ("startup", "seconds", "start-up s"), ("first_answer", "seconds", "first file request answered, s"),
                         ("index", "bytes_per_file", "index bytes per file"),
                         ("fsck", "seconds", "efsctl fsck s")]:
    a, b = s[what][key], l[what][key]
    print(f"| {label} | {a:g} | {b:g} | {b / a if a else float('nan'):.2f} |")
if "list_bigdir" in l:
    b = l["list_bigdir"]
    print(f"\n/bigdir/ ({b['entries']:.0f} entries), pages of 1,000: {b['seconds_median']:.2f} s in all, "
          f"{b['ms_per_page']:.1f} ms per page")
PY
