#!/usr/bin/env bash
# The docker-compose topology, run natively on loopback and tested through nginx:
#
#   an S3 server (examples/s3_server.rs: s3s-fs, the tests' server) in MinIO's place,
#   three blobcache nodes, peers of each other (--peers, --advertise-url),
#   nginx with deploy/nginx/nginx.conf itself: this script only writes the two
#   files it includes (the node list and the listen address).
#
# Checks, through nginx unless said otherwise:
#   1. PUT / GET / HEAD / Range round trips of blobs from 1 KiB to 70 MiB (multipart to S3)
#   2. read-your-write: right after each PUT, a GET on every node directly returns it
#   3. one copy: blobs PUT through nginx, and blobs put straight into the bucket and
#      read through nginx, end up cached on exactly one node (GET /blobs/{md5}/status
#      of each node): nginx's hash and the nodes' owners do not fight
#   4. DELETE coherence: after a DELETE through nginx, every node answers 404
#      directly, even the ones that had served the blob before
#   5. an object deleted in the bucket behind blobcache's back and announced as an S3
#      event (MinIO's webhook format) at POST /events/s3 is gone from every node
#   6. kill -9 of a node that holds blobs: reads and writes keep working through
#      nginx; a blob deleted while it was down is not served by it after its restart;
#      after the restart everything reads back, from nginx and from the node itself
#   7. the end: every node's pending uploads drain, every blob left is in the store,
#      SIGTERM stops each node cleanly, no node panicked, nginx logged no errors
#
# Every wait has a deadline, every loop a bound, every address is 127.0.0.1.
#
# Needs: the release binaries (cargo build --release --bin blobcache --example s3_server),
# nginx (apt-get install nginx-light; run as root, or with /var/lib/nginx writable),
# curl 7.75+, python3, md5sum.
#
#   BLOBCACHE_BIN=...   the node binary (default target/release/blobcache)
#   S3_SERVER_BIN=...   the S3 server (default target/release/examples/s3_server)
#   STACK_CLUSTER=0     nodes without --peers/--advertise-url (a build from before the
#                       cluster): checks 2, 4 (on each node), 5 and the
#                       deleted-while-down part of 6 are skipped
#   STACK_KEEP=1        keep the work directory (logs, data) afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BLOBCACHE_BIN:-target/release/blobcache}
S3_BIN=${S3_SERVER_BIN:-target/release/examples/s3_server}
CLUSTER=${STACK_CLUSTER:-1}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
S3_KEY=blobcache-test
S3_SECRET=blobcache-test-secret

for tool in curl python3 md5sum "$NGINX" "$BIN" "$S3_BIN"; do
  command -v "$tool" >/dev/null || { echo "stack-test: $tool is missing" >&2; exit 2; }
done
if [ "$CLUSTER" = 1 ] && ! "$BIN" serve --help | grep -q -- '--peers'; then
  echo "stack-test: $BIN has no --peers (a build without the cluster); STACK_CLUSTER=0 runs the rest" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/blobcache-stack.XXXXXX")
declare -A NODE_PID=()
S3_PID=""
NGINX_PID=""
FAILED=0
PASSED=0
SKIPPED=0

stop_pid() { # stop_pid PID: SIGTERM, at most 10 s, then SIGKILL
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
  local status=$? n
  for n in "${!NODE_PID[@]}"; do stop_pid "${NODE_PID[$n]}"; done
  [ -n "$NGINX_PID" ] && stop_pid "$NGINX_PID"
  [ -n "$S3_PID" ] && stop_pid "$S3_PID"
  if [ "$FAILED" -ne 0 ] || [ "$status" -ne 0 ]; then
    for log in "$WORK"/node*.log "$WORK"/nginx/error.log "$WORK"/nginx/startup.log "$WORK"/s3.log; do
      [ -s "$log" ] || continue
      echo "---- last lines of $log" >&2
      tail -n 15 "$log" >&2
    done
  fi
  if [ "${STACK_KEEP:-0}" = 1 ]; then echo "stack-test: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { PASSED=$((PASSED + 1)); echo "  ok    $1"; }
flunk() { FAILED=$((FAILED + 1)); echo "  FAIL  $1"; }
skip() { SKIPPED=$((SKIPPED + 1)); echo "  skip  $1"; }
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then pass "$what"; else flunk "$what"; fi
}
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

