#!/usr/bin/env bash
# Runs Herald's whole test suite: formatting, lints, unit and integration
# tests, alert rules, the Helm chart and deploy files, and a bounded fuzz run.
# Installs what it needs (redis-server, curl, haproxy, chromium, Node.js,
# npm, python3 and openssl for the test fixtures; the check scripts install
# prometheus, haproxy, python3-venv) with apt
# when missing, and the JS packages with `npm ci` from their lockfiles.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/apt-install.sh
apt_install_missing redis-server:redis-server curl:curl haproxy:haproxy \
  chromium:chromium node:nodejs npm:npm python3:python3 openssl:openssl
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "Node.js $(node --version) is too old: the JS client and its tests need Node.js 20 or later" >&2
  exit 1
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked "$@"
echo "==> JS client: types, committed bundle, unit, Node and Chromium tests (clients/js)"
cargo build --bin herald --locked
npm ci --prefix examples/socketio-chat --no-audit --no-fund --loglevel=error
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm run check)
echo "==> alert rules and dashboard queries (promtool)"
scripts/check-alerts.sh
echo "==> Helm chart and deploy files"
scripts/check-deploy.sh

# Bounded fuzzing of the frame reader, command parser, PROXY header reader and Socket.IO packets:
# 13 s per target (FUZZ_SECONDS=N changes it, 0 skips).
fuzz_secs="${FUZZ_SECONDS:-13}"
if [ "$fuzz_secs" != 0 ]; then
  scripts/fuzz.sh "$fuzz_secs"
fi
