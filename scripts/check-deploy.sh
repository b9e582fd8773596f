#!/usr/bin/env bash
# Checks the deployment files: the Helm chart (helm/herald), the compose stack
# and its configs (deploy/), and deploy/local/cluster.sh.
#
#   scripts/check-deploy.sh
#
# Needs python3; installs python3-venv, haproxy and prometheus (for promtool)
# with apt when missing, and keeps a virtualenv with helm-python-sdk (Helm v4
# as a library: lint, schema validation, offline rendering),
# kubernetes-validate and yamllint in target/deploy-venv.
# Rendered manifests are left in target/deploy-check/ for inspection.
# Environment: HERALD_BIN (default: the newer of target/release/herald and
# target/debug/herald; nothing is built) is started with each rendered pod's
# args, env and herald.toml to prove it accepts them; KUBE_VERSION (1.30.0).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-venv
reqs="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0"

. scripts/apt-install.sh
apt_install_missing python3-venv haproxy:haproxy promtool:prometheus

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.reqs" 2>/dev/null)" != "$reqs" ]; then
  echo "==> creating $venv ($reqs)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $reqs
  echo "$reqs" >"$venv/.reqs"
fi

exec "$venv/bin/python" - <<'PY'
import base64, json, os, re, selectors, signal, subprocess, sys, tempfile, tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate.utils as kv
import yaml

CHART = "helm/herald"
KUBE = os.environ.get("KUBE_VERSION", "1.30.0")
# The newer of the release and debug builds, unless HERALD_BIN names one.
HERALD = os.environ.get("HERALD_BIN") or max(
    (p for p in ("target/release/herald", "target/debug/herald") if os.access(p, os.X_OK)),
    key=lambda p: os.stat(p).st_mtime, default="target/release/herald")
OUT = Path("target/deploy-check")
# Settings newer than some herald builds; allowed in manifests before the binary has them.
PENDING_ENV = {"HERALD_JWT_SECRET", "HERALD_JWT_PUBLIC_KEY", "HERALD_JWKS_FILE", "HERALD_LOG_FORMAT"}
# Custom resources: no schema in kubernetes-validate; checked structurally below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

results = []


def report(name, ok, text=None):
    results.append(ok)
    print(f"{'OK  ' if ok else 'FAIL'} {name}" + ((" (" + text + ")" if ok else ": " + text) if text else ""))


def check(name, fn, *args):
    try:
        report(name, True, fn(*args))
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        report(name, False, str(e).strip().replace("\n", "\n       "))


def must(cond, msg):
    if not cond:
        raise AssertionError(msg)


# ---- what herald accepts: docs/configuration.md and the binary ------------

def doc_keys():
    """TOML keys per table from docs/configuration.md ('' = top level, 'broker.redis', 'namespaces.NAME', ...).

    A heading may name several tables sharing one key table: ### `[channels]` and `[namespaces.NAME]`."""
    keys, cur = {}, None
    for line in Path("docs/configuration.md").read_text().splitlines():
        if line.startswith("## "):
            cur = None
        elif line.startswith("### "):
            cur = [""] if line == "### Top level" else re.findall(r"`\[([\w.]+)\]`", line) or None
        elif cur is not None and (m := re.match(r'^\*\*`type = "(\w+)"`\*\*', line)):
            cur = ["broker." + m.group(1)]
        elif cur is not None and (m := re.match(r"^\| `(\w+)` \|", line)):
            for table in cur:
                keys.setdefault(table, set()).add(m.group(1))
    for t in ("", "server", "session", "broker.memory", "broker.redis", "auth", "channels", "namespaces.NAME"):
        must(keys.get(t), f"docs/configuration.md: no key table found for [{t or 'top level'}]")
    return keys


DOC = doc_keys()


def known_env():
    if os.access(HERALD, os.X_OK):
        out = subprocess.run([HERALD, "serve", "--help"], capture_output=True, text=True, check=True).stdout
        return set(re.findall(r"\[env: (HERALD_\w+)", out)) | {"HERALD_URL"}, HERALD
    text = Path("docs/configuration.md").read_text()
    return set(re.findall(r"`(HERALD_[A-Z_]+)`", text)), "docs/configuration.md"


ENV, ENV_SRC = known_env()