# ------------------------------------------------------------------ processes

read -r S3_PORT NGINX_PORT P1 P2 P3 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
NODE_PORT=([1]=$P1 [2]=$P2 [3]=$P3)
S3_URL=http://127.0.0.1:$S3_PORT
LB=http://127.0.0.1:$NGINX_PORT
node_url() { echo "http://127.0.0.1:${NODE_PORT[$1]}"; }
PEERS="$(node_url 1),$(node_url 2),$(node_url 3)"

start_node() { # start_node N: same flags and data directory every time
  local n=$1 cluster=()
  [ "$CLUSTER" = 1 ] && cluster=(--peers "$PEERS" --advertise-url "$(node_url "$n")")
  "$BIN" serve --listen "127.0.0.1:${NODE_PORT[$n]}" --data-dir "$WORK/node$n" \
    --store s3://blobs/cache --s3-endpoint "$S3_URL" --s3-force-path-style \
    --s3-access-key-id "$S3_KEY" --s3-secret-access-key "$S3_SECRET" \
    --memory-cache 64MiB --disk-cache 256MiB --spool-size 1GiB --max-blob-size 512MiB \
    --shutdown-grace 5s "${cluster[@]}" >>"$WORK/node$n.log" 2>&1 &
  NODE_PID[$n]=$!
}
ready() { curl -sf -o /dev/null --max-time 2 "$1/readyz"; }

echo "== stack-test: S3 at $S3_URL, nodes $PEERS, nginx at $LB (cluster flags: $([ "$CLUSTER" = 1 ] && echo on || echo off))"
"$S3_BIN" "$WORK/s3" "127.0.0.1:$S3_PORT" >"$WORK/s3.log" 2>&1 &
S3_PID=$!
wait_until 20 curl -s -o /dev/null --max-time 1 "$S3_URL/" || { echo "stack-test: the S3 server did not start" >&2; exit 1; }

for n in 1 2 3; do start_node "$n"; done
for n in 1 2 3; do
  wait_until 60 ready "$(node_url "$n")" || { echo "stack-test: node $n did not become ready" >&2; exit 1; }
done

mkdir -p "$WORK/nginx"
cp deploy/nginx/nginx.conf "$WORK/nginx/nginx.conf"
for n in 1 2 3; do echo "server 127.0.0.1:${NODE_PORT[$n]} max_fails=2 fail_timeout=5s;"; done >"$WORK/nginx/blobcache-upstream.conf"
echo "listen 127.0.0.1:$NGINX_PORT;" >"$WORK/nginx/blobcache-listen.conf"
# nginx.conf logs errors to stderr and access to stdout; -e is for the start-up.
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/startup.log" \
  -g "daemon off; pid $WORK/nginx/nginx.pid;" >"$WORK/nginx/access.log" 2>"$WORK/nginx/error.log" &
NGINX_PID=$!
wait_until 20 curl -sf -o /dev/null --max-time 1 "$LB/nginx-health" || { echo "stack-test: nginx did not start" >&2; exit 1; }
check "nginx proxies to the nodes (/readyz through nginx)" ready "$LB"

# ------------------------------------------------------------------ helpers

