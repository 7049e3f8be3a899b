#!/usr/bin/env bash
# Benchmarks of a blobcache cluster on loopback (issue 10, Must-have 9), next to one node
# with the same per-node cache. Everything runs on 127.0.0.1: the S3 stand-in
# (examples/s3_server.rs, s3s-fs), the nodes (--peers, --advertise-url), and nginx with
# the shipped deploy/nginx/nginx.conf (hash by blob) or a copy of it whose upstream has
# the `hash` line removed (plain round robin, everything else the same).
#
#   1. capacity: every blob of a catalogue larger than the whole cluster's cache is read
#      once (client-side round robin over the nodes), then each node is asked
#      GET /blobs/{md5}/status for every blob, and /stats. Two counts: blobs whose status
#      says cached (their metadata entry is in the cache), and blobs whose bytes are in
#      the memory tier (memory entries minus cached blobs' metadata entries: for
#      one-chunk blobs each other entry is one blob's chunk). For 1 node and for each
#      size of NODE_COUNTS, fresh nodes each time.
#   2. hit ratio on a Zipf workload (exponent ZIPF_S over the catalogue, the same seeded
#      request sequence each time, ZIPF_CONCURRENCY clients): one node directly; each
#      cluster behind nginx hash and behind nginx round robin; the first size also with
#      --peer-copies behind both. Fresh nodes for each run; the first half of the
#      requests warms up, the second half is measured. Hit ratio = 1 - store GETs /
#      requests (one-chunk blobs; the nodes' /stats summed), next to an ideal cache that
#      holds exactly the k most popular blobs, for k = the capacities measured in 1.
#   3. store reads per cold blob: COLD_BLOBS blobs of COLD_SIZE (several chunks), each
#      read by COLD_CLIENTS clients at once spread over every node, then through nginx
#      hash, then through nginx round robin; store GETs (summed over the nodes) per
#      chunk. This cluster's nodes have --memory-cache COLD_MEMORY_CACHE (256MiB): with
#      a memory tier too small for the fill's read-ahead, chunks are read twice even on
#      one node (docs/BENCHMARKS.md, "Cluster (issue 10)").
#   4. the latency a forwarded hit adds: a 4 KiB and a 1 MiB blob cached on their owner
#      (GET /cluster?md5=); wrk -t1 -c1 --latency on the owner and on a non-owner in
#      turn, RUNS runs of LAT_SECONDS each; medians of the runs' p50 and p99.
#
# Needs: the release binaries (not built here), nginx, wrk, curl, python3 (the driver is
# scripts/cluster_load.py, standard library only). Each node has a memory-only cache
# (DISK_CACHE=0) unless told otherwise; data lives in a temporary directory under
# target/, removed at the end with every process this script started.
#
#   BLOBCACHE_BIN=...   the node binary (default target/release/blobcache)
#   S3_SERVER_BIN=...   the S3 stand-in (default target/release/examples/s3_server)
#   NODE_COUNTS="3 4"   cluster sizes        MEMORY_CACHE=32MiB  DISK_CACHE=0 (per node)
#   BLOB_SIZE=65536     catalogue blob size  CATALOGUE=4000      catalogue size
#   ZIPF_S=1.0  ZIPF_REQUESTS=24000  ZIPF_CONCURRENCY=8
#   COLD_BLOBS=3  COLD_SIZE=16777216  COLD_CLIENTS=12  COLD_MEMORY_CACHE=256MiB
#   RUNS=3  LAT_SECONDS=3
#   SECTIONS="capacity zipf cold latency"   what runs
#   RESULTS=FILE        also write the raw JSON results there (one line per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BLOBCACHE_BIN:-target/release/blobcache}
S3_BIN=${S3_SERVER_BIN:-target/release/examples/s3_server}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
DRIVER=scripts/cluster_load.py
NODE_COUNTS=${NODE_COUNTS:-3 4}
MEMORY_CACHE=${MEMORY_CACHE:-32MiB}
DISK_CACHE=${DISK_CACHE:-0}
BLOB_SIZE=${BLOB_SIZE:-65536}
CATALOGUE=${CATALOGUE:-4000}
ZIPF_S=${ZIPF_S:-1.0}
ZIPF_REQUESTS=${ZIPF_REQUESTS:-24000}
ZIPF_CONCURRENCY=${ZIPF_CONCURRENCY:-8}
COLD_BLOBS=${COLD_BLOBS:-3}
COLD_SIZE=${COLD_SIZE:-16777216}
COLD_CLIENTS=${COLD_CLIENTS:-12}
COLD_MEMORY_CACHE=${COLD_MEMORY_CACHE:-256MiB}
RUNS=${RUNS:-3}
LAT_SECONDS=${LAT_SECONDS:-3}
SECTIONS=${SECTIONS:-capacity zipf cold latency}
S3_KEY=blobcache-test
S3_SECRET=blobcache-test-secret

