#!/usr/bin/env bash
# Benchmarks of one blobcache node on loopback (release build, shipped defaults,
# local-directory store), each next to a reference measured in the same run,
# interleaved (reference, node, reference, node, ...):
#   1. PUT of a 1 GiB blob, next to `md5sum` of the same file (MD5 is one upload's ceiling)
#   2. GET hits of 4 KiB, 64 KiB and 1 MiB blobs with `wrk -t2 -c64`, next to nginx
#      serving the same files from disk (scripts/bench-nginx.conf: sendfile, no access log);
#      req/s and server CPU per request of each
#   3. one 256 MiB stream from the disk tier (default memory cache), next to nginx
#   4. one 256 MiB stream from the memory tier (--memory-cache 1GiB), next to nginx and
#      the loopback ceiling (`iperf3 -l 1M`, if installed)
#   5. peak RSS of a fresh server while a 2 GiB blob streams up and down
#   6. in front of S3 (the s3s-fs server of the tests, examples/s3_server.rs, which
#      serves each connection at S3_BANDWIDTH after S3_LATENCY to the first byte):
#      a cold 256 MiB GET through blobcache next to a direct GET of the same object,
#      and 64 concurrent cold GETs of one 64 MiB blob next to one cold GET
# Each figure is the median of RUNS runs (default 3); a ratio is the median of
# the runs' ratios. The load average is printed at the start and the end: the
# machine may be shared. Needs curl (7.75+), wrk, nginx, md5sum, python3.
# Usage: scripts/bench.sh     (BENCH_DIR=... to place the data, RUNS=N, HIT_SECONDS=N,
#                              SECTIONS="put hits stream rss s3" to choose what runs,
#                              DISK_CACHE=3GiB, S3_BANDWIDTH=90MB S3_LATENCY=20ms for the S3 stand-in,
#                              BIN=path to measure another build, BUILD=0 to build nothing)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
HIT_SECONDS=${HIT_SECONDS:-10}
# Each node allocates its disk tier in full at start: enough for the largest blob, no more.
DISK_CACHE=${DISK_CACHE:-3GiB}
SECTIONS=${SECTIONS:-put hits stream rss s3}
S3_BANDWIDTH=${S3_BANDWIDTH:-90MB}
S3_LATENCY=${S3_LATENCY:-20ms}
WORK=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench.XXXXXX")
chmod a+rx "$WORK" # nginx's workers run as another user when started as root
BIN=${BIN:-target/release/blobcache}
PID="" NGPID="" S3PID=""

cleanup() {
  for p in $PID $NGPID $S3PID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --quiet
  [[ $SECTIONS == *s3* ]] && cargo build --release --quiet --example s3_server
fi
for tool in curl wrk nginx md5sum python3; do
  command -v $tool >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# CPU time (clock ticks, user + system) of processes and their children.
ticks() {
  local p t=0
  for p in "$@" $(for q in "$@"; do pgrep -P "$q" || true; done); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)

start() {
  local name=$1
  NAME=$name
  shift
  PORT=$(free_port)
  URL="http://127.0.0.1:$PORT"
  "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data-$name" --disk-cache "$DISK_CACHE" "$@" \
    >"$WORK/server-$name.log" 2>&1 &
  PID=$!
  curl -sf --retry 100 --retry-connrefused --retry-delay 0 --retry-max-time 20 "$URL/healthz" >/dev/null
}
# Stop the node and drop its data: each disk cache is allocated in full.
stop() { kill "$PID"; wait "$PID" || true; PID=""; rm -rf "$WORK/data-$NAME"; }

# nginx with scripts/bench-nginx.conf, serving $WORK/nginx/html/blobs/<md5>.
NGDIR=$WORK/nginx
start_nginx() {
  mkdir -p "$NGDIR/html/blobs" "$NGDIR/tmp"
  NGPORT=$(free_port)
  NGURL="http://127.0.0.1:$NGPORT"
  sed "s/@PORT@/$NGPORT/" scripts/bench-nginx.conf >"$NGDIR/nginx.conf"
  nginx -p "$NGDIR/" -c "$NGDIR/nginx.conf" -e "$NGDIR/error.log" &
  NGPID=$!
  curl -s --retry 100 --retry-connrefused --retry-delay 0 --retry-max-time 20 -o /dev/null "$NGURL/"
}
# The same file for nginx (a hard link: the same inode, the same page cache).
serve_file() { ln -f "$1" "$NGDIR/html/blobs/$(md5sum "$1" | cut -c1-32)"; }

# Wait (at most 60 s) until nothing is pending upload, so reads come from the cache.
replicated() {
  for _ in $(seq 600); do
    curl -sf "$URL/stats" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["replication"]["pending_blobs"] != 0)' && return 0
    sleep 0.1
  done
  echo "bench: uploads did not drain" >&2; return 1
}