def check_env_names(names, where):
    bad = sorted(n for n in names if n.startswith("HERALD_") and n not in ENV | PENDING_ENV)
    must(not bad, f"{where}: unknown to herald ({ENV_SRC}): {', '.join(bad)}")
    pending = sorted(n for n in names if n in PENDING_ENV - ENV)
    return f"not yet in {ENV_SRC}: {', '.join(pending)}" if pending else None


# herald's rule for namespace names (docs/configuration.md, [namespaces.NAME]).
NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_toml_keys(doc, where):
    for k, v in doc.items():
        if k == "namespaces":
            must(isinstance(v, dict), f"{where}: namespaces must be a table of [namespaces.NAME] tables")
            for name, rule in v.items():
                must(NAMESPACE.fullmatch(name), f"{where}: namespace name {name!r}: use 1-64 of A-Z a-z 0-9 _ - .")
                must(isinstance(rule, dict), f"{where}: namespaces.{name} must be a table")
                extra = set(rule) - DOC["namespaces.NAME"]
                must(not extra, f"{where}: [namespaces.{name}] keys not in docs/configuration.md: {sorted(extra)}")
        elif isinstance(v, dict):
            must(k in {t.split(".")[0] for t in DOC if t}, f"{where}: table [{k}] not in docs/configuration.md")
            table = k
            if k == "broker":
                must(v.get("type") in ("memory", "redis"), f"{where}: broker.type must be memory or redis")
                table = "broker." + v["type"]
            extra = set(v) - DOC.get(table, set()) - ({"type"} if k == "broker" else set())
            must(not extra, f"{where}: [{k}] keys not in docs/configuration.md: {sorted(extra)}")
        else:
            must(k in DOC[""], f"{where}: top-level key {k!r} not in docs/configuration.md")


