"""deploycheck: offline checks of Herald's deployment files.

Run as ``python -m deploycheck`` (scripts/check-deploy.sh sets up the venv and
does so). Modules, in the order they run:

- files: every file the chart and deploy/ are made of is present
- chart: Helm lint, rendering, values.schema.json against the docs, rejected values
- kube: rendered objects against the Kubernetes schemas and each other
- herald: rendered herald.toml and env against what herald accepts; the real
  binary started as each rendered pod
- compose: docker-compose.yml, HAProxy, Prometheus and Grafana configs
- static: yamllint, the Dockerfile, deploy/local/cluster.sh

Shared pieces: runner (OK/FAIL/SKIP lines and counts), context (paths,
Kubernetes version, the binary), accepts (what herald accepts, from
docs/configuration.md and the binary).
"""