BLOB_SEQ=0
new_blob() { # new_blob SIZE: writes a random file, prints its MD5 (the file is $WORK/blobs/MD5)
  local f
  mkdir -p "$WORK/blobs"
  BLOB_SEQ=$((BLOB_SEQ + 1))
  f="$WORK/blobs/new.$BLOB_SEQ"
  head -c "$1" /dev/urandom >"$f"
  local md5
  md5=$(md5sum "$f" | cut -c1-32)
  mv "$f" "$WORK/blobs/$md5"
  echo "$md5"
}
code() { curl -s -o /dev/null --max-time 120 -w '%{http_code}' "$@" || true; }
put() { # put BASE MD5: 201 or 200
  local c
  c=$(code -H 'Expect:' -T "$WORK/blobs/$2" "$1/blobs/$2")
  [ "$c" = 201 ] || [ "$c" = 200 ]
}
same() { # same BASE MD5: a GET returns exactly the blob
  local got
  got=$(curl -sf --max-time 120 "$1/blobs/$2" | md5sum | cut -c1-32) || return 1
  [ "$got" = "$2" ]
}
gone() { [ "$(code "$1/blobs/$2")" = 404 ] && [ "$(code -I "$1/blobs/$2")" = 404 ]; }
field() { # field URL PYTHON-EXPRESSION-ON-j
  curl -sf --max-time 5 "$1" | python3 -c "import json,sys; j=json.load(sys.stdin); print($2)"
}
cached_on() { # cached_on MD5: the nodes whose status says cached, e.g. "2"
  local n out=""
  for n in 1 2 3; do
    [ -n "${NODE_PID[$n]:-}" ] || continue
    # A node that has nothing of the blob answers 404 with the same fields (all false), hence no -f.
    [ "$(curl -s --max-time 5 "$(node_url "$n")/blobs/$1/status" |
      python3 -c 'import json,sys; print(str(json.load(sys.stdin).get("cached")).lower())' 2>/dev/null)" = true ] && out+="$n"
  done
  echo "$out"
}
drained() { # drained N...: no pending uploads on these nodes
  local n
  for n in "$@"; do
    [ "$(field "$(node_url "$n")/stats" 'j["replication"]["pending_blobs"]')" = 0 ] || return 1
  done
}
all_nodes() { # all_nodes FUNCTION MD5: FUNCTION holds on each node directly
  local n
  for n in 1 2 3; do "$1" "$(node_url "$n")" "$2" || return 1; done
}
s3() { # s3 CURL-ARGS... KEY: a signed request straight to the bucket
  curl -s -o /dev/null -w '%{http_code}' --max-time 60 --aws-sigv4 aws:amz:us-east-1:s3 \
    --user "$S3_KEY:$S3_SECRET" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "${@:1:$#-1}" "$S3_URL/blobs/cache/${*: -1}"
}
s3_event() { # s3_event MD5: MinIO's webhook body for a deletion of the blob's object
  python3 - "$1" <<'PY'
import json, sys, datetime
md5 = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
print(json.dumps({
    "EventName": "s3:ObjectRemoved:Delete",
    "Key": f"blobs/cache/{md5}",
    "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": now,
        "eventName": "s3:ObjectRemoved:Delete",
        "userIdentity": {"principalId": "blobcache-test"},
        "requestParameters": {"principalId": "blobcache-test", "region": "", "sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "17A0000000000000"},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "Config",
            "bucket": {"name": "blobs", "ownerIdentity": {"principalId": "blobcache-test"}, "arn": "arn:aws:s3:::blobs"},
            # Object keys in S3 events are URL-encoded, as MinIO sends them.
            "object": {"key": f"cache%2F{md5}", "sequencer": "17A0000000000000"},
        },
        "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64)"},
    }],
}))
PY
}

# ------------------------------------------------------------------ 1 + 2: round trips, read-your-write

echo "1. round trips through nginx; 2. read-your-write on every node"
SIZES=(1024 65536 1048575 4186112 4186113 9437184 20000000 73400320)
SET_A=()
for size in "${SIZES[@]}"; do
  k=$(new_blob "$size")
  SET_A+=("$k")
  check "PUT $size bytes ($k)" put "$LB" "$k"
  if [ "$CLUSTER" = 1 ]; then
    check "  GET right after the PUT, on every node directly" all_nodes same "$k"
  fi
  check "  GET through nginx" same "$LB" "$k"
  len=$(curl -sfI --max-time 10 "$LB/blobs/$k" | tr -d '\r' | awk 'tolower($1)=="content-length:" {print $2}' || true)
  check "  HEAD: Content-Length $size" test "$len" = "$size"
