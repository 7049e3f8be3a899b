#!/usr/bin/env bash
# Benchmarks of one blobcache node on loopback (release build, local-directory store):
#   1. PUT of a 1 GiB blob, next to `md5sum` of the same file
#   2. single-stream GET hit of a 256 MiB blob
#   3. 4 KiB GET hits with `wrk -t2 -c64 -d10s`, and /metrics and /readyz latency under that load
#   4. peak RSS of a fresh server while a 2 GiB blob streams up and down
#   5. in front of S3 (the s3s-fs server of the tests, examples/s3_server.rs): a cold
#      256 MiB GET through blobcache next to a direct GET of the same object, and
#      64 concurrent cold GETs of one 64 MiB blob next to one cold GET
# Each timed figure is the median of RUNS runs (default 3). Needs curl (7.75+), wrk, md5sum, python3.
# Usage: scripts/bench.sh            (BENCH_DIR=... to place the data, RUNS=N,
#                                     SECTIONS="local s3" to choose what runs)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
MEMORY_CACHE=${MEMORY_CACHE:-256MiB}
WORK=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench.XXXXXX")
BIN=target/release/blobcache
PID=""

cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ -n "$S3PID" ] && kill "$S3PID" 2>/dev/null && wait "$S3PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

SECTIONS=${SECTIONS:-local s3}
S3PID=""
cargo build --release --quiet
[[ $SECTIONS == *s3* ]] && cargo build --release --quiet --example s3_server
for tool in curl wrk md5sum python3; do
  command -v $tool >/dev/null || { echo "bench: $tool is required" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

start() {
  local name=$1
  NAME=$name
  shift
  PORT=$(free_port)
  URL="http://127.0.0.1:$PORT"
  "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data-$name" --memory-cache "$MEMORY_CACHE" \
    --disk-cache 8GiB "$@" >"$WORK/server-$name.log" 2>&1 &
  PID=$!
  curl -sf --retry 100 --retry-connrefused --retry-delay 0 --retry-max-time 20 "$URL/healthz" >/dev/null
}
# Stop the node and drop its data: each disk cache is allocated in full (--disk-cache 8GiB).
stop() { kill "$PID"; wait "$PID" || true; PID=""; rm -rf "$WORK/data-$NAME"; }

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

echo "== blobcache benchmark ($(nproc) cores, $RUNS runs each, memory cache $MEMORY_CACHE)"
head -c 256M /dev/urandom >"$WORK/256m"
K256=$(md5sum "$WORK/256m" | cut -c1-32)

if [[ $SECTIONS == *local* ]]; then
head -c 1G /dev/urandom >"$WORK/1g"
head -c 4K /dev/urandom >"$WORK/4k"
start main

# 1. PUT 1 GiB vs md5sum of the same (page-cached) file.
md5sum "$WORK/1g" >/dev/null
K1=$(md5sum "$WORK/1g" | cut -c1-32)
md5_t=$(for _ in $(seq "$RUNS"); do /usr/bin/time -f %e md5sum "$WORK/1g" 2>&1 >/dev/null; done | median)
put_t=$(for _ in $(seq "$RUNS"); do
  curl -sf -X DELETE "$URL/blobs/$K1" >/dev/null
  replicated
  put "$WORK/1g"
done | median)
python3 - "$md5_t" "$put_t" <<'PY'
import sys
md5, put = map(float, sys.argv[1:])
gib = 1 << 30
print(f"PUT 1 GiB:        {gib/put/1e6:8.0f} MB/s   md5sum {gib/md5/1e6:.0f} MB/s   ratio {md5/put:.2f} (target >= 0.8)")
PY

# 2. GET hit of 256 MiB on one connection, on a fresh server so the disk tier
#    is not still digesting phase 1 (measured side by side: 0.9 vs 3+ GB/s).
stop
start get
put "$WORK/256m" >/dev/null
replicated
cached "$K256"
curl -sf -o /dev/null "$URL/blobs/$K256" # warm-up read, not timed
get_bps=$(for _ in $(seq "$RUNS"); do curl -sf -o /dev/null -w '%{speed_download}\n' "$URL/blobs/$K256"; done | median)
echo "GET hit 256 MiB:  $(python3 -c "print(f'{$get_bps/1e9:.2f}')") GB/s (target >= 1.5 GB/s)"

# 3. 4 KiB GET hits.
put "$WORK/4k" >/dev/null
replicated
K4=$(md5sum "$WORK/4k" | cut -c1-32)
cached "$K4"
rps=$(for _ in $(seq "$RUNS"); do wrk -t2 -c64 -d10s "$URL/blobs/$K4" | awk '/Requests\/sec/ {print $2}'; done | median)
echo "4 KiB GET hits:   $rps req/s (wrk -t2 -c64 -d10s; target >= 40000)"

# 3b. Admin endpoints while the same load runs: 20 samples of each.
wrk -t2 -c64 -d8s "$URL/blobs/$K4" >/dev/null &
WRK=$!
sleep 1
for ep in metrics readyz; do
  curl -sf -o /dev/null -w '%{time_total}\n' "$URL/$ep" >/dev/null
  times=$(for _ in $(seq 20); do curl -sf -o /dev/null -w '%{time_total}\n' "$URL/$ep"; sleep 0.2; done)
  echo "/$ep under load: median $(echo "$times" | median | awk '{printf "%.1f", $1*1000}') ms, max $(echo "$times" | sort -g | tail -1 | awk '{printf "%.1f", $1*1000}') ms (target < 10 ms)"
done
wait $WRK
stop

# 4. Peak RSS of a fresh server while 2 GiB streams in and out.
head -c 2G /dev/urandom >"$WORK/2g"
K2=$(md5sum "$WORK/2g" | cut -c1-32)
start rss
put "$WORK/2g" >/dev/null
curl -sf -o /dev/null "$URL/blobs/$K2"
replicated
curl -sf -o /dev/null "$URL/blobs/$K2"
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
echo "peak RSS, 2 GiB up and down: $((hwm_kb / 1024)) MiB (target <= memory cache + 64 MiB)"
stop
fi

if [[ $SECTIONS == *s3* ]]; then
# 5. In front of S3. One s3s-fs server; each cold read is a fresh node with an empty data dir.
S3PORT=$(free_port)
S3URL="http://127.0.0.1:$S3PORT"
S3KEY=blobcache-test:blobcache-test-secret
target/release/examples/s3_server "$WORK/s3" "127.0.0.1:$S3PORT" >"$WORK/s3.log" 2>&1 &
S3PID=$!
curl -s --retry 100 --retry-connrefused --retry-delay 0 --retry-max-time 20 -o /dev/null "$S3URL/"
S3FLAGS=(--store s3://blobs/cache --s3-endpoint "$S3URL" --s3-force-path-style
  --s3-access-key-id blobcache-test --s3-secret-access-key blobcache-test-secret)
direct() { curl -sf -o /dev/null --aws-sigv4 aws:amz:us-east-1:s3 --user "$S3KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -w "$2" "$S3URL/blobs/cache/$1"; }
cold() {  # cold KEY NAME FORMAT: one GET through a fresh node
  start "$2" "${S3FLAGS[@]}"
  curl -sf -o /dev/null -w "$3" "$URL/blobs/$1"
  stop
  rm -rf "$WORK/data-$2"
}
head -c 64M /dev/urandom >"$WORK/64m"
K64=$(md5sum "$WORK/64m" | cut -c1-32)
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
print(f"cold 256 MiB GET via blobcache: {c_bps/1e6:.0f} MB/s (first byte {c_ttfb*1000:.1f} ms); "
      f"direct from S3: {d_bps/1e6:.0f} MB/s (first byte {d_ttfb*1000:.1f} ms)")
print(f"  ratio per run {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f} (target >= 0.85)")
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
  rm -rf "$WORK/data-herd$i"
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
print(f"64 cold GETs of 64 MiB at once: {herd:.2f} s; one cold GET {one:.2f} s; "
      f"ratio {herd/one:.1f} (target <= 1.5)")
print(f"  the same 64 GETs of the cached blob: {warm:.2f} s (cold herd / warm herd {herd/warm:.2f})")
print(f"  peak RSS of the node through the cold herd: {', '.join(r[5] for r in rows)} MiB")
print(f"  store reads per herd: {', '.join(r[2] for r in rows)} for {chunks} chunks; "
      f"bytes read {', '.join(r[3] for r in rows)} for a blob of {size}")
PY
kill "$S3PID"; wait "$S3PID" 2>/dev/null || true; S3PID=""
fi