# Wait (at most 60 s) until a blob is a cache hit (after replication: the cache, not the spool).
cached() {
  for _ in $(seq 600); do
    curl -sfI "$URL/blobs/$1" | tr -d '\r' | grep -qi '^x-cache: hit' && return 0
    sleep 0.1
  done
  echo "bench: $1 never became a cache hit" >&2; return 1
}

put() { curl -sf -o /dev/null -H 'Expect:' -w '%{time_total}\n' -T "$1" "$URL/blobs/$(md5sum "$1" | cut -c1-32)"; }
key_of() { md5sum "$1" | cut -c1-32; }

# wrk for HIT_SECONDS against URL; prints "req/s cpu-ticks-of-PIDS".
wrk_run() {
  local url=$1 t0 r
  shift
  t0=$(ticks "$@")
  r=$(wrk -t2 -c64 -d"${HIT_SECONDS}s" "$url")
  if grep -q 'Non-2xx' <<<"$r"; then echo "bench: errors from $url: $r" >&2; exit 1; fi
  r=$(awk '/Requests\/sec/ {print $2}' <<<"$r")
  echo "$r $(($(ticks "$@") - t0))"
}
# One GET with curl; prints "bytes/s cpu-ticks-of-PIDS".
curl_run() {
  local url=$1 t0 r
  shift
  t0=$(ticks "$@")
  r=$(curl -sf -o /dev/null -w '%{speed_download}' "$url") || { echo "bench: GET $url failed" >&2; exit 1; }
  echo "$r $(($(ticks "$@") - t0))"
}

echo "== blobcache benchmark ($(nproc) cores, $RUNS runs each; load average $(loadavg))"
head -c 256M /dev/urandom >"$WORK/256m"
K256=$(key_of "$WORK/256m")
start_nginx

if [[ $SECTIONS == *put* ]]; then
# 1. PUT 1 GiB vs md5sum of the same (page-cached) file, alternately.
head -c 1G /dev/urandom >"$WORK/1g"
start put
K1=$(key_of "$WORK/1g")
rows=$(for _ in $(seq "$RUNS"); do
  m=$(/usr/bin/time -f %e md5sum "$WORK/1g" 2>&1 >/dev/null)
  curl -sf -X DELETE "$URL/blobs/$K1" >/dev/null
  replicated
  echo "$m $(put "$WORK/1g")"
done)
python3 - "$rows" <<'PY'
import statistics as st, sys
rows = [list(map(float, l.split())) for l in sys.argv[1].strip().splitlines()]
gib = 1 << 30
md5, put = st.median(r[0] for r in rows), st.median(r[1] for r in rows)
ratio = st.median(r[0] / r[1] for r in rows)
print(f"PUT 1 GiB:             {gib/put/1e6:6.0f} MB/s   md5sum {gib/md5/1e6:.0f} MB/s   ratio {ratio:.2f} (target >= 0.9)")
PY
stop
rm -f "$WORK/1g"
fi

if [[ $SECTIONS == *hits* ]]; then
# 2. GET hits, shipped defaults (request log on, into a file), next to nginx.
start hits
echo "GET hits, wrk -t2 -c64 -d${HIT_SECONDS}s (req/s; server CPU per request):"
for size in 4K 64K 1M; do
  head -c "$size" /dev/urandom >"$WORK/$size"
  put "$WORK/$size" >/dev/null
  serve_file "$WORK/$size"
