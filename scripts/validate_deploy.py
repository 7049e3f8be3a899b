#!/usr/bin/env python3
"""Checks of the deployment files that a schema alone cannot make; run by
scripts/validate-deploy.sh with the Python of its tool venv.

  compose   docker-compose.yml against itself and the files it mounts: services,
            volumes and profiles that exist, the nodes' peer lists, nginx's node
            list and Prometheus' targets naming the same nodes, each node's
            environment accepted by `blobcache check-config`
  chart     deploy/helm/blobcache: Helm 3's lint (helm-sdkpy) and Helm 4's lint
            and schema check (helm-python-sdk) for every value set in ci/, each
            rendered for several Kubernetes versions and validated against that
            version's schemas (kubernetes-validate), the objects checked against
            each other and against the values (tokens, peer token and TLS files
            mounted from the right Secrets, https wherever TLS is on, the
            cert-manager Certificate's names), the rendered config file and the
            pods' environment accepted by `blobcache check-config` (and refused
            without what the chart requires of them), values the chart must
            refuse refused with their reason, and every value documented in
            the chart's README
  monitoring  every PromQL expression of the alerts and the Grafana dashboard
            parses, names only metrics the code exports, and the chart's copy of
            the alerts is the compose one
  versions  the Dockerfile, the chart and the compose file name Cargo.toml's version

Usage: validate_deploy.py [--bin BLOBCACHE] SECTION...
"""

import argparse
import asyncio
import contextlib
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/blobcache"
COMPOSE = ROOT / "docker-compose.yml"
# Kubernetes versions the chart is rendered for: its minimum, the first with
# StatefulSet PVC retention, the first with the preStop sleep action, the newest
# kubernetes-validate knows.
KUBE_VERSIONS = ["1.25.0", "1.27.0", "1.30.0", "1.37.0"]
# API groups of CRDs (Prometheus Operator, cert-manager): kubernetes-validate knows
# only core types, so their objects are checked by consistency() alone.
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")

failures = []


def ok(msg):
    print(f"  ok    {msg}")


def fail(msg):
    failures.append(msg)
    print(f"  FAIL  {msg}")


def check(cond, msg):
    (ok if cond else fail)(msg)
    return cond


def failures_of(fn):
    """Run checks as a negative control: the failures they record, kept out of the count and the output."""
    global failures
    saved, failures = failures, []
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fn()
        return failures
    finally:
        failures = saved


def cargo_version():
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def check_config(binary, env=None, config=None):
    """Run `blobcache check-config`; returns (ok, output)."""
    args = [binary, "check-config"] + (["--config", config] if config else [])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BLOBCACHE_", "AWS_"))}
    proc = subprocess.run(args, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


# ---------------------------------------------------------------- versions


def versions():
    print("versions")
    want = cargo_version()
    m = re.search(r"^ARG VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    check(m and m.group(1) == want, f"Dockerfile ARG VERSION is Cargo.toml's {want}")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    check(chart.get("appVersion") == want, f"Chart.yaml appVersion is {want}")
    compose = COMPOSE.read_text()
    found = set(re.findall(r"\$\{BLOBCACHE_VERSION:-([^}]+)\}", compose))
    check(found == {want}, f"docker-compose.yml defaults BLOBCACHE_VERSION to {want} (found {sorted(found)})")


# ---------------------------------------------------------------- compose


def image_env():
    """The ENV the Dockerfile sets for blobcache (a compose node inherits it)."""
    text = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"\b(BLOBCACHE_[A-Z_]+)=(\S+)", text))