# A throwaway P-256 public key (its private half was discarded), to give the
# pod's JWT file variables something real to load.
TEST_PEM = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEChGFp8r4FtAO/0DrVyPBck4zh/cN
kZ0fbunLJBVAi4EfcVfO0okpaKxEffEvYvwFfH54R8RZvcikVgfMRG+zeQ==
-----END PUBLIC KEY-----
"""
# Stand-ins for secretKeyRef values, long enough for herald's rules.
DUMMY = {"HERALD_RECONNECT_SECRET": "check-reconnect-secret-0001", "HERALD_API_KEY": "check-api-key-00000001",
         "HERALD_JWT_SECRET": "check-jwt-secret-0123456789abcdef0123"}


def pod_run(toml_text, c, where):
    """Run the container's args and env against the real binary until it listens.

    Ports become ephemeral (admin on loopback), Redis points nowhere, secrets
    and key files get stand-ins."""
    if not os.access(HERALD, os.X_OK):
        return f"skipped starting herald: {HERALD} not built"
    with tempfile.TemporaryDirectory() as d:
        Path(d, "herald.toml").write_text(toml_text)
        Path(d, "public.pem").write_text(TEST_PEM)
        der = base64.b64decode("".join(TEST_PEM.strip().splitlines()[1:-1]))
        b64 = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()  # noqa: E731
        jwk = {"kty": "EC", "crv": "P-256", "kid": "check", "alg": "ES256", "x": b64(der[-64:-32]), "y": b64(der[-32:])}
        Path(d, "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        args = [re.sub(r"^--admin-listen=.*", "--admin-listen=127.0.0.2:0",
                       re.sub(r"^--listen=.*", "--listen=0.0.0.0:0", a.replace("/etc/herald/herald.toml", f"{d}/herald.toml")))
                for a in c["args"]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | {"RUST_BACKTRACE": "0"}
        left_out = []
        for e in c.get("env", []):
            n, src = e["name"], e.get("valueFrom", {})
            if n in PENDING_ENV - ENV:
                left_out.append(n)
            elif n == "HERALD_REDIS_URL":
                env[n] = "redis://127.0.0.1:1"
            elif "value" in e:
                env[n] = e["value"].replace("/etc/herald/jwt", d)
            else:
                env[n] = "herald-check-pod" if "fieldRef" in src else DUMMY[n]
        p = subprocess.Popen([HERALD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        try:
            sel = selectors.DefaultSelector()
            sel.register(p.stdout, selectors.EVENT_READ)
            line = p.stdout.readline() if sel.select(timeout=15) else ""
            if "herald listening" not in line:
                p.kill()
                err = p.communicate(timeout=5)[1].strip().splitlines()
                err = err[next((i for i, x in enumerate(err) if x.startswith("Error")), 0):][:6]
                newest = max(x.stat().st_mtime for x in Path("gateway/src").rglob("*.rs"))
                stale = f" [{HERALD} is older than gateway/src: rebuild it]" if Path(HERALD).stat().st_mtime < newest else ""
                raise AssertionError(f"{where}: herald did not start{stale}:\n" + "\n".join(err))
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            p.stdout.close()
            p.stderr.close()
    return f"{HERALD} starts with the pod's args and env" + (" less " + ", ".join(left_out) if left_out else "")


# ---- the chart -------------------------------------------------------------

def lint(values):
    rep = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE)
    bad = [m for m in rep["messages"] if m["severity"] >= 2] + [{"error": e} for e in rep["errors"]]
    must(not bad, "; ".join(f"{m.get('path', '')}: {m['error'].strip()}" for m in bad))
    return None


def render(values, name="herald", namespace="herald"):
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=name, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def k8s_validate(docs):
    crds = 0
    for d in docs:
        what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            kv.validate(d, KUBE, strict=True)
        except kv.SchemaNotFoundError:
            must((d["apiVersion"], d["kind"]) in CRDS, f"{what}: no schema for {d['apiVersion']} in Kubernetes {KUBE}")
            crds += 1
        except kv.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            raise AssertionError(f"{what}: {path}: {e.message}") from None
    crd_note = f"; {crds} custom resource(s) without schema, checked under references" if crds else ""
    return f"{len(docs) - crds} objects, strict, Kubernetes {KUBE}{crd_note}"


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def cross_refs(docs):
    """Selectors, port names and object names that must point at each other."""
    by = {}
    for d in docs:
        by.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deps = by["Deployment"]
    svcs = by.get("Service", {})
    pod_ports = {}
    for dep in deps.values():
        tpl = dep["spec"]["template"]
        must(labels_match(dep["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]),
             f"Deployment {dep['metadata']['name']}: selector does not match its pods")
        pod_ports[dep["metadata"]["name"]] = (
            tpl["metadata"]["labels"], {p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])})
    for s in svcs.values():
        hits = [ports for labels, ports in pod_ports.values() if labels_match(s["spec"]["selector"], labels)]
        must(len(hits) == 1, f"Service {s['metadata']['name']}: selects {len(hits)} Deployments")
        for p in s["spec"]["ports"]:
            must(p["targetPort"] in hits[0], f"Service {s['metadata']['name']}: no container port {p['targetPort']}")
    for h in by.get("HorizontalPodAutoscaler", {}).values():
        must(h["spec"]["scaleTargetRef"]["name"] in deps, "HPA: target Deployment missing")
        must("replicas" not in deps[h["spec"]["scaleTargetRef"]["name"]]["spec"], "HPA on a Deployment with fixed replicas")
    for p in by.get("PodDisruptionBudget", {}).values():
        must(any(labels_match(p["spec"]["selector"]["matchLabels"], l) for l, _ in pod_ports.values()), "PDB selects no pods")
    for i in by.get("Ingress", {}).values():
        for r in i["spec"]["rules"]:
            for path in r["http"]["paths"]:
                b = path["backend"]["service"]
                must(b["name"] in svcs, f"Ingress: no Service {b['name']}")
                must(b["port"]["name"] in {p["name"] for p in svcs[b["name"]]["spec"]["ports"]}, "Ingress: bad port")
    for n in by.get("NetworkPolicy", {}).values():
        sel = n["spec"]["podSelector"]["matchLabels"]
        hits = [ports for labels, ports in pod_ports.values() if labels_match(sel, labels)]
        must(len(hits) == 1, f"NetworkPolicy {n['metadata']['name']}: selects {len(hits)} Deployments")
        for rule in n["spec"]["ingress"]:
            for p in rule["ports"]:
                must(p["port"] in hits[0], f"NetworkPolicy {n['metadata']['name']}: no port {p['port']}")
    for m in by.get("ServiceMonitor", {}).values():
        spec = m["spec"]
        targets = [s for s in svcs.values() if labels_match(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
        must(len(targets) == 1, f"ServiceMonitor: selects {len(targets)} Services")
        names = {p["name"] for p in targets[0]["spec"]["ports"]}
        for e in spec["endpoints"]:
            must(e["port"] in names and e.get("path") == "/metrics", f"ServiceMonitor: bad endpoint {e}")
    cms = {c["metadata"]["name"]: c for c in by.get("ConfigMap", {}).values()}
    for dep in deps.values():
        spec = dep["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v and v["name"] == "config":
                must(v["configMap"]["name"] in cms, f"volume config: no ConfigMap {v['configMap']['name']}")
    return None


def herald_parts(docs):
    """The rendered herald.toml and the gateway container."""
    toml_text = next(d["data"]["herald.toml"] for d in docs if d["kind"] == "ConfigMap" and "herald.toml" in d.get("data", {}))
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["spec"]["template"]["spec"]["containers"][0]["name"] == "herald")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    must("--config=/etc/herald/herald.toml" in c["args"], "container args lack --config")
    return toml_text, c


def check_config(docs, label):
    toml_text, c = herald_parts(docs)
    check_toml_keys(tomllib.loads(toml_text), f"{label} herald.toml")
    env_note = check_env_names([e["name"] for e in c.get("env", [])], f"{label} Deployment env")
    return "; ".join(filter(None, ["keys match docs", pod_run(toml_text, c, label), env_note]))


# [auth] keys the chart sets from secrets.* and jwt.* (environment), never from config.auth.
AUTH_FROM_ENV = {"jwt_secret", "jwt_public_key", "jwks_file", "issuer", "audience"}


def schema_matches_docs():
    with helm.Chart.load(CHART) as chart:
        schema = chart.schema
    props = schema["properties"]["config"]["properties"]

    def resolve(node):
        ref = node.get("$ref", "")
        must(not ref or ref.startswith("#/definitions/"), f"values.schema.json: unexpected $ref {ref}")
        return schema["definitions"][ref.rsplit("/", 1)[1]] if ref else node

    def keys(node, where):
        node = resolve(node)
        must(node.get("additionalProperties") is False, f"values.schema.json: config.{where} lacks additionalProperties: false")
        return {f"{where}.{k}" for k in node["properties"]}

    tables = {"server", "session", "broker", "auth", "channels", "namespaces"}
    extra = set(props) - tables - DOC[""]
    for t in ("server", "session", "auth", "channels"):
        extra |= keys(props[t], t) - {f"{t}.{k}" for k in DOC[t]}
    extra |= keys(props["broker"], "broker") - {f"broker.{k}" for k in DOC["broker.memory"] | DOC["broker.redis"]}
    ns = props["namespaces"]
    must(ns.get("additionalProperties") is False and len(ns.get("patternProperties", {})) == 1,
         "values.schema.json: config.namespaces needs one patternProperties entry and additionalProperties: false")
    (pattern, rule), = ns["patternProperties"].items()
    for name, ok in (("chat", True), ("eu.orders", True), ("a" * 64, True), ("", False), ("a b", False), ("a" * 65, False)):
        must(bool(re.search(pattern, name)) == ok, f"values.schema.json: namespace pattern {pattern} {'rejects' if ok else 'accepts'} {name!r}")
    extra |= keys(rule, "namespaces.NAME") - {f"namespaces.NAME.{k}" for k in DOC["namespaces.NAME"]}
    must(not extra, f"values.schema.json allows config keys that docs/configuration.md does not list: {sorted(extra)}")
    owned = keys(props["auth"], "auth") & {f"auth.{k}" for k in AUTH_FROM_ENV}
    must(not owned, f"values.schema.json allows [auth] keys the chart sets from secrets.*/jwt.*: {sorted(owned)}")
    return None


def must_fail(values, error, expect):
    with helm.Chart.load(CHART) as chart:
        try:
            chart.render(values, name="herald", namespace="herald")
        except error as e:
            must(expect in str(e), f"failed, but not as expected: {e}")
            return None
    raise AssertionError(f"values {values} were accepted")


CASES = {
    "default": {},
    "production": yaml.safe_load(Path(CHART, "ci/production-values.yaml").read_text()),
    "bundled-redis": {
        "replicaCount": 2,
        "redis": {"bundled": {"enabled": True}},
        "secrets": {"reconnectSecrets": ["new-secret-0123456789", "old-secret-0123456789"],
                    "apiKeys": ["api-key-0123456789abcdef"]},
        "jwt": {"secret": "herald-jwt", "publicKeyKey": "public.pem"},
        "preStop": {"native": True},
        "networkPolicy": {"enabled": True},
        "config": {"server": {"allow_open": False}, "session": {"ping_interval": "20s", "max_payload": 131072},
                   "broker": {"history_size": 0, "timeout": "1s"}},
    },
    "hs256": {"secrets": {"jwtSecret": "jwt-secret-0123456789-0123456789ab"},
              "config": {"server": {"allow_open": False}, "auth": {"jwt_algorithm": "HS256", "max_connections_per_user": 0},
                         "namespaces": {"eu.orders": {"history_size": 0}}}},
}

OUT.mkdir(parents=True, exist_ok=True)
print(f"==> chart {CHART} (Helm SDK {helm.helm_sdk_version()}, Kubernetes {KUBE})")
for label, values in CASES.items():
    check(f"helm lint --strict [{label}]", lint, values)
    try:
        docs = render(values)
    except Exception as e:  # noqa: BLE001
        report(f"render [{label}]", False, str(e).strip())
        continue
    (OUT / f"{label}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    check(f"kubernetes-validate [{label}]", k8s_validate, docs)
    check(f"references [{label}]", cross_refs, docs)
    check(f"herald.toml, args and env [{label}]", check_config, docs, label)
check("values.schema.json config keys are documented", schema_matches_docs)
check("rejects replicaCount: \"three\"", must_fail, {"replicaCount": "three"}, helm.HelmValuesError, "/replicaCount")
check("rejects unknown config key", must_fail, {"config": {"session": {"ping_intervall": "1s"}}}, helm.HelmValuesError, "ping_intervall")
check("rejects subscribe: \"everyone\"", must_fail, {"config": {"channels": {"subscribe": "everyone"}}}, helm.HelmValuesError,
      "subscribe")
check("rejects an invalid namespace name", must_fail, {"config": {"namespaces": {"a b": {}}}}, helm.HelmValuesError, "a b")
check("rejects jwt_algorithm without its key source", must_fail, {"config": {"auth": {"jwt_algorithm": "ES256"}}},
      helm.HelmRenderError, "jwt_algorithm ES256 needs a public key")
check("rejects duration without unit", must_fail, {"config": {"broker": {"history_ttl": "300"}}}, helm.HelmValuesError, "history_ttl")
check("rejects a short HS256 secret", must_fail, {"secrets": {"jwtSecret": "too-short"}}, helm.HelmValuesError, "jwtSecret")
check("rejects two JWT key sources", must_fail, {"secrets": {"jwtSecret": "x" * 32}, "jwt": {"configMap": "k", "jwksKey": "j"}},
      helm.HelmRenderError, "one JWT key source")
check("rejects no auth without allow_open", must_fail, {"config": {"server": {"allow_open": False}}}, helm.HelmRenderError,
      "no client authentication")
check("rejects 3 replicas without Redis", must_fail, {"replicaCount": 3}, helm.HelmRenderError, "needs Redis")
check("rejects two Redis sources", must_fail, {"redis": {"url": "redis://r:6379", "bundled": {"enabled": True}}}, helm.HelmRenderError, "only one")

# ---- deploy/ ------------------------------------------------------------------

print("==> deploy/")


def yamllint():
    r = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-c", ".yamllint", "helm", "deploy"], capture_output=True, text=True)
    must(r.returncode == 0, r.stdout + r.stderr)
    n = len(subprocess.run([sys.executable, "-m", "yamllint", "-c", ".yamllint", "--list-files", "helm", "deploy"],
                           capture_output=True, text=True).stdout.split())
    return f"{n} files"


def compose():
    c = yaml.safe_load(Path("deploy/docker-compose.yml").read_text())
    svcs = c["services"]
    nodes = sorted(s for s in svcs if s.startswith("herald-"))
    must(len(nodes) == 3, f"expected 3 herald nodes, got {nodes}")
    for s in ("redis", "haproxy", "prometheus", "grafana"):
        must(s in svcs, f"service {s} missing")
    envs = [svcs[n]["environment"] for n in nodes]
    note = None
    for n, e in zip(nodes, envs):
        note = check_env_names(e, f"{n} environment") or note
        must(e.get("HERALD_NODE_ID") == n, f"{n}: HERALD_NODE_ID should be {n}")
    must(len({e["HERALD_RECONNECT_SECRET"] for e in envs}) == 1, "nodes must share HERALD_RECONNECT_SECRET")
    for name, s in svcs.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                must(Path("deploy", src).exists(), f"{name}: mount source {src} missing")
    cfg = Path("deploy/haproxy/haproxy.cfg").read_text()
    must(set(re.findall(r"^\s*server (\S+) ", cfg, re.M)) == set(nodes), "haproxy servers != herald services")
    must("GET /readyz" in cfg and "port 9090" in cfg and "balance leastconn" in cfg, "haproxy: readyz check on 9090 / leastconn")
    prom = yaml.safe_load(Path("deploy/prometheus/prometheus.yml").read_text())
    targets = {t for j in prom["scrape_configs"] if j["job_name"] == "herald" for sc in j["static_configs"] for t in sc["targets"]}
    must(targets == {f"{n}:9090" for n in nodes}, f"prometheus herald targets {targets}")
    ds = yaml.safe_load(Path("deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    must(ds["datasources"][0]["url"] == "http://prometheus:9090", "grafana datasource url")
    prov = yaml.safe_load(Path("deploy/grafana/provisioning/dashboards/herald.yaml").read_text())
    gmount = next(v.split(":")[1] for v in svcs["grafana"]["volumes"] if v.startswith("./grafana:"))
    must(prov["providers"][0]["options"]["path"] == gmount, "dashboard provider path != grafana mount")
    must(svcs["grafana"]["environment"]["GF_PATHS_PROVISIONING"] == gmount + "/provisioning", "GF_PATHS_PROVISIONING")
    dash = Path("deploy/grafana/herald.json")
    if dash.exists():
        json.loads(dash.read_text())
    else:
        note = ", ".join(filter(None, [note, "deploy/grafana/herald.json not written yet"]))
    return note


def haproxy_cfg():
    r = subprocess.run(["haproxy", "-c", "-f", "deploy/haproxy/haproxy.cfg"], capture_output=True, text=True)
    must(r.returncode == 0, r.stdout + r.stderr)
    return "valid; compose host names are resolved at run time"


def promtool():
    cfg = Path("deploy/prometheus/prometheus.yml")
    alerts = cfg.parent / "alerts.yml"
    if alerts.exists():
        r = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True)
        must(r.returncode == 0, r.stdout + r.stderr)
        return "with alerts.yml"
    with tempfile.TemporaryDirectory() as d:  # rule file not written yet: check the rest
        doc = yaml.safe_load(cfg.read_text())
        doc.pop("rule_files")
        Path(d, "prometheus.yml").write_text(yaml.safe_dump(doc))
        r = subprocess.run(["promtool", "check", "config", f"{d}/prometheus.yml"], capture_output=True, text=True)
        must(r.returncode == 0, r.stdout + r.stderr)
    return "deploy/prometheus/alerts.yml not written yet: checked without rule_files"


def dockerfile():
    t = Path("deploy/docker/Dockerfile").read_text()
    for want in ("FROM rust:1-bookworm AS build", "cargo build --release --locked -p herald", "FROM debian:bookworm-slim",
                 "USER 10001:10001", "EXPOSE 8080 9090", 'ENTRYPOINT ["herald"]'):
        must(want in t, f"Dockerfile lacks {want!r}")
    return "static checks only (no Docker daemon)"


def cluster_sh():
    r = subprocess.run(["bash", "-n", "deploy/local/cluster.sh"], capture_output=True, text=True)
    must(r.returncode == 0, r.stderr)
    return "bash -n"


check("yamllint -s (helm/, deploy/)", yamllint)
check("docker-compose.yml and its configs", compose)
check("haproxy -c deploy/haproxy/haproxy.cfg", haproxy_cfg)
check("promtool check config", promtool)
check("deploy/docker/Dockerfile", dockerfile)
check("deploy/local/cluster.sh syntax", cluster_sh)

passed, failed = results.count(True), results.count(False)
print(f"check-deploy: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