done
replicated
for size in 4K 64K 1M; do
  k=$(key_of "$WORK/$size")
  cached "$k"
  curl -sf -o /dev/null "$URL/blobs/$k"
  rows=$(for i in $(seq "$RUNS"); do
    if ((i % 2)); then n=$(wrk_run "$NGURL/blobs/$k" "$NGPID"); b=$(wrk_run "$URL/blobs/$k" "$PID")
    else b=$(wrk_run "$URL/blobs/$k" "$PID"); n=$(wrk_run "$NGURL/blobs/$k" "$NGPID"); fi
    echo "$n $b"
  done)
  python3 - "$size" "$rows" "$HZ" "$HIT_SECONDS" <<'PY'
import statistics as st, sys
size, rows, hz, secs = sys.argv[1], [list(map(float, l.split())) for l in sys.argv[2].strip().splitlines()], float(sys.argv[3]), float(sys.argv[4])
n, b = st.median(r[0] for r in rows), st.median(r[2] for r in rows)
cpu = lambda rps, t: t / hz / (rps * secs) * 1e6
ncpu, bcpu = st.median(cpu(r[0], r[1]) for r in rows), st.median(cpu(r[2], r[3]) for r in rows)
print(f"  {size:>4}: nginx {n:8.0f}  blobcache {b:8.0f}  ratio {st.median(r[2]/r[0] for r in rows):.2f} "
      f"(per run {', '.join(f'{r[2]/r[0]:.2f}' for r in rows)}; target >= 1.0); "
      f"CPU/request nginx {ncpu:.1f} us, blobcache {bcpu:.1f} us")
PY
done

# Admin endpoints while the 4 KiB load runs: 20 samples of each.
k=$(key_of "$WORK/4K")
wrk -t2 -c64 -d8s "$URL/blobs/$k" >/dev/null &
WRK=$!
sleep 1
for ep in metrics readyz; do
  curl -sf -o /dev/null "$URL/$ep"
  times=$(for _ in $(seq 20); do curl -sf -o /dev/null -w '%{time_total}\n' "$URL/$ep"; sleep 0.2; done)
  echo "  /$ep under load: median $(echo "$times" | median | awk '{printf "%.1f", $1*1000}') ms, max $(echo "$times" | sort -g | tail -1 | awk '{printf "%.1f", $1*1000}') ms (target < 10 ms)"
done
wait $WRK
echo "  request log written: $(wc -l <"$WORK/server-hits.log") lines"
stop
fi

# One stream of 256 MiB, nginx and the node alternately; prints a summary line.
stream_pairs() {  # LABEL TARGET-TEXT
  local rows
  rows=$(for i in $(seq "$RUNS"); do
    if ((i % 2)); then n=$(curl_run "$NGURL/blobs/$K256" "$NGPID"); b=$(curl_run "$URL/blobs/$K256" "$PID")
    else b=$(curl_run "$URL/blobs/$K256" "$PID"); n=$(curl_run "$NGURL/blobs/$K256" "$NGPID"); fi
    echo "$n $b"
  done)
  python3 - "$1" "$rows" "$HZ" "$(stat -c %s "$WORK/256m")" "$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")" "$2" <<'PY'
import statistics as st, sys
label, rows, hz, size, hwm, target = sys.argv[1], [list(map(float, l.split())) for l in sys.argv[2].strip().splitlines()], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
n, b = st.median(r[0] for r in rows), st.median(r[2] for r in rows)
cpu = lambda t: t / hz / (size / 1e9)
print(f"{label}: nginx {n/1e6:6.0f} MB/s  blobcache {b/1e6:6.0f} MB/s  ratio {st.median(r[2]/r[0] for r in rows):.2f} "
      f"(per run {', '.join(f'{r[2]/r[0]:.2f}' for r in rows)}; {target}); "
      f"server CPU per GB nginx {st.median(cpu(r[1]) for r in rows):.2f} s, blobcache {st.median(cpu(r[3]) for r in rows):.2f} s; "
      f"node peak RSS {hwm // 1024} MiB")
PY
}