for tool in curl python3 wrk timeout "$NGINX" "$BIN" "$S3_BIN"; do
  command -v "$tool" >/dev/null || { echo "cluster-bench: $tool is missing (build with: cargo build --release --bin blobcache --example s3_server)" >&2; exit 2; }
done
"$BIN" serve --help | grep -q -- '--peers' || { echo "cluster-bench: $BIN has no --peers" >&2; exit 2; }

mkdir -p target
WORK=$(mktemp -d "$PWD/target/cluster-bench.XXXXXX")
S3_PID=""
NODE_PIDS=()
NODES=()
NODE_DIRS=()
declare -A NGINX_PID=() LB=()
RUN_SEQ=0
T_START=$SECONDS

stop_pid() { # SIGTERM, at most 10 s, then SIGKILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$? p m
  for m in "${!NGINX_PID[@]}"; do stop_pid "${NGINX_PID[$m]}"; done
  for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done
  [ -n "$S3_PID" ] && stop_pid "$S3_PID"
  if [ "$status" -ne 0 ]; then
    for log in "$WORK"/run*/node*.log "$WORK"/nginx-*/error.log "$WORK"/s3.log; do
      [ -s "$log" ] || continue
      echo "---- last lines of $log" >&2
      tail -n 10 "$log" >&2
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until SECONDS COMMAND...: true once COMMAND succeeds, false when the time is up.
wait_until() {
  local end=$((SECONDS + $1))
  shift
  while ((SECONDS < end)); do
    "$@" && return 0
    sleep 0.1
  done
  "$@"
}
free_ports() { # free_ports N: N free loopback ports
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))' "$1"
}
drive() { timeout 600 python3 "$DRIVER" "$@"; }
json() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
record() { # record LABEL JSON: print the raw result, keep it for the summary
  echo "$1 $2" >>"$WORK/results"
  [ -z "${RESULTS:-}" ] || echo "$1 $2" >>"$RESULTS"
}
joined() { local IFS=,; echo "$*"; }
elapsed() { echo "   ($((SECONDS - T_START)) s so far)"; }

# ------------------------------------------------------------------ processes

S3_PORT=$(free_ports 1)
S3_URL=http://127.0.0.1:$S3_PORT
"$S3_BIN" "$WORK/s3" "127.0.0.1:$S3_PORT" >"$WORK/s3.log" 2>&1 &
S3_PID=$!
wait_until 20 curl -s -o /dev/null --max-time 1 "$S3_URL/" || { echo "cluster-bench: the S3 server did not start" >&2; exit 1; }
BUCKET_DIR=$WORK/s3/blobs/cache

node_ready() { curl -sf -o /dev/null --max-time 2 "$1/readyz"; }
peers_live() { # peers_live URL N: the node sees N-1 live peers
  [ "$(curl -sf --max-time 2 "$1/stats" | json 'j["cluster"]["peers_live"]' 2>/dev/null)" = "$(($2 - 1))" ]
}