def compose(binary):
    print("compose")
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    volumes = set((doc.get("volumes") or {}).keys())

    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        deps = list(deps) if isinstance(deps, (list, dict)) else []
        missing = [d for d in deps if d not in services]
        check(not missing, f"{name}: depends_on names existing services {missing or ''}")
        if not svc.get("profiles"):
            profiled = [d for d in deps if services.get(d, {}).get("profiles")]
            check(not profiled, f"{name}: starts without a profile, so depends on none that has one {profiled or ''}")
        for vol in svc.get("volumes") or []:
            src = (vol.split(":")[0] if isinstance(vol, str) else vol.get("source", ""))
            if src.startswith((".", "/")):
                check((ROOT / src).exists(), f"{name}: bind mount source {src} exists")
            else:
                check(src in volumes, f"{name}: volume {src} is declared")

    nodes = sorted(n for n, s in services.items() if str(s.get("image", "")).startswith("blobcache:"))
    check(len(nodes) == 3, f"three blobcache nodes: {nodes}")
    urls = {n: f"http://{n}:8080" for n in nodes}
    for n in nodes:
        env = services[n].get("environment") or {}
        peers = env.get("BLOBCACHE_PEERS", "").split(",")
        check(sorted(peers) == sorted(urls.values()), f"{n}: BLOBCACHE_PEERS lists every node")
        check(env.get("BLOBCACHE_ADVERTISE_URL") == urls[n], f"{n}: BLOBCACHE_ADVERTISE_URL is its own URL")
        grace = env.get("BLOBCACHE_SHUTDOWN_GRACE", "30s")
        stop = services[n].get("stop_grace_period", "10s")
        check(_seconds(stop) > _seconds(grace), f"{n}: stop_grace_period {stop} is longer than the shutdown grace {grace}")
        if binary:
            # The cluster flags go to a build that may not know them yet; the rest must be accepted.
            node_env = {**image_env(), **{k: str(v) for k, v in env.items()}}
            good, out = check_config(binary, env=node_env)
            check(good, f"{n}: its environment passes `blobcache check-config`" + ("" if good else f": {out}"))

    upstream = (ROOT / "deploy/nginx/blobcache-upstream.conf").read_text()
    servers = sorted(re.findall(r"^\s*server\s+([\w.-]+):8080\b", upstream, re.M))
    check(servers == nodes, f"nginx's node list (blobcache-upstream.conf) is the compose nodes: {servers}")
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = sorted(
        t.split(":")[0]
        for job in prom["scrape_configs"]
        if job["job_name"] == "blobcache"
        for sc in job["static_configs"]
        for t in sc["targets"]
    )
    check(targets == nodes, f"Prometheus scrapes every node: {targets}")

    minio_env = services["minio"]["environment"]
    endpoint = minio_env.get("MINIO_NOTIFY_WEBHOOK_ENDPOINT_BLOBCACHE", "")
    check(endpoint.endswith("/events/s3"), f"MinIO's webhook goes to POST /events/s3 ({endpoint})")
    init = " ".join(services["minio-init"]["command"])
    check("arn:minio:sqs::BLOBCACHE:webhook" in init, "minio-init subscribes the bucket to that webhook target")
    store = services[nodes[0]]["environment"]["BLOBCACHE_STORE"]
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    check(f"local/{bucket}" in init and f"--prefix {prefix}/" in init,
          f"minio-init creates the bucket {bucket} and filters events on {prefix}/")

    dash = json.loads((ROOT / "deploy/grafana/blobcache.json").read_text())
    check(dash.get("uid") == "blobcache", "the Grafana dashboard parses")
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    check(ds["datasources"][0]["url"] == "http://prometheus:9090", "Grafana's data source is the compose Prometheus")
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/blobcache.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    mounts = [v for v in services["grafana"]["volumes"] if "blobcache.json" in v]
    check(any(v.split(":")[1].startswith(path + "/") for v in mounts), f"the dashboard is mounted under {path}")


def _seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(text).strip())
    if not m:
        raise ValueError(f"cannot read the duration {text!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


# ---------------------------------------------------------------- monitoring

ALERTS = ROOT / "deploy/prometheus/alerts.yml"
CHART_ALERTS = CHART / "files/alerts.yml"
# Grafana's variables, replaced by something PromQL accepts before parsing.
GRAFANA_VARS = [("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"),
                ("${instance}", ".*"), ("$instance", ".*")]


def exported_metrics():
    """Metric names the code registers (blobcache_*); foyer's come from the library."""
    names = set()
    for path in (ROOT / "src").rglob("*.rs"):
        names.update(re.findall(r'"(blobcache_[a-z0-9_]+)"', path.read_text()))
    return names


def metric_names(expr):
    import promql_parser

    found = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)
        for attr in ("expr", "lhs", "rhs", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                visit(child)
        for child in getattr(node, "args", None) or []:
            visit(child)

    visit(promql_parser.parse(expr))
    return found


def monitoring():
    import promql_parser

    print("monitoring")
    check(ALERTS.read_bytes() == CHART_ALERTS.read_bytes(),
          f"{CHART_ALERTS.relative_to(ROOT)} is a copy of {ALERTS.relative_to(ROOT)}")
    exprs = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            exprs.append((f"alert {rule['alert']}", rule["expr"]))
    dash = json.loads((ROOT / "deploy/grafana/blobcache.json").read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            for var, value in GRAFANA_VARS:
                expr = expr.replace(var, value)
            exprs.append((f"dashboard panel {panel.get('title')!r}", expr))
    known = exported_metrics()
    for where, expr in exprs:
        try:
            names = metric_names(expr)
        except ValueError as e:
            fail(f"{where}: PromQL does not parse: {e}")
            continue
        unknown = sorted(
            n for n in names
            if n.startswith("blobcache_") and re.sub(r"_(bucket|sum|count)$", "", n) not in known and n not in known
        )
        check(not unknown, f"{where}: parses, metrics exported" + (f" (unknown: {unknown})" if unknown else ""))
    check(len(exprs) > 10, f"{len(exprs)} expressions checked")
    assert promql_parser  # imported above for its parse errors


# ---------------------------------------------------------------- chart


def merged_values(scenario):
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    over = yaml.safe_load(scenario.read_text()) or {}

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v
        return a

    return merge(base, over), over


def helm3_lint(chart_dir):
    import helm_sdkpy

    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart_dir)))
    errors = result.get("Errors") or []
    worst = max((m.get("Severity", 0) for m in result.get("Messages") or []), default=0)
    return not errors and worst < 3, result


