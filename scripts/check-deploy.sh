#!/usr/bin/env bash
# Checks the deployment files: the Helm chart (helm/herald), the compose stack
# and its configs (deploy/), and deploy/local/cluster.sh. The checks are the
# Python package scripts/deploycheck (its __init__.py lists the modules).
#
#   scripts/check-deploy.sh [--allow-skip]
#
# Needs python3; installs python3-venv, haproxy and prometheus (for promtool)
# with apt when missing, and keeps a virtualenv with helm-python-sdk (Helm v4
# as a library: lint, schema validation, offline rendering),
# kubernetes-validate, yamllint and ruff in target/deploy-venv.
# Steps: ruff (lint and format check) on the package, the full check, then
# the package's own tests (scripts/deploycheck/tests). Rendered manifests are
# left in target/deploy-check/ for inspection.
#
# The full check starts the herald binary with each rendered pod's args, env
# and herald.toml (and only that env). The binary is DEPLOYCHECK_BIN, or the
# newer of release/herald and debug/herald under CARGO_TARGET_DIR (default
# target/); nothing is built. A check that cannot run prints SKIP and fails
# the run unless --allow-skip is given (CI always has the binary).
# KUBE_VERSION picks the Kubernetes schemas (default 1.30.0).
set -euo pipefail
# Relative to where the caller stands, as cargo reads it.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR=$(realpath -m -- "$CARGO_TARGET_DIR")
  export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."

venv=target/deploy-venv
reqs="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0 ruff==0.17.6"

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

# Caches go under target/, not into the source tree.
export PYTHONDONTWRITEBYTECODE=1 RUFF_CACHE_DIR=target/ruff-cache
echo "==> ruff check, ruff format --check (scripts/deploycheck)"
"$venv/bin/ruff" check --quiet scripts/deploycheck
"$venv/bin/ruff" format --check --quiet scripts/deploycheck

export PYTHONPATH=scripts
"$venv/bin/python" -m deploycheck "$@"

echo "==> deploycheck tests"
"$venv/bin/python" -m unittest discover -s scripts/deploycheck/tests -t scripts