# start_nodes N [FLAGS...]: N fresh nodes (one: no --peers, a node as before the cluster),
# empty data directories, ready and (N > 1) each seeing all the others live.
start_nodes() {
  local n=$1 i ports peers
  shift
  RUN_SEQ=$((RUN_SEQ + 1))
  read -r -a ports <<<"$(free_ports "$n")"
  NODES=()
  for ((i = 0; i < n; i++)); do NODES+=("http://127.0.0.1:${ports[$i]}"); done
  peers=$(joined "${NODES[@]}")
  NODE_PIDS=()
  NODE_DIRS=()
  for ((i = 0; i < n; i++)); do
    local dir=$WORK/run$RUN_SEQ/node$((i + 1)) cluster=()
    mkdir -p "$dir"
    NODE_DIRS+=("$dir")
    ((n > 1)) && cluster=(--peers "$peers" --advertise-url "${NODES[$i]}")
    "$BIN" serve --listen "127.0.0.1:${ports[$i]}" --data-dir "$dir/data" \
      --store s3://blobs/cache --s3-endpoint "$S3_URL" --s3-force-path-style \
      --s3-access-key-id "$S3_KEY" --s3-secret-access-key "$S3_SECRET" \
      --memory-cache "$MEMORY_CACHE" --disk-cache "$DISK_CACHE" --spool-size 256MiB --max-blob-size 64MiB \
      --shutdown-grace 5s "${cluster[@]}" "$@" >"$dir/../node$((i + 1)).log" 2>&1 &
    NODE_PIDS+=($!)
  done
  for ((i = 0; i < n; i++)); do
    wait_until 60 node_ready "${NODES[$i]}" || { echo "cluster-bench: node ${NODES[$i]} did not become ready" >&2; exit 1; }
    if ((n > 1)); then
      wait_until 30 peers_live "${NODES[$i]}" "$n" || { echo "cluster-bench: node ${NODES[$i]} does not see its peers" >&2; exit 1; }
    fi
  done
}
stop_nodes() {
  local p
  for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done
  ! grep -l 'panicked at' "$WORK/run$RUN_SEQ"/node*.log || { echo "cluster-bench: a node panicked" >&2; exit 1; }
  NODE_PIDS=()
  rm -rf "$WORK/run$RUN_SEQ"
}

# start_nginx MODE: nginx in front of the current nodes; MODE hash is deploy/nginx/nginx.conf
# as shipped, rr the same file without its `hash` line (round robin). Sets LB[MODE].
start_nginx() {
  local mode=$1 dir=$WORK/nginx-$1 port p
  port=$(free_ports 1)
  mkdir -p "$dir"
  if [ "$mode" = hash ]; then
    cp deploy/nginx/nginx.conf "$dir/nginx.conf"
  else
    # shellcheck disable=SC2016 # a literal $ in the pattern
    grep -v '^[[:space:]]*hash \$blobcache_hash_key consistent;' deploy/nginx/nginx.conf >"$dir/nginx.conf"
    ! cmp -s deploy/nginx/nginx.conf "$dir/nginx.conf" || { echo "cluster-bench: no hash line to remove in nginx.conf" >&2; exit 1; }
  fi
  for p in "${NODES[@]}"; do echo "server ${p#http://} max_fails=2 fail_timeout=5s;"; done >"$dir/blobcache-upstream.conf"
  echo "listen 127.0.0.1:$port;" >"$dir/blobcache-listen.conf"
  "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/startup.log" \
    -g "daemon off; pid $dir/nginx.pid;" >"$dir/access.log" 2>"$dir/error.log" &
  NGINX_PID[$mode]=$!
  LB[$mode]=http://127.0.0.1:$port
  wait_until 20 curl -sf -o /dev/null --max-time 1 "${LB[$mode]}/nginx-health" || { echo "cluster-bench: nginx ($mode) did not start" >&2; exit 1; }
}
stop_nginx() {
  local m
  for m in "${!NGINX_PID[@]}"; do
    stop_pid "${NGINX_PID[$m]}"
    rm -rf "$WORK/nginx-$m"
  done
  NGINX_PID=()
  LB=()
}

echo "== blobcache cluster benchmark: $(nproc) cores, loopback; per node --memory-cache $MEMORY_CACHE --disk-cache $DISK_CACHE;" \
  "catalogue $CATALOGUE blobs of $BLOB_SIZE bytes; clusters of $NODE_COUNTS nodes"
drive seed --dir "$BUCKET_DIR" --count "$CATALOGUE" --size "$BLOB_SIZE" --seed 1 --out "$WORK/catalogue" >/dev/null

# ------------------------------------------------------------------ 1. capacity