def render(values, kube_version=None, name="blobcache", namespace="cache"):
    """Render the chart offline with Helm 4's engine. The public Chart.render has no
    Kubernetes version; the native call it wraps takes one (helm-python-sdk 0.2.2)."""
    import helm_python
    from helm_python import _native

    opts = {"name": name, "namespace": namespace, "is_install": True}
    if kube_version:
        opts["kube_version"] = f"v{kube_version}"
    with helm_python.Chart.load(str(CHART)) as chart:
        out = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    return json.loads(out)


def objects(rendered):
    objs = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs.append((path, doc))
    return objs


def chart(binary):
    import helm_python

    print("chart")
    scenarios = sorted((CHART / "ci").glob("*-values.yaml"))
    check(len(scenarios) >= 3, f"value sets in ci/: {[s.name for s in scenarios]}")
    work = Path(tempfile.mkdtemp(prefix="validate-chart."))
    try:
        # Helm 3's lint takes no values: lint a copy whose values.yaml is the merged set.
        good, _ = helm3_lint(CHART)
        check(good, "Helm 3 lint (helm-sdkpy), chart defaults")
        for scenario in scenarios:
            values, _ = merged_values(scenario)
            copy_dir = work / f"lint-{scenario.stem}" / "blobcache"
            shutil.copytree(CHART, copy_dir)
            (copy_dir / "values.yaml").write_text(yaml.safe_dump(values))
            good, result = helm3_lint(copy_dir)
            check(good, f"Helm 3 lint (helm-sdkpy), {scenario.name}" + ("" if good else f": {result}"))
        # The lint must be able to fail: a template that cannot render.
        broken = work / "broken" / "blobcache"
        shutil.copytree(CHART, broken)
        with open(broken / "templates/configmap.yaml", "a") as f:
            f.write('\n{{ include "blobcache.no-such-template" . }}\n')
        good, _ = helm3_lint(broken)
        check(not good, "Helm 3 lint reports a template that cannot render (negative control)")

        for scenario in scenarios:
            _, over = merged_values(scenario)
            report = helm_python.lint(str(CHART), over, strict=True)
            errs = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
            check(not errs, f"Helm 4 lint --strict (helm-python-sdk), {scenario.name}" + ("" if not errs else f": {errs}"))
            with helm_python.Chart.load(str(CHART)) as c:
                try:
                    c.validate_schema(over)
                    ok(f"values.schema.json accepts {scenario.name}")
                except Exception as e:  # noqa: BLE001 - any refusal is the finding
                    fail(f"values.schema.json refuses {scenario.name}: {e}")

        for scenario in scenarios:
            values, over = merged_values(scenario)
            for kv in KUBE_VERSIONS:
                rendered = render(over, kv)
                objs = objects(rendered)
                out = work / f"{scenario.stem}-{kv}"
                out.mkdir()
                core = [(p, o) for p, o in objs if not o["apiVersion"].startswith(CRD_GROUPS)]
                for i, (_, obj) in enumerate(core):
                    (out / f"{i:02d}-{obj['kind']}.yaml").write_text(yaml.safe_dump(obj))
                proc = subprocess.run(
                    [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet",
                     "-k", kv, *sorted(str(p) for p in out.iterdir())],
                    capture_output=True, text=True,
                )
                check(proc.returncode == 0,
                      f"{scenario.name} on Kubernetes {kv}: {len(core)} objects valid (kubernetes-validate --strict)"
                      + ("" if proc.returncode == 0 else "\n" + proc.stdout + proc.stderr))
            consistency(scenario.name, values, objects(render(over)), binary, work)

        # The security cross-checks must be able to fail: full-values.yaml's objects
        # with a tokens mount by subPath (never updated), probes without HTTPS, a
        # Certificate without the pods' names, and the peer CA read from tls.crt.
        values, over = merged_values(CHART / "ci/full-values.yaml")
        by_kind = {}
        for _, o in objects(render(over)):
            by_kind.setdefault(o["kind"], []).append(o)
        sts = by_kind["StatefulSet"][0]
        c = sts["spec"]["template"]["spec"]["containers"][0]
        for m in c["volumeMounts"]:
            if m["name"] == "tokens":
                m.update(mountPath=m["mountPath"] + "/tokens", subPath="tokens")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            c[probe]["httpGet"].pop("scheme", None)
        for cert in by_kind["Certificate"]:
            cert["spec"]["dnsNames"] = [n for n in cert["spec"]["dnsNames"] if not n.startswith("*.")]
        env = {e["name"]: e for e in c["env"]}
        env["BLOBCACHE_PEER_CA"]["value"] = env["BLOBCACHE_PEER_CA"]["value"].replace("ca.crt", "tls.crt")
        caught = failures_of(lambda: security("control:", values, by_kind, sts, c, env))
        expected = ["the tokens file", "the probes use HTTPS", "the Certificate covers", "BLOBCACHE_PEER_CA"]
        missed = [e for e in expected if not any(e in f for f in caught)]
        check(not missed, "the security cross-checks catch a subPath tokens mount, HTTP probes under TLS, a Certificate "
              "without the pods' names, the peer CA from tls.crt (negative control)" + (f": missed {missed}" if missed else ""))

        # Each refusal must give its own reason (a regular expression), not some other error first.
        base = {"config": {"store": "s3://b", "anonymous": "all"}}
        tokens = {"config": {"store": "s3://b"}, "auth": {"tokensSecret": "t", "peerTokenSecret": "t"}}
        tls = {**base, "tls": {"enabled": True, "secretName": "tls"}}
        refusals = {
            "no config.store": ({}, "config.store is required"),
            # values.schema.json refuses it before the template does.
            "a file:// store": ({"config": {"store": "file:///data/store"}}, r"must be an s3:// URL|pattern '\^s3://"),
            "a grace period the drain does not fit in": (
                {**base, "terminationGracePeriodSeconds": 30}, r"terminationGracePeriodSeconds \(30\) must be above"),
            "config.listen (the chart's own)": (
                {"config": {**base["config"], "listen": "0.0.0.0:9000"}}, "config.listen is set by the chart"),
            "an access key without its secret": ({**base, "s3": {"accessKeyId": "AKIA"}}, "s3.secretAccessKey is not"),
            "alerts without the ServiceMonitor": (
                {**base, "prometheusRule": {"enabled": True}}, "prometheusRule.enabled needs serviceMonitor.enabled"),
            "neither tokens nor config.anonymous=all": ({"config": {"store": "s3://b"}}, "no tokens: set auth.tokensSecret"),
            "config.anonymous=read without tokens": (
                {"config": {"store": "s3://b", "anonymous": "read"}}, "config.anonymous=read needs tokens"),
            "tokens without a peer token, three replicas": (
                {**tokens, "auth": {"tokensSecret": "t"}}, "auth.tokensSecret needs auth.peerTokenSecret"),
            "tokens without a peer token, one replica (the pods still have --peers)": (
                {**tokens, "replicaCount": 1, "auth": {"tokensSecret": "t"}}, "auth.tokensSecret needs auth.peerTokenSecret"),
            "a tokens file mounted by hand (config.tokens) without a peer token": (
                {"config": {"store": "s3://b", "tokens": "/etc/t/tokens"}}, "needs auth.peerTokenSecret"),
            "auth.tokensSecret and config.tokens at once": (
                {**tokens, "config": {"store": "s3://b", "tokens": "/x"}}, "auth.tokensSecret and config.tokens both"),
            "config.peer-token (a secret in a ConfigMap)": (
                {"config": {**tokens["config"], "peer-token": "p"}, "auth": tokens["auth"]},
                "config.peer-token is set by the chart"),
            "config.tls-cert (the chart's, from tls.secretName)": (
                {"config": {**base["config"], "tls-cert": "/c"}}, "config.tls-cert is set by the chart"),
            "tls.enabled without a Secret": ({**base, "tls": {"enabled": True}}, "tls.enabled needs tls.secretName"),
            "tls.clientAuth without tls.enabled": ({**base, "tls": {"clientAuth": True}}, "tls.clientAuth needs tls.enabled"),
            "tls.certManager without tls.enabled": (
                {**base, "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
                "tls.certManager.enabled needs tls.enabled"),
            "tls.certManager without an issuer": (
                {**base, "tls": {"enabled": True, "certManager": {"enabled": True}}}, "needs tls.certManager.issuerRef.name"),
            "a ServiceMonitor under tls.clientAuth without a client certificate": (
                {**tls, "tls": {**tls["tls"], "clientAuth": True}, "serviceMonitor": {"enabled": True}},
                "needs serviceMonitor.tlsConfig.cert"),
            "a ServiceMonitor with admin-only metrics and no token": (
                {"config": {**base["config"], "metrics-access": "admin"}, "serviceMonitor": {"enabled": True}},
                "needs serviceMonitor.tokenSecret"),
            "an unknown key under tls (values.schema.json)": (
                {**base, "tls": {"enable": True}}, "additional properties"),
            "a tokens Secret name Kubernetes would refuse (values.schema.json)": (
                {**tokens, "auth": {"tokensSecret": "Tokens_File", "peerTokenSecret": "t"}}, "auth/tokensSecret"),
        }
        for what, (values, reason) in refusals.items():
            try:
                render(values)
                fail(f"the chart refuses {what}")
            except Exception as e:  # noqa: BLE001 - a render error is what is expected
                why = re.search(reason, str(e))
                check(why, f"the chart refuses {what}" + ("" if why else f", but not for it: {e}"))
        # What it must accept: a peer token given by hand through extraEnv.
        by_hand = {"config": {"store": "s3://b", "tokens": "/etc/t/tokens"},
                   "extraEnv": [{"name": "BLOBCACHE_PEER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "p", "key": "k"}}}]}
        try:
            render(by_hand)
            ok("the chart accepts config.tokens with the peer token in extraEnv (files mounted by hand)")
        except Exception as e:  # noqa: BLE001
            fail(f"the chart accepts config.tokens with the peer token in extraEnv: {e}")
        readme_documents_values()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def consistency(scenario, values, objs, binary, work):
    """The rendered objects agree with each other and with the values."""
    by_kind = {}
    for _, o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    sts = by_kind["StatefulSet"][0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    selector = spec["selector"]["matchLabels"]
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    headless = services.get(spec["serviceName"])
    label = f"{scenario}:"
    check(headless is not None and headless["spec"].get("clusterIP") == "None"
          and headless["spec"].get("publishNotReadyAddresses") is True,
          f"{label} serviceName is a headless Service that publishes not-ready pods")
    for s in services.values():
        check(s["spec"]["selector"] == selector, f"{label} Service {s['metadata']['name']} selects the StatefulSet's pods")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        check(pdb["spec"]["selector"]["matchLabels"] == selector, f"{label} the PDB selects the StatefulSet's pods")
    for sm in by_kind.get("ServiceMonitor", []):
        want = sm["spec"]["selector"]["matchLabels"]
        check(headless and all(headless["metadata"]["labels"].get(k) == v for k, v in want.items()),
              f"{label} the ServiceMonitor selects the headless Service")
        check(headless and headless["metadata"]["labels"].get(sm["spec"].get("jobLabel")) == "blobcache",
              f"{label} the ServiceMonitor names the job \"blobcache\", as the alerts expect")
    rules = by_kind.get("PrometheusRule", [])
    check(len(rules) == int(values["prometheusRule"]["enabled"]), f"{label} a PrometheusRule exactly when enabled")
    for rule in rules:
        want = yaml.safe_load(CHART_ALERTS.read_text())["groups"]
        check(rule["spec"]["groups"] == want, f"{label} the PrometheusRule carries files/alerts.yml")

    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    adv = env.get("BLOBCACHE_ADVERTISE_URL", {}).get("value", "")
    check(re.match(r"https?://\$\(POD_NAME\)\.", adv) and f".{spec['serviceName']}." in adv,
          f"{label} each node advertises its stable DNS name ({adv})")
    peers = env.get("BLOBCACHE_PEERS", {}).get("value", "")
    if values["cluster"]["discovery"] == "dns":
        check(peers.startswith(f"dns://{spec['serviceName']}."), f"{label} peers from the headless Service ({peers})")
    else:
        check(len(peers.split(",")) == values["replicaCount"], f"{label} one peer URL per replica")
    grace = values["shutdownGraceSeconds"]
    check(pod["terminationGracePeriodSeconds"] > grace + values["preStopSleepSeconds"],
          f"{label} terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} > shutdown grace {grace}s + preStop")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    check(mounts.get("/data/spool") == "spool" and "spool" in claims,
          f"{label} the spool (/data/spool) is a persistent volume claim")
    check(("cache" in claims) == values["persistence"]["cache"]["enabled"],
          f"{label} the cache volume is a claim exactly when persistence.cache.enabled")
    probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    check(probes["livenessProbe"] == "/healthz" and probes["readinessProbe"] in ("/readyz", "/healthz"),
          f"{label} probes {probes}")
    if not values["s3"]["existingSecret"] and not values["s3"]["accessKeyId"]:
        check("AWS_ACCESS_KEY_ID" not in env, f"{label} no credentials Secret: the AWS chain (IRSA) is left to work")
    else:
        secret = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"]
        created = [s["metadata"]["name"] for s in by_kind.get("Secret", [])]
        check(secret == values["s3"]["existingSecret"] or secret in created,
              f"{label} the credentials Secret {secret} is given or created")

    cm = by_kind["ConfigMap"][0]
    toml_text = cm["data"]["blobcache.toml"]
    try:
        cfg = tomllib.loads(toml_text)
        check(cfg.get("data-dir") == "/data" and cfg.get("store") == values["config"]["store"],
              f"{label} blobcache.toml parses, data-dir /data, store {cfg.get('store')}")
    except tomllib.TOMLDecodeError as e:
        fail(f"{label} blobcache.toml does not parse: {e}")
    check(c["args"][-1] == "/etc/blobcache/" + next(iter(cm["data"])), f"{label} the node reads the ConfigMap's file")
    security(label, values, by_kind, sts, c, env)
    if binary:
        node_checks(label, values, sts, c, toml_text, binary, work / f"{scenario}.toml")


# Environment variables that name files from the TLS Secret, and its key each reads.
TLS_FILES = {"BLOBCACHE_TLS_CERT": "tls.crt", "BLOBCACHE_TLS_KEY": "tls.key", "BLOBCACHE_PEER_CA": "ca.crt"}
CLIENT_AUTH_FILES = {"BLOBCACHE_TLS_CLIENT_CA": "ca.crt", "BLOBCACHE_PEER_CERT": "tls.crt", "BLOBCACHE_PEER_KEY": "tls.key"}


def file_source(pod, container, path):
    """Where a file the container reads comes from: ((secret, key) or None, its volume mount or None)."""
    mounts = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts:
        return None, None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
    secret = volume.get("secret")
    if not secret:
        return None, mount
    items = secret.get("items")
    key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
    return (secret["secretName"], key), mount


def reloadable(mount):
    """Mounted read-only and whole: a subPath mount never sees the Secret's updates."""
    return bool(mount) and mount.get("readOnly") is True and "subPath" not in mount


def covered(name, patterns):
    """A DNS name matched by a certificate's names (a wildcard stands for one label)."""
    for p in patterns:
        if p == name or (p.startswith("*.") and name.split(".", 1)[-1] == p[2:] and "." in name):
            return True
    return False


def security(label, values, by_kind, sts, c, env):
    """Tokens, the peer token and TLS: mounted and set as the values say, https wherever TLS is on."""
    pod = sts["spec"]["template"]["spec"]
    auth, tls = values["auth"], values["tls"]
    name = sts["metadata"]["name"]

    if auth["tokensSecret"]:
        path = env.get("BLOBCACHE_TOKENS", {}).get("value", "")
        src, mount = file_source(pod, c, path) if path else (None, None)
        check(src == (auth["tokensSecret"], auth["tokensKey"]) and reloadable(mount),
              f"{label} the tokens file {path} is key {auth['tokensKey']} of Secret {auth['tokensSecret']}, "
              f"mounted read-only without subPath (updates reach the node)")
    else:
        check("BLOBCACHE_TOKENS" not in env and not any(v["name"] == "tokens" for v in pod.get("volumes", [])),
              f"{label} no tokens Secret: no tokens file mounted or set")
    ref = env.get("BLOBCACHE_PEER_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    if auth["peerTokenSecret"]:
        check(ref == {"name": auth["peerTokenSecret"], "key": auth["peerTokenKey"]},
              f"{label} BLOBCACHE_PEER_TOKEN from key {auth['peerTokenKey']} of Secret {auth['peerTokenSecret']}")
    else:
        check(ref is None, f"{label} no peer token Secret: BLOBCACHE_PEER_TOKEN not set")

    tls_secret = tls["secretName"] or (f"{name}-tls" if tls["certManager"]["enabled"] else "")
    want = {}
    if tls["enabled"]:
        want = dict(TLS_FILES, **(CLIENT_AUTH_FILES if tls["clientAuth"] else {}))
    for var in {**TLS_FILES, **CLIENT_AUTH_FILES}:
        if var in want:
            path = env.get(var, {}).get("value", "")
            src, mount = file_source(pod, c, path) if path else (None, None)
            check(src == (tls_secret, want[var]) and reloadable(mount),
                  f"{label} {var} {path} is key {want[var]} of Secret {tls_secret}, mounted read-only without subPath")
        else:
            check(var not in env, f"{label} {var} not set ({'no client auth' if tls['enabled'] else 'no TLS'})")

    scheme = "https" if tls["enabled"] else "http"
    adv = env.get("BLOBCACHE_ADVERTISE_URL", {}).get("value", "")
    peers = env.get("BLOBCACHE_PEERS", {}).get("value", "")
    peer_hosts = [] if peers.startswith("dns://") else [re.sub(r"^\w+://|:\d+$", "", u) for u in peers.split(",")]
    check(adv.startswith(f"{scheme}://") and all(u.startswith(f"{scheme}://") for u in peers.split(",") if "://" in u
                                                  and not u.startswith("dns://")),
          f"{label} the nodes advertise and list each other as {scheme}://")
    probes = [c[p]["httpGet"] for p in ("livenessProbe", "readinessProbe", "startupProbe") if c.get(p, {}).get("httpGet")]
    check(all(p.get("scheme", "HTTP") == scheme.upper() for p in probes), f"{label} the probes use {scheme.upper()}")
    for svc in by_kind["Service"]:
        protos = {p.get("appProtocol") for p in svc["spec"]["ports"]}
        check(protos == ({"https"} if tls["enabled"] else {None}),
              f"{label} Service {svc['metadata']['name']}: appProtocol {protos}")
    annotations = sts["spec"]["template"]["metadata"].get("annotations", {})
    if values["metrics"]["podAnnotations"]:
        check(annotations.get("prometheus.io/scheme") == scheme, f"{label} prometheus.io/scheme {scheme}")
    for ing in by_kind.get("Ingress", []):
        proto = (ing["metadata"].get("annotations") or {}).get("nginx.ingress.kubernetes.io/backend-protocol")
        check((proto == "HTTPS") == tls["enabled"], f"{label} the Ingress's backend protocol ({proto}) matches the nodes'")
    for test in [p for p in by_kind.get("Pod", []) if p["metadata"]["name"].endswith("-test")]:
        urls = [a for ct in test["spec"]["containers"] for a in ct["command"] if "://" in a]
        check(urls and all(u.startswith(f"{scheme}://") for u in urls), f"{label} helm test asks {scheme}:// URLs")

    # The name the nodes check each other against with DNS discovery (and the scrapes).
    headless_fqdn = adv.split("://", 1)[-1].split(":")[0].removeprefix("$(POD_NAME).")
    for sm in by_kind.get("ServiceMonitor", []):
        ep = sm["spec"]["endpoints"][0]
        check(ep.get("scheme") == scheme, f"{label} the ServiceMonitor scrapes {scheme}")
        tc = ep.get("tlsConfig", {})
        if tls["enabled"]:
            check(tc.get("ca", {}).get("secret") == {"name": tls_secret, "key": "ca.crt"}
                  and tc.get("serverName") == headless_fqdn,
                  f"{label} the ServiceMonitor checks the nodes' certificate: ca.crt of {tls_secret}, "
                  f"name {tc.get('serverName')}")
        if tls["clientAuth"]:
            check("cert" in tc and "keySecret" in tc, f"{label} the ServiceMonitor shows a client certificate (tls.clientAuth)")
        if values["config"].get("metrics-access") == "admin":
            cred = ep.get("authorization", {}).get("credentials", {})
            check(cred == {"name": values["serviceMonitor"]["tokenSecret"], "key": values["serviceMonitor"]["tokenKey"]},
                  f"{label} the ServiceMonitor sends a token (metrics-access admin)")

    certs = by_kind.get("Certificate", [])
    check(len(certs) == int(tls["enabled"] and tls["certManager"]["enabled"]),
          f"{label} a cert-manager Certificate exactly when tls.enabled and tls.certManager.enabled")
    for cert in certs:
        cs = cert["spec"]
        names = cs.get("dnsNames", [])
        check(cs["secretName"] == tls_secret, f"{label} the Certificate writes the Secret the pods mount ({tls_secret})")
        issuer = tls["certManager"]["issuerRef"]
        check(cs["issuerRef"] == issuer, f"{label} the Certificate's issuer is the values' {issuer}")
        client_fqdn = f"{name}.cache.svc.{values['cluster']['clusterDomain']}"
        need = dict.fromkeys([headless_fqdn, client_fqdn, name,
                              adv.split("://")[-1].split(":")[0].replace("$(POD_NAME)", f"{name}-0"),
                              *peer_hosts, *tls["certManager"]["extraDnsNames"]])
        missing = [n for n in need if not covered(n, names)]
        check(not missing, f"{label} the Certificate covers the headless Service, the pods, the client Service"
              + (f" (missing {missing})" if missing else ""))
        usages = set(cs.get("usages", []))
        check("server auth" in usages and ("client auth" in usages or not tls["clientAuth"]),
              f"{label} the Certificate's usages {sorted(usages)} serve and, with clientAuth, show it to peers")


def pod_env(container, pod_name):
    """A container's environment as the node sees it: $(VAR) expanded, stand-ins for Secret values."""
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), str(e["value"]))
        elif "fieldRef" in e.get("valueFrom", {}):
            out[e["name"]] = pod_name if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" else "stand-in"
        else:
            ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef") or {}
            out[e["name"]] = f"stand-in-for-{ref.get('name')}-{ref.get('key')}"
    return out


def node_checks(label, values, sts, c, toml_text, binary, path):
    """The node accepts what the chart renders (config file and pod -0's environment,
    as the image sets it up), and refuses it without what the chart insists on.
    check-config checks the file paths' consistency; it reads none of the files."""
    path.write_text(toml_text)
    env = {**image_env(), **pod_env(c, f"{sts['metadata']['name']}-0")}
    good, out = check_config(binary, env=env, config=str(path))
    check(good, f"{label} blobcache.toml with pod -0's environment passes `blobcache check-config`"
          + ("" if good else f": {out}"))
    if not good:
        return
    try:
        eff = tomllib.loads(out)
    except tomllib.TOMLDecodeError:
        eff = {}
    tokens = values["auth"]["tokensSecret"] or values["config"].get("tokens")
    want_anon = values["config"].get("anonymous") or ("none" if tokens else "all")
    tls = values["tls"]
    scheme = "https" if tls["enabled"] else "http"
    check(eff.get("anonymous") == want_anon and bool(eff.get("tokens")) == bool(tokens)
          and eff.get("advertise-url", "").startswith(f"{scheme}://")
          and bool(eff.get("tls-cert")) == tls["enabled"] and bool(eff.get("tls-client-ca")) == tls["clientAuth"]
          and ("peer-token" in eff) == bool(values["auth"]["peerTokenSecret"]),
          f"{label} the node's effective settings: anonymous {eff.get('anonymous')}, tokens {eff.get('tokens')}, "
          f"tls-cert {eff.get('tls-cert')}, tls-client-ca {eff.get('tls-client-ca')}, {eff.get('advertise-url')}")
    # Negative controls: what the chart requires, the node requires too.
    if tokens:
        bad = {k: v for k, v in env.items() if k != "BLOBCACHE_PEER_TOKEN"}
        good, out = check_config(binary, env=bad, config=str(path))
        check(not good and "--peer-token" in out,
              f"{label} the node refuses these tokens without the peer token, as the chart does")
    else:
        path.write_text(re.sub(r"(?m)^anonymous = .*\n", "", toml_text))
        good, out = check_config(binary, env=env, config=str(path))
        check(not good and "--anonymous all" in out,
              f"{label} the node refuses to run open without anonymous=all, as the chart does")
    if tls["enabled"]:
        flipped = {**env, "BLOBCACHE_ADVERTISE_URL": env["BLOBCACHE_ADVERTISE_URL"].replace("https://", "http://")}
        path.write_text(toml_text)
        good, out = check_config(binary, env=flipped, config=str(path))
        check(not good and "disagree" in out, f"{label} the node refuses an http:// advertised URL with TLS")


def readme_documents_values():
    """Every key of values.yaml is in the first column of the chart README's tables,
    and every key named there is in values.yaml. A cell may name a whole object
    (`resources`), a family (`ingress.*`), or siblings (`serviceMonitor.enabled`, `.interval`)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    named = set()
    for line in (CHART / "README.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        parent = ""
        for span in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if span.startswith("."):
                span = parent + span
            named.add(span)
            parent = span.rsplit(".", 1)[0] if "." in span else ""

    def leaves(d, prefix=""):
        for k, v in d.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                yield from leaves(v, path + ".")
            else:
                yield path

    def documented(path):
        return any(path == n or path.startswith(n + ".")
                   or (n.endswith(".*") and n != "config.*" and path.startswith(n[:-1])) for n in named)

    def exists(name):
        d = values
        for part in name.removesuffix(".*").split("."):
            if not isinstance(d, dict) or part not in d:
                return False
            d = d[part]
        return True

    undocumented = [p for p in leaves(values) if not documented(p)]
    check(not undocumented, "the chart README's table names every key of values.yaml"
          + (f" (not: {undocumented})" if undocumented else ""))
    stale = sorted(n for n in named if not exists(n))
    check(not stale, "every key the chart README's table names is in values.yaml" + (f" (not: {stale})" if stale else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="a blobcache binary for check-config (skipped without)")
    ap.add_argument("sections", nargs="+", choices=["versions", "compose", "monitoring", "chart"])
    args = ap.parse_args()
    if not args.bin:
        print("  skip  `blobcache check-config` of the compose environment and the chart's config (no binary)")
    for section in args.sections:
        {"versions": versions, "compose": lambda: compose(args.bin), "monitoring": monitoring,
         "chart": lambda: chart(args.bin)}[section]()
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