done
[ "$CLUSTER" = 1 ] || skip "read-your-write on each node directly needs the cluster flags"
k=${SET_A[5]}
got=$(curl -s --max-time 30 -r 4186000-4186299 -o "$WORK/range" -w '%{http_code}' "$LB/blobs/$k")
want=$(dd if="$WORK/blobs/$k" iflag=skip_bytes,count_bytes skip=4186000 count=300 status=none | md5sum | cut -c1-32)
check "Range across a chunk boundary: 206 and the right 300 bytes" \
  test "$got $(md5sum <"$WORK/range" | cut -c1-32)" = "206 $want"
bad=$(echo "no such blob $$" | md5sum | cut -c1-32)
check "a body that does not match its MD5 is refused (400)" \
  test "$(code -H 'Expect:' -T "$WORK/blobs/${SET_A[1]}" "$LB/blobs/$bad")" = 400
check "  and nothing was stored under that MD5" gone "$LB" "$bad"

# ------------------------------------------------------------------ 3: one cached copy

echo "3. each blob cached on one node"
SET_B=()
for size in 1048576 3000000 5000000 12000000; do
  k=$(new_blob "$size")
  SET_B+=("$k")
  check "PUT $size bytes through nginx ($k)" put "$LB" "$k"
done
for size in 2000000 6000000; do
  k=$(new_blob "$size")
  SET_B+=("$k")
  check "object put straight into the bucket ($k)" test "$(s3 -T "$WORK/blobs/$k" "$k")" = 200
done
check "the nodes' pending uploads drain (60 s at most)" wait_until 60 drained 1 2 3
for k in "${SET_B[@]}"; do
  if ! { same "$LB" "$k" && same "$LB" "$k"; }; then flunk "GET $k through nginx"; fi
  on=$(cached_on "$k")
  check "$k: cached on exactly one node (nodes: ${on:-none})" test "${#on}" = 1
done

# ------------------------------------------------------------------ 4: DELETE coherence

echo "4. DELETE through nginx, then 404 everywhere"
DELETED=()
for k in "${SET_A[@]:0:4}"; do
  if [ "$CLUSTER" = 1 ]; then
    all_nodes same "$k" || flunk "GET $k on every node before the DELETE"
  fi
  c=$(code -X DELETE "$LB/blobs/$k")
  check "DELETE $k: 204 (or 202 while the store is away)" test "$c" = 204 -o "$c" = 202
  DELETED+=("$k")
  check "  GET and HEAD through nginx: 404" gone "$LB" "$k"
  if [ "$CLUSTER" = 1 ]; then
    check "  GET and HEAD on every node directly: 404" all_nodes gone "$k"
  fi
done
[ "$CLUSTER" = 1 ] || skip "404 on each node after a DELETE through nginx needs the cluster (DELETE fan-out)"

# ------------------------------------------------------------------ 5: S3 events

echo "5. an object deleted behind blobcache's back, announced at POST /events/s3"
if [ "$CLUSTER" = 1 ]; then
  k=${SET_B[0]}
  all_nodes same "$k" || flunk "GET $k on every node before the event"
  check "DELETE of the object straight in the bucket" test "$(s3 -X DELETE "$k")" = 204
  s3_event "$k" >"$WORK/event.json"
  c=$(code -H 'Content-Type: application/json' --data-binary "@$WORK/event.json" "$LB/events/s3")
  check "POST /events/s3 through nginx: 2xx ($c)" test "${c:0:1}" = 2
  check "  then 404 on every node directly (10 s at most)" wait_until 10 all_nodes gone "$k"
  DELETED+=("$k")
else
  skip "POST /events/s3 arrives with the cluster"
fi

# ------------------------------------------------------------------ 6: kill -9 and restart