if [[ $SECTIONS == *stream* ]]; then
serve_file "$WORK/256m"
# 3. From the disk tier: the default memory cache (256 MiB, less the flush
#    buffers) does not hold the whole blob. A fresh node, so the disk tier is
#    not still digesting an earlier phase.
start disk
put "$WORK/256m" >/dev/null
replicated
cached "$K256"
# Warm-up reads, not timed. The PUT left the blob's newest chunks in memory
# only; reads push them out, and the disk tier writes them as they go
# (foyer's write on eviction): once per blob, but over more than one read.
# Read until a read writes under one chunk (4 MiB) to the disk tier, at most 8 times.
disk_writes() { curl -sf "$URL/metrics" | awk '/^foyer_storage_disk_io_bytes_total\{.*op="write"/ {printf "%.0f\n", $2}'; }
for warm in $(seq 8); do
  w0=$(disk_writes)
  curl -sf -o /dev/null "$URL/blobs/$K256"
  w1=$(disk_writes)
  ((w1 - w0 < 4194304)) && break
done
echo "  (disk tier: $warm warm-up reads, the last wrote $(((w1 - w0) >> 20)) MiB to it)"
w0=$(disk_writes)
stream_pairs "256 MiB stream, disk tier  " "target >= 1.0"
echo "  (disk tier written during the timed reads: $((($(disk_writes) - w0) >> 20)) MiB)"
stop

# 4. From the memory tier, and the loopback ceiling.
start mem --memory-cache 1GiB
put "$WORK/256m" >/dev/null
replicated
cached "$K256"
curl -sf -o /dev/null "$URL/blobs/$K256"
stream_pairs "256 MiB stream, memory tier" "target >= 1.0"
# The loopback ceiling: iperf3 with 1 MiB writes, alternating with the node.
if command -v iperf3 >/dev/null; then
  IPORT=$(free_port)
  rows=$(for _ in $(seq "$RUNS"); do
    timeout 20 iperf3 -s -1 -p "$IPORT" >/dev/null 2>&1 &
    sleep 0.3
    c=$(timeout 20 iperf3 -c 127.0.0.1 -p "$IPORT" -l 1M -t 3 -J |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8)')
    wait
    echo "$c $(curl_run "$URL/blobs/$K256" "$PID")"
  done)
  python3 - "$rows" <<'PY'
import statistics as st, sys
rows = [list(map(float, l.split())) for l in sys.argv[1].strip().splitlines()]
print(f"  loopback ceiling, iperf3 -l 1M: {st.median(r[0] for r in rows)/1e6:.0f} MB/s; memory tier {st.median(r[1] for r in rows)/1e6:.0f} MB/s; "
      f"ratio {st.median(r[1]/r[0] for r in rows):.2f} (per run {', '.join(f'{r[1]/r[0]:.2f}' for r in rows)}; target >= 0.9)")
PY
else
  echo "  (iperf3 not installed: no loopback ceiling)"
fi
stop
fi

if [[ $SECTIONS == *rss* ]]; then
# 5. Peak RSS of a fresh server while 2 GiB streams in and out.
head -c 2G /dev/urandom >"$WORK/2g"
K2=$(key_of "$WORK/2g")
start rss
put "$WORK/2g" >/dev/null
curl -sf -o /dev/null "$URL/blobs/$K2"
replicated
curl -sf -o /dev/null "$URL/blobs/$K2"
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
echo "peak RSS, 2 GiB up and down: $((hwm_kb / 1024)) MiB (target <= memory cache + 64 MiB)"
stop
rm -f "$WORK/2g"
fi

if [[ $SECTIONS == *s3* ]]; then
# 6. In front of S3. One s3s-fs server with S3's pace per connection; each cold
#    read is a fresh node with an empty data dir.
S3PORT=$(free_port)
S3URL="http://127.0.0.1:$S3PORT"
S3KEY=blobcache-test:blobcache-test-secret
S3_BANDWIDTH=$S3_BANDWIDTH S3_LATENCY=$S3_LATENCY target/release/examples/s3_server "$WORK/s3" "127.0.0.1:$S3PORT" >"$WORK/s3.log" 2>&1 &
S3PID=$!
curl -s --retry 100 --retry-connrefused --retry-delay 0 --retry-max-time 20 -o /dev/null "$S3URL/"
echo "In front of S3 (s3s-fs on loopback, $S3_BANDWIDTH/s per connection, $S3_LATENCY to the first byte):"
S3FLAGS=(--store s3://blobs/cache --s3-endpoint "$S3URL" --s3-force-path-style
  --s3-access-key-id blobcache-test --s3-secret-access-key blobcache-test-secret)
