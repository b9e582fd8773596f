#!/usr/bin/env bash
# Runs the cargo-fuzz targets (frame reader, command parser, PROXY header, Socket.IO packets) for a bounded
# time each, starting from the corpus in fuzz/corpus/.
# Needs a nightly toolchain; installs cargo-fuzz when it is missing.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "==> fuzz: no nightly toolchain; skipped (cargo test still replays fuzz/corpus)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  if ! cargo install --locked --quiet cargo-fuzz; then
    # A tooling problem, not a finding: the corpus replay in cargo test still ran.
    echo "==> fuzz: cannot install cargo-fuzz; skipped" >&2
    exit 0
  fi
fi
# New interesting inputs go to a scratch directory unless FUZZ_KEEP=1 (then
# into the repo's corpus; minimise it afterwards with `cargo fuzz cmin`).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in frames command proxy socketio; do
  echo "==> fuzz $target for ${secs}s"
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then dirs=("corpus/$target"); else dirs=("$scratch/$target" "corpus/$target"); fi
  mkdir -p "$scratch/$target"
  cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
    -max_total_time="$secs" -max_len=4096 -print_final_stats=1 2>&1 |
    grep -E '^(Done|stat::number_of_executed_units|==[0-9]+== ERROR|SUMMARY)' || true
  # libFuzzer exits non-zero on a crash and leaves the input in artifacts/.
  if compgen -G "artifacts/$target/*" >/dev/null; then
    echo "fuzz $target found a crash: fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
