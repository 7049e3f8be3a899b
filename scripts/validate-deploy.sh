#!/usr/bin/env bash
# Validates the deployment files without a container engine or a Kubernetes cluster:
#   Dockerfile         hadolint; the version label is Cargo.toml's
#   docker-compose.yml the Compose specification's JSON schema (check-jsonschema),
#                      yamllint, and cross-checks with the files it mounts
#                      (scripts/validate_deploy.py compose)
#   nginx.conf         `nginx -t` with a loopback node list, as stack-test.sh runs it
#   monitoring         the PromQL of the alerts and the Grafana dashboard parses
#                      and names metrics the code exports (promql-parser)
#   Helm chart         Helm 3 and Helm 4 lint, values schema, rendering for several
#                      Kubernetes versions validated against their schemas
#                      (kubernetes-validate), objects cross-checked with each
#                      other and the values (tokens and TLS Secrets, https),
#                      refusals of inconsistent values, the README's value table
#                      (scripts/validate_deploy.py chart)
#   scripts            shellcheck of the deployment scripts
#   openapi.yaml       a valid OpenAPI 3.0 document (openapi-spec-validator); what the
#                      server answers is scripts/schemathesis.sh's part
# Where a blobcache binary is at hand ($BLOBCACHE_BIN, else target/release or
# target/debug), the compose nodes' environment and the chart's rendered config
# file with a pod's environment go through `blobcache check-config` as well.
#
# Installs nothing. The tools: a venv with scripts/deploy-requirements.txt
# (DEPLOY_VENV, default target/deploy-venv) and nginx, as .ci/run sets them up:
#   python3 -m venv target/deploy-venv
#   target/deploy-venv/bin/pip install --ignore-requires-python -r scripts/deploy-requirements.txt
#   apt-get install nginx-light
# Runs every check, then exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

VENV=${DEPLOY_VENV:-target/deploy-venv}
failed=0
section() { echo "$1"; }
pass() { echo "  ok    $1"; }
flunk() { echo "  FAIL  $1"; failed=1; }
# run DESCRIPTION COMMAND...: the command's output is shown only when it fails.
run() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$what"; else flunk "$what"; printf '%s\n' "$out" | sed 's/^/        /'; fi
}

missing=()
for tool in python check-jsonschema kubernetes-validate hadolint shellcheck yamllint openapi-spec-validator; do
  [ -x "$VENV/bin/$tool" ] || missing+=("$VENV/bin/$tool")
done
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  echo "validate-deploy: missing tools: ${missing[*]}" >&2
  echo "validate-deploy: see the header of $0 (or .ci/run) for how to install them" >&2
  exit 2
fi
PATH=$PATH:/usr/sbin

BIN=${BLOBCACHE_BIN:-}
if [ -z "$BIN" ]; then
  for candidate in target/release/blobcache target/debug/blobcache; do
    [ -x "$candidate" ] && { BIN=$candidate; break; }
  done
fi

YAMLLINT_CONFIG='{extends: default, rules: {line-length: {max: 130}, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}'

section "Dockerfile"
run "hadolint Dockerfile" "$VENV/bin/hadolint" Dockerfile
run ".dockerignore sends the manifest, the lock file and src/" \
  grep -qxF '!src' .dockerignore

section "compose"
run "docker-compose.yml against the Compose specification (check-jsonschema vendor.compose-spec)" \
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
run "yamllint: compose, Prometheus, Grafana provisioning, chart values" \
  "$VENV/bin/yamllint" -d "$YAMLLINT_CONFIG" docker-compose.yml deploy/prometheus deploy/grafana/provisioning \
  deploy/helm/blobcache/values.yaml deploy/helm/blobcache/Chart.yaml deploy/helm/blobcache/ci

section "nginx"
NGINX_TMP=$(mktemp -d)
trap 'rm -rf "$NGINX_TMP"' EXIT
cp deploy/nginx/nginx.conf "$NGINX_TMP/"
printf 'server 127.0.0.1:18081 max_fails=2 fail_timeout=5s;\nserver 127.0.0.1:18082 max_fails=2 fail_timeout=5s;\n' \
  >"$NGINX_TMP/blobcache-upstream.conf"
echo 'listen 127.0.0.1:18080;' >"$NGINX_TMP/blobcache-listen.conf"
run "nginx -t: deploy/nginx/nginx.conf with a loopback node list ($(nginx -v 2>&1 | sed 's/.*: //'))" \
  nginx -t -q -p "$NGINX_TMP" -c "$NGINX_TMP/nginx.conf" -e "$NGINX_TMP/error.log" -g "daemon off; pid $NGINX_TMP/nginx.pid;"
# The compose node list uses `resolve` (nginx 1.27.3+), which this nginx may not
# know: check its lines' shape instead.
run "deploy/nginx/blobcache-upstream.conf: a resolver and one server line per node" \
  bash -c "grep -q '^resolver ' deploy/nginx/blobcache-upstream.conf \
    && [ \$(grep -c '^server blobcache-[0-9]:8080 resolve' deploy/nginx/blobcache-upstream.conf) -eq 3 ]"

section "scripts"
run "shellcheck scripts/validate-deploy.sh scripts/stack-test.sh scripts/schemathesis.sh" \
  "$VENV/bin/shellcheck" scripts/validate-deploy.sh scripts/stack-test.sh scripts/schemathesis.sh

section "HTTP contract"
run "openapi.yaml is a valid OpenAPI 3.0 document (openapi-spec-validator)" \
  "$VENV/bin/openapi-spec-validator" openapi.yaml

# Versions, compose cross-checks, the chart. Helm's library logs the chart's
# deliberate `fail` calls during lint at INFO on stderr: dropped, results stay.
args=()
[ -n "$BIN" ] && args=(--bin "$BIN")
"$VENV/bin/python" scripts/validate_deploy.py "${args[@]}" versions compose monitoring chart 2> >(grep -v 'INFO funcMap fail' >&2) \
  || failed=1

if [ "$failed" -ne 0 ]; then
  echo "validate-deploy: FAILED" >&2
  exit 1
fi
echo "validate-deploy: all checks passed"