direct() { curl -sf -o /dev/null --aws-sigv4 aws:amz:us-east-1:s3 --user "$S3KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -w "$2" "$S3URL/blobs/cache/$1"; }
cold() {  # cold KEY NAME FORMAT: one GET through a fresh node
  start "$2" "${S3FLAGS[@]}"
  curl -sf -o /dev/null -w "$3" "$URL/blobs/$1"
  stop
}
head -c 64M /dev/urandom >"$WORK/64m"
K64=$(key_of "$WORK/64m")
start seed "${S3FLAGS[@]}" --write-mode through
put "$WORK/256m" >/dev/null
put "$WORK/64m" >/dev/null
stop
direct "$K256" '' # warm the server's page cache, untimed
FMT='%{speed_download} %{time_starttransfer}\n'
pairs=$(for i in $(seq "$RUNS"); do
  echo "$(direct "$K256" "$FMT") $(cold "$K256" "cold$i" "$FMT")"
done)
python3 - "$pairs" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.argv[1].strip().splitlines()]
d_bps, d_ttfb, c_bps, c_ttfb = (statistics.median(r[i] for r in rows) for i in range(4))
ratios = [r[2] / r[0] for r in rows]
print(f"  cold 256 MiB GET via blobcache: {c_bps/1e6:.0f} MB/s (first byte {c_ttfb*1000:.1f} ms); "
      f"direct from S3: {d_bps/1e6:.0f} MB/s (first byte {d_ttfb*1000:.1f} ms)")
print(f"    ratio per run {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f} (target >= 2); "
      f"first byte minus direct {(c_ttfb - d_ttfb)*1000:.1f} ms (target <= 5)")
PY

# 64 concurrent cold GETs of a 64 MiB blob, next to one cold GET of it (fresh node each).
herd64() {  # seconds for 64 concurrent GETs of one blob
  local t0 t1 clients=()
  t0=$(date +%s.%N)
  for _ in $(seq 64); do curl -sf -o /dev/null "$URL/blobs/$1" & clients+=($!); done
  for c in "${clients[@]}"; do wait "$c" || echo "bench: a herd client failed" >&2; done
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
herd=$(for i in $(seq "$RUNS"); do
  one=$(cold "$K64" "one$i" '%{time_total}')
  start "herd$i" "${S3FLAGS[@]}"
  cold_herd=$(herd64 "$K64")
  hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
  gets=$(curl -sf "$URL/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin)["store"]; print(s["gets"], s["bytes_read"])')
  cached "$K64"
  warm_herd=$(herd64 "$K64")  # the same 64 GETs once the blob is cached: the cost of serving 64 copies
  stop
  echo "$one $cold_herd $gets $warm_herd $((hwm_kb / 1024))"
done)
python3 - "$herd" "$(stat -c %s "$WORK/64m")" <<'PY'
import statistics, sys
rows = [l.split() for l in sys.argv[1].strip().splitlines()]
size = int(sys.argv[2])
one = statistics.median(float(r[0]) for r in rows)
herd = statistics.median(float(r[1]) for r in rows)
warm = statistics.median(float(r[4]) for r in rows)
chunks = -(-size // (4 * 1024 * 1024 - 8 * 1024))
print(f"  64 cold GETs of 64 MiB at once: {herd:.2f} s; one cold GET {one:.2f} s; "
      f"ratio {herd/one:.2f} (target <= 1.2)")
print(f"    the same 64 GETs of the cached blob: {warm:.2f} s (cold herd / warm herd {herd/warm:.2f})")
print(f"    peak RSS of the node through the cold herd: {', '.join(r[5] for r in rows)} MiB")
print(f"    store reads per herd: {', '.join(r[2] for r in rows)} for {chunks} chunks; "
      f"bytes read {', '.join(r[3] for r in rows)} for a blob of {size}")
PY
fi
echo "== done; load average $(loadavg)"