declare -A CAPACITY=() CACHED=()
if [[ $SECTIONS == *capacity* ]]; then
  echo "1. capacity: each blob of the catalogue read once (client-side round robin), then /blobs/{md5}/status on every node"
  for n in 1 $NODE_COUNTS; do
    start_nodes "$n"
    sweep=$(drive sweep --keys "$WORK/catalogue" --targets "$(joined "${NODES[@]}")" --concurrency 4)
    count=$(drive count --keys "$WORK/catalogue" --nodes "$(joined "${NODES[@]}")" --concurrency 8)
    stop_nodes
    record "capacity n=$n" "{\"sweep\": $sweep, \"count\": $count}"
    CAPACITY[$n]=$(json 'j["resident"]' <<<"$count")
    CACHED[$n]=$(json 'j["distinct"]' <<<"$count")
    ratio=$(python3 -c "print(f'{${CAPACITY[$n]} / ${CAPACITY[1]}:.2f}x one node (status: {${CACHED[$n]} / ${CACHED[1]}:.2f}x)')")
    echo "   $n node(s): $ratio; status cached: $(json 'j["distinct"]' <<<"$count") distinct blobs ($(json '" + ".join(map(str, j["per_node"]))' <<<"$count"); copies $(json 'j["copies"]' <<<"$count"));" \
      "bytes in memory: $(json 'j["resident"]' <<<"$count") blobs ($(json '" + ".join(map(str, j["resident_per_node"]))' <<<"$count"); memory entries $(json 'j["memory_entries"]' <<<"$count"));" \
      "sweep: $(json 'j["x_cache"]' <<<"$sweep"), $(json 'j["failed"]' <<<"$sweep") failed"
  done
  elapsed
fi

# ------------------------------------------------------------------ 2. Zipf hit ratio

zipf() { # zipf LABEL TARGET...: one Zipf run against the current nodes
  local label=$1 out ideal
  shift
  ideal=$(joined "${CAPACITY[@]}")
  out=$(drive zipf --keys "$WORK/catalogue" --targets "$(joined "$@")" --nodes "$(joined "${NODES[@]}")" \
    --requests "$ZIPF_REQUESTS" --s "$ZIPF_S" --concurrency "$ZIPF_CONCURRENCY" --ideal "$ideal")
  record "zipf $label" "$out"
  echo "   $label: hit ratio $(json 'j["measured"]["hit_ratio_store"]' <<<"$out") (warm-up half $(json 'j["warmup"]["hit_ratio_store"]' <<<"$out"));" \
    "store HEADs per request $(json 'j["measured"]["store_heads_per_request"]' <<<"$out"); forwarded $(json 'j["measured"]["forwarded_ratio"]' <<<"$out");" \
    "ideal top-k $(json 'j["ideal_top_k"]' <<<"$out"); $(json 'j["measured"]["req_per_s"]' <<<"$out") req/s; failed $(json 'j["warmup"]["failed"] + j["measured"]["failed"]' <<<"$out")"
}
if [[ $SECTIONS == *zipf* ]]; then
  echo "2. Zipf s=$ZIPF_S over $CATALOGUE blobs, $ZIPF_REQUESTS requests ($((ZIPF_REQUESTS / 2)) warm-up, $((ZIPF_REQUESTS / 2)) measured), $ZIPF_CONCURRENCY clients"
  start_nodes 1
  zipf "1 node, direct" "${NODES[0]}"
  stop_nodes
  first=1
  for n in $NODE_COUNTS; do
    start_nodes "$n"
    start_nginx hash
    zipf "$n nodes, nginx hash" "${LB[hash]}"
    stop_nginx
    stop_nodes
    start_nodes "$n"
    start_nginx rr
    zipf "$n nodes, nginx round robin" "${LB[rr]}"
    stop_nginx
    stop_nodes
    if [ "$first" = 1 ]; then
      for mode in hash rr; do
        start_nodes "$n" --peer-copies
        start_nginx $mode
        zipf "$n nodes, nginx $([ $mode = hash ] && echo hash || echo round robin), --peer-copies" "${LB[$mode]}"
        stop_nginx
        stop_nodes
      done
      first=0
    fi
  done
  elapsed
fi

# ------------------------------------------------------------------ 3 + 4 on one cluster

N3=${NODE_COUNTS%% *}
if [[ $SECTIONS == *cold* ]] || [[ $SECTIONS == *latency* ]]; then
  MEMORY_CACHE=$COLD_MEMORY_CACHE start_nodes "$N3"
  start_nginx hash
  start_nginx rr
fi

