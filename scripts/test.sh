#!/usr/bin/env bash
# Runs Herald's whole test suite: formatting, lints, unit and integration
# tests, alert rules, the Helm chart and deploy files, and a bounded fuzz run.
# Installs what it needs (redis-server, curl, haproxy; the check scripts install
# prometheus, haproxy, python3-venv) with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/apt-install.sh
apt_install_missing redis-server:redis-server curl:curl haproxy:haproxy

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked "$@"
echo "==> alert rules and dashboard queries (promtool)"
scripts/check-alerts.sh
echo "==> Helm chart and deploy files"
scripts/check-deploy.sh

# Bounded fuzzing of the frame reader, command parser and PROXY header reader:
# 13 s per target (FUZZ_SECONDS=N changes it, 0 skips).
fuzz_secs="${FUZZ_SECONDS:-13}"
if [ "$fuzz_secs" != 0 ]; then
  scripts/fuzz.sh "$fuzz_secs"
fi