echo "6. a node killed (-9) and restarted"
VICTIM=""
for k in "${SET_B[@]:1}"; do
  on=$(cached_on "$k")
  if [ "${#on}" = 1 ]; then VICTIM=$on; HELD=$k; break; fi
done
if [ -z "$VICTIM" ]; then
  flunk "no node holds a blob to lose"
  VICTIM=3
  HELD=${SET_B[1]}
fi
echo "   node $VICTIM holds $HELD"
kill -KILL "${NODE_PID[$VICTIM]}"
wait "${NODE_PID[$VICTIM]}" 2>/dev/null || true
unset "NODE_PID[$VICTIM]"
LIVE=()
for k in "${SET_A[@]:4}" "${SET_B[@]:1}"; do LIVE+=("$k"); done
for k in "${LIVE[@]}"; do
  check "node $VICTIM down: GET $k through nginx" same "$LB" "$k"
done
SET_D=()
for size in 500000 4500000; do
  k=$(new_blob "$size")
  SET_D+=("$k")
  check "node $VICTIM down: PUT $k through nginx" put "$LB" "$k"
  check "  and GET it back through nginx" same "$LB" "$k"
done
if [ "$CLUSTER" = 1 ]; then
  c=$(code -X DELETE "$LB/blobs/$HELD")
  check "node $VICTIM down: DELETE $HELD, which it held (204 or 202)" test "$c" = 204 -o "$c" = 202
  DELETED+=("$HELD")
  mapfile -t LIVE < <(printf '%s\n' "${LIVE[@]}" | grep -vx "$HELD")
fi
start_node "$VICTIM"
check "node $VICTIM restarted on its data directory and ready (60 s at most)" wait_until 60 ready "$(node_url "$VICTIM")"
if [ "$CLUSTER" = 1 ]; then
  check "node $VICTIM does not serve $HELD, deleted while it was down" gone "$(node_url "$VICTIM")" "$HELD"
  for k in "${SET_D[@]}"; do
    check "node $VICTIM serves $k, PUT while it was down" same "$(node_url "$VICTIM")" "$k"
  done
else
  skip "a DELETE while a node is down, and read-your-write on it, need the cluster"
fi
if [ "$CLUSTER" != 1 ]; then
  # Without the cluster, a node finds blobs PUT on another node only in the store.
  check "the nodes' pending uploads drain (60 s at most)" wait_until 60 drained 1 2 3
fi
for k in "${LIVE[@]}" "${SET_D[@]}"; do
  check "after the restart: GET $k through nginx" same "$LB" "$k"
done
for k in "${DELETED[@]}"; do
  check "after the restart: $k stays deleted (through nginx)" gone "$LB" "$k"
done

# ------------------------------------------------------------------ 7: the end

echo "7. uploads drain, every blob is in the store, clean stops"
check "every node's pending uploads drain (60 s at most)" wait_until 60 drained 1 2 3
for k in "${LIVE[@]}" "${SET_D[@]}"; do
  check "$k is in the store" test "$(s3 -I "$k")" = 200
done
for k in "${DELETED[@]}"; do
  check "$k is not in the store" test "$(s3 -I "$k")" = 404
done
for n in 1 2 3; do
  pid=${NODE_PID[$n]}
  kill -TERM "$pid"
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    status=timeout
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
  else
    wait "$pid" && status=0 || status=$?
  fi
  unset "NODE_PID[$n]"
  check "node $n stops on SIGTERM within 15 s, exit status 0 ($status)" test "$status" = 0
done
check "no node panicked" bash -c "! grep -l 'panicked at' $WORK/node*.log"
check "nginx logged no [emerg], [alert] or [crit]" bash -c "! cat $WORK/nginx/*.log | grep -E '\\[(emerg|alert|crit)\\]'"
echo "   nginx: $(grep -c . "$WORK/nginx/access.log") requests, $(grep -c '\[error\]' "$WORK/nginx/error.log" || true) upstream errors logged (node $VICTIM's downtime)"

echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
