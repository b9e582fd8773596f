"""The compose stack (deploy/docker-compose.yml) and the configs it mounts:
node environments, HAProxy (`haproxy -c` and its server list), Prometheus
(`promtool check config` with alerts.yml, scrape targets) and Grafana
(datasource, dashboard provider, herald.json)."""

import json
import re
import subprocess
from pathlib import Path

import yaml

from .accepts import check_env_names
from .runner import must, read_text

ALERTS = Path("deploy/prometheus/alerts.yml")
DASHBOARD = Path("deploy/grafana/herald.json")


def compose(ctx):
    c = yaml.safe_load(read_text("deploy/docker-compose.yml"))
    svcs = c["services"]
    nodes = sorted(s for s in svcs if s.startswith("herald-"))
    must(len(nodes) == 3, f"expected 3 herald nodes, got {nodes}")
    for s in ("redis", "haproxy", "prometheus", "grafana"):
        must(s in svcs, f"service {s} missing")
    envs = [svcs[n]["environment"] for n in nodes]
    for n, e in zip(nodes, envs, strict=True):
        check_env_names(ctx, e, f"{n} environment")
        must(e.get("HERALD_NODE_ID") == n, f"{n}: HERALD_NODE_ID should be {n}")
    must(len({e["HERALD_RECONNECT_SECRET"] for e in envs}) == 1, "nodes must share HERALD_RECONNECT_SECRET")
    for name, s in svcs.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                must(Path("deploy", src).exists(), f"{name}: mount source deploy/{src} missing")
    cfg = read_text("deploy/haproxy/haproxy.cfg")
    must(set(re.findall(r"^\s*server (\S+) ", cfg, re.M)) == set(nodes), "haproxy servers != herald services")
    must(
        "GET /readyz" in cfg and "port 9090" in cfg and "balance leastconn" in cfg,
        "haproxy: readyz check on 9090 / leastconn",
    )
    prom = yaml.safe_load(read_text("deploy/prometheus/prometheus.yml"))
    jobs = [j for j in prom["scrape_configs"] if j["job_name"] == "herald"]
    targets = {t for j in jobs for sc in j["static_configs"] for t in sc["targets"]}
    must(targets == {f"{n}:9090" for n in nodes}, f"prometheus herald targets {targets}")
    ds = yaml.safe_load(read_text("deploy/grafana/provisioning/datasources/prometheus.yaml"))
    must(ds["datasources"][0]["url"] == "http://prometheus:9090", "grafana datasource url")
    prov = yaml.safe_load(read_text("deploy/grafana/provisioning/dashboards/herald.yaml"))
    gmount = next(v.split(":")[1] for v in svcs["grafana"]["volumes"] if v.startswith("./grafana:"))
    must(prov["providers"][0]["options"]["path"] == gmount, "dashboard provider path != grafana mount")
    must(svcs["grafana"]["environment"]["GF_PATHS_PROVISIONING"] == gmount + "/provisioning", "GF_PATHS_PROVISIONING")
    dash = json.loads(read_text(DASHBOARD))
    must(dash.get("panels"), f"{DASHBOARD}: no panels")
    return None


def haproxy_cfg():
    r = subprocess.run(["haproxy", "-c", "-f", "deploy/haproxy/haproxy.cfg"], capture_output=True, text=True)
    must(r.returncode == 0, r.stdout + r.stderr)
    return "valid; compose host names are resolved at run time"


def promtool():
    cfg = Path("deploy/prometheus/prometheus.yml")
    rules = yaml.safe_load(read_text(cfg)).get("rule_files") or []
    must(ALERTS.name in rules, f"{cfg}: rule_files does not list {ALERTS.name}")
    read_text(ALERTS)
    r = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True)
    must(r.returncode == 0, r.stdout + r.stderr)
    return f"with {ALERTS.name}"
