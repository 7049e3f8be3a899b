#!/usr/bin/env bash
# The HTTP contract under generated input: Schemathesis runs openapi.yaml against
# a live release node and fails on any response the file does not describe.
#
#   - the node: target/release/blobcache serve on 127.0.0.1, port 0 (the bound
#     port is read from its log), a temporary data directory, the embedded
#     file store, and a tokens file; every request carries a token with every
#     scope (Authorization: Bearer), so the auth layer is in the path and
#     Schemathesis' ignored_auth check sends requests without it, or with a bad
#     one, and expects 401. /metrics and /stats need the admin scope
#     (--metrics-access admin), so they are checked behind auth too.
#   - Schemathesis, pinned with hypothesis in scripts/deploy-requirements.txt
#     (the target/deploy-venv that .ci/run installs): every check, every phase
#     (examples, coverage, fuzzing, stateful), a fixed seed, a bounded number of
#     examples per operation, one worker and no state kept between runs
#     (scripts/schemathesis.toml), so a run is repeatable; it takes about a
#     minute on 2 cores.
#   - scripts/schemathesis_hooks.py derives an upload's key (and Content-MD5)
#     from its generated body: the one constraint OpenAPI cannot state.
#
# Exits non-zero on any failure (and on a node that does not start); the node
# is stopped whatever happens. Every wait has a deadline, every address is
# 127.0.0.1.
#
#   BLOBCACHE_BIN=...        the node binary (default target/release/blobcache)
#   SCHEMATHESIS=...         the schemathesis command (default target/deploy-venv/bin/schemathesis)
#   ST_SEED=N                the seed (default 20261123)
#   ST_MAX_EXAMPLES=N        test cases per operation and phase (default 200)
#   ST_KEEP=1                keep the work directory (node log, reports)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BLOBCACHE_BIN:-target/release/blobcache}
ST=${SCHEMATHESIS:-target/deploy-venv/bin/schemathesis}
SEED=${ST_SEED:-20261123}
EXAMPLES=${ST_MAX_EXAMPLES:-200}

VALIDATOR=$(dirname "$ST")/openapi-spec-validator
for tool in "$BIN" "$ST" "$VALIDATOR"; do
  [ -x "$tool" ] || { echo "schemathesis.sh: $tool is missing" >&2; exit 2; }
done

"$VALIDATOR" openapi.yaml

WORK=$(mktemp -d "${TMPDIR:-/tmp}/blobcache-schemathesis.XXXXXX")
NODE_PID=""
cleanup() {
  local status=$? i
  if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill -TERM "$NODE_PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$NODE_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ] && [ -s "$WORK/node.log" ]; then
    echo "---- last lines of the node's log" >&2
    tail -n 20 "$WORK/node.log" >&2
  fi
  if [ "${ST_KEEP:-0}" = 1 ]; then echo "schemathesis.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TOKEN=$("$BIN" token create --name schemathesis --scopes read,write,delete,admin,peer \
  --file "$WORK/tokens" 2>/dev/null)
"$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" --tokens "$WORK/tokens" \
  --metrics-access admin --memory-cache 64MiB --disk-cache 256MiB --log-format json \
  >"$WORK/node.log" 2>&1 &
NODE_PID=$!

# The port the node bound, from its "listening" line; then /healthz, both with a deadline.
ADDR=""
for ((i = 0; i < 300; i++)); do
  ADDR=$(grep -o '"addr":"127\.0\.0\.1:[0-9]*"' "$WORK/node.log" | head -n 1 | cut -d'"' -f4) || true
  [ -n "$ADDR" ] && break
  kill -0 "$NODE_PID" 2>/dev/null || { echo "schemathesis.sh: the node exited at start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "schemathesis.sh: the node did not say where it listens within 30 s" >&2; exit 1; }
URL=http://$ADDR
for ((i = 0; i < 300; i++)); do
  curl -sf -o /dev/null --max-time 1 "$URL/healthz" && break
  sleep 0.1
done
curl -sf -o /dev/null --max-time 1 "$URL/healthz" || { echo "schemathesis.sh: $URL/healthz did not answer within 30 s" >&2; exit 1; }

echo "== schemathesis $("$ST" --version | awk '{print $NF}') against $URL: seed $SEED, $EXAMPLES examples per operation, all checks and phases"
# The token is the only header given; --output-sanitize (on by default) masks it in the report.
SCHEMATHESIS_HOOKS=scripts/schemathesis_hooks.py HYPOTHESIS_STORAGE_DIRECTORY="$WORK/hypothesis" \
  timeout --foreground 900 "$ST" --config-file scripts/schemathesis.toml run openapi.yaml --url "$URL" \
  -H "Authorization: Bearer $TOKEN" \
  --checks all --phases examples,coverage,fuzzing,stateful \
  --seed "$SEED" --max-examples "$EXAMPLES" --generation-database none \
  --workers 1 --request-timeout 30 --no-color \
  --report junit --report-dir "$WORK/report"
