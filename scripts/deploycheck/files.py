"""File presence: every file the chart and deploy/ are made of must exist.

Each entry is a file the other checks read (or Helm loads); a missing one
fails here by name. Templates in the chart that are not listed fail too, so
the list stays complete and a deleted template cannot go unnoticed."""

from pathlib import Path

from .runner import must

CHART = Path("helm/herald")
CHART_FILES = [
    ".helmignore",
    "Chart.yaml",
    "values.yaml",
    "values.schema.json",
    "ci/production-values.yaml",
    "ci/cluster-tls-values.yaml",
    "ci/shards-values.yaml",
]
TEMPLATES = [
    "NOTES.txt",
    "_helpers.tpl",
    "configmap.yaml",
    "deployment.yaml",
    "hpa.yaml",
    "ingress.yaml",
    "networkpolicy.yaml",
    "pdb.yaml",
    "redis.yaml",
    "secret.yaml",
    "service.yaml",
    "servicemonitor.yaml",
]
DEPLOY_FILES = [
    "deploy/docker-compose.yml",
    "deploy/docker/Dockerfile",
    "deploy/haproxy/haproxy.cfg",
    "deploy/prometheus/prometheus.yml",
    "deploy/prometheus/alerts.yml",
    "deploy/grafana/herald.json",
    "deploy/grafana/provisioning/datasources/prometheus.yaml",
    "deploy/grafana/provisioning/dashboards/herald.yaml",
    "deploy/local/cluster.sh",
]
# Read by the checks themselves: yamllint settings and the documented config keys.
OTHER_FILES = [".yamllint", "docs/configuration.md"]


def required():
    chart = [CHART / f for f in CHART_FILES] + [CHART / "templates" / t for t in TEMPLATES]
    return [str(p) for p in chart] + DEPLOY_FILES + OTHER_FILES


def present():
    want = required()
    missing = [p for p in want if not Path(p).is_file()]
    templates = CHART / "templates"
    unlisted = sorted(str(p) for p in templates.iterdir() if p.name not in TEMPLATES) if templates.is_dir() else []
    problems = [f"missing: {', '.join(missing)}"] if missing else []
    if unlisted:
        problems.append(f"not listed in deploycheck/files.py TEMPLATES: {', '.join(unlisted)}")
    must(not problems, "\n".join(problems))
    return f"{len(want)} files"
