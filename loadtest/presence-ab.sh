#!/usr/bin/env bash
# What presence costs (issue 16 item 7), A/B in one run: the same 2 Herald
# nodes + Redis set-up with presence off, then on (`[channels] presence =
# true`, so every benchmark channel keeps one), measured twice, alternating
# (off, on, off, on):
#   - fan-out: CLIENTS subscribers on one channel, DELIVERIES deliveries/s
#     for DURATION s (p50/p99);
#   - idle: IDLE connections, each subscribed to one channel (resident KiB
#     per connection).
# Every process it starts is stopped on exit (also on Ctrl-C or failure).
#
# Knobs (env): CLIENTS (2000), DELIVERIES (100000), DURATION (10), IDLE
# (10000), ROUNDS (2), OUT (directory for JSON reports and configs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"
CLIENTS=${CLIENTS:-2000}
DELIVERIES=${DELIVERIES:-100000}
DURATION=${DURATION:-10}
IDLE=${IDLE:-10000}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-$ROOT/target/presence-ab}
mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
wait_ready() {
  for _ in $(seq 100); do curl -fsS "$1/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$1 did not become ready" >&2; exit 1
}

echo "==> building release binaries" >&2
cargo build --release --locked -q -p herald -p herald-loadtest
LOAD=$ROOT/target/release/herald-load
printf '' >"$OUT/off.toml"
printf '[presence]\nmax_clients = 100000\n[channels]\npresence = true\n' >"$OUT/on.toml"

# side NAME -> "p50 p99 kib" with fresh Redis and nodes
side() {
  local name=$1 r h1 h2 rp urls json idle_json
  r=$(free_port)
  redis-server --port "$r" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis-$name.log" 2>&1 &
  rp=$!; pids+=("$rp")
  for _ in $(seq 50); do redis-cli -p "$r" ping >/dev/null 2>&1 && break; sleep 0.1; done
  h1=$(free_port); h2=$(free_port)
  local node_pids=()
  for p in "$h1" "$h2"; do
    "$ROOT/target/release/herald" serve --config "$OUT/$name.toml" --listen "127.0.0.1:$p" \
      --redis-url "redis://127.0.0.1:$r" --worker-threads 1 --max-connections-per-ip 0 \
      --connection-rate-per-ip 0 --log warn >"$OUT/$name-$p.log" 2>&1 &
    node_pids+=($!); pids+=($!)
  done
  wait_ready "http://127.0.0.1:$h1"; wait_ready "http://127.0.0.1:$h2"
  urls=(--url "http://127.0.0.1:$h1" --url "http://127.0.0.1:$h2")
  json="$OUT/$name-fanout.json"
  "$LOAD" fanout -q "${urls[@]}" --clients "$CLIENTS" --rate $((DELIVERIES / CLIENTS)) \
    --duration "$DURATION" --allow-client-bound --json "$json" >&2 || true
  idle_json="$OUT/$name-idle.json"
  "$LOAD" idle -q "${urls[@]}" --clients "$IDLE" --hold 5 --json "$idle_json" >&2
  jq_py "$json" '"%.2f %.2f" % (r["delivery"]["latency"]["p50_us"]/1000, r["delivery"]["latency"]["p99_us"]/1000)' | tr '\n' ' '
  jq_py "$idle_json" '"%.1f" % (sum(m["kib_per_connection"] for m in r["memory"]) / len(r["memory"]))'
  for p in "${node_pids[@]}" "$rp"; do kill "$p" 2>/dev/null || true; done
  wait "${node_pids[@]}" "$rp" 2>/dev/null || true
}

rows=()
for round in $(seq "$ROUNDS"); do
  for name in off on; do
    echo "==> round $round, presence $name" >&2
    read -r p50 p99 kib < <(side "$name")
    rows+=("| $round | $name | $p50 | $p99 | $kib |")
  done
done

cat <<EOF

Presence A/B: $CLIENTS subscribers on one channel at $DELIVERIES deliveries/s, $IDLE idle connections, 2 nodes + Redis, $(nproc) CPUs, $(date -u +%F)
| round | presence | p50 ms | p99 ms | idle KiB per connection |
|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")
EOF
