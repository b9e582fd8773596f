#!/usr/bin/env bash
# Validates the Prometheus alert rules: `promtool check rules` on
# deploy/prometheus/alerts.yml and the unit tests in alerts_test.yml; also
# parses every query of the Grafana dashboard (deploy/grafana/herald.json).
# Installs the Debian package `prometheus` (which ships promtool) with apt when
# promtool is missing; only the promtool binary is used, no server is started.
# python3 (to read the dashboard) is installed too when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/apt-install.sh
apt_install_missing promtool:prometheus python3:python3

echo "==> promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml
echo "==> promtool test rules deploy/prometheus/alerts_test.yml"
promtool test rules deploy/prometheus/alerts_test.yml
echo "==> promtool check rules on the queries of deploy/grafana/herald.json"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Each panel query becomes a recording rule (JSON is YAML), template variables as ".*".
python3 - deploy/grafana/herald.json >"$tmp/dashboard.rules.json" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
rules = [{"record": f"dashboard:query{i}", "expr": re.sub(r"\$\w+", ".*", e)} for i, e in enumerate(exprs)]
print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
PY
promtool check rules "$tmp/dashboard.rules.json"