if [[ $SECTIONS == *cold* ]]; then
  echo "3. store reads per cold blob ($N3 nodes): $COLD_BLOBS blobs of $COLD_SIZE bytes each way, $COLD_CLIENTS clients at once"
  for way in nodes hash rr; do
    drive seed --dir "$BUCKET_DIR" --count "$COLD_BLOBS" --size "$COLD_SIZE" --seed "$((100 + RANDOM))" --out "$WORK/cold-$way" >/dev/null
    case $way in
      nodes) targets=$(joined "${NODES[@]}"); per=$((COLD_CLIENTS / N3)); label="all $N3 nodes at once" ;;
      hash) targets=${LB[hash]}; per=$COLD_CLIENTS; label="nginx hash" ;;
      rr) targets=${LB[rr]}; per=$COLD_CLIENTS; label="nginx round robin" ;;
    esac
    out=$(drive cold --keys "$WORK/cold-$way" --targets "$targets" --nodes "$(joined "${NODES[@]}")" --per-target "$per")
    record "cold $way" "$out"
    echo "   $label: store GETs per blob $(json '", ".join(str(b["store_gets"]) for b in j["blobs"])' <<<"$out") for $(json 'j["blobs"][0]["chunks"]' <<<"$out") chunks;" \
      "HEADs $(json '", ".join(str(b["store_heads"]) for b in j["blobs"])' <<<"$out");" \
      "bytes read / size $(json '", ".join("%.2f" % (b["store_bytes_read"] / b["size"]) for b in j["blobs"])' <<<"$out");" \
      "failed $(json 'sum(b["failed"] for b in j["blobs"])' <<<"$out"); X-Cache $(json 'j["blobs"][0]["x_cache"]' <<<"$out")"
  done
  elapsed
fi

if [[ $SECTIONS == *latency* ]]; then
  echo "4. latency of a forwarded hit ($N3 nodes): wrk -t1 -c1 --latency, $RUNS runs of ${LAT_SECONDS}s each, owner and non-owner in turn"
  for size in 4096 1048576; do
    : >"$WORK/lat-$size"
    drive seed --dir "$BUCKET_DIR" --count 1 --size "$size" --seed "$((200 + size))" --out "$WORK/lat-$size" >/dev/null
    md5=$(cut -d' ' -f1 "$WORK/lat-$size")
    who=$(drive owner --node "${NODES[0]}" --md5 "$md5")
    owner=$(json 'j["owner"]' <<<"$who")
    other=$(json 'j["non_owner"]' <<<"$who")
    curl -sf -o /dev/null "$owner/blobs/$md5"
    cached_on_owner() { [ "$(curl -sf --max-time 2 "$owner/blobs/$md5/status" | json 'j["cached"]')" = True ]; }
    wait_until 10 cached_on_owner || { echo "cluster-bench: $md5 not cached on its owner" >&2; exit 1; }
    xl=$(curl -sfI "$owner/blobs/$md5" | tr -d '\r' | awk 'tolower($1)=="x-cache:" {print $2}')
    xf=$(curl -sfI "$other/blobs/$md5" | tr -d '\r' | awk 'tolower($1)=="x-cache:" {print $2}')
    [ "$xl $xf" = "hit peer" ] || { echo "cluster-bench: expected X-Cache hit on the owner and peer elsewhere, got $xl $xf" >&2; exit 1; }
    out=$(drive latency --local "$owner/blobs/$md5" --forwarded "$other/blobs/$md5" --runs "$RUNS" --seconds "$LAT_SECONDS")
    record "latency $size" "$out"
    echo "   $size bytes: local hit p50 $(json 'j["local"]["p50_ms"]' <<<"$out") ms, p99 $(json 'j["local"]["p99_ms"]' <<<"$out") ms;" \
      "forwarded p50 $(json 'j["forwarded"]["p50_ms"]' <<<"$out") ms, p99 $(json 'j["forwarded"]["p99_ms"]' <<<"$out") ms;" \
      "added p50 $(json 'j["added_p50_ms"]' <<<"$out") ms (p50 per run: local $(json 'j["local"]["p50_runs"]' <<<"$out"), forwarded $(json 'j["forwarded"]["p50_runs"]' <<<"$out"))"
  done
fi

if [[ $SECTIONS == *cold* ]] || [[ $SECTIONS == *latency* ]]; then
  stop_nginx
  stop_nodes
fi

echo "== done in $((SECONDS - T_START)) s"
