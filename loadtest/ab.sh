#!/usr/bin/env bash
# A/B of two Herald builds on this machine, in one run, with one load client:
#   for each round, for each build (alternating, so drift hits both alike):
#     a Redis and 2 nodes (--worker-threads 1): fanout at each RATES step;
#     one node on the embedded broker: idle KiB per connection.
# Prints one table row per build, measure and round: p50/p99, deliveries/s
# and the nodes' + Redis's CPU µs per delivery (from /proc, set-up
# included), or for idle the node's RSS and the kernel's socket memory per
# connection (slab + TCP buffers, machine-wide, so both loopback ends). Every process it
# starts is stopped on exit (also on Ctrl-C or failure).
#
#   loadtest/ab.sh BEFORE_BIN AFTER_BIN
#
# Knobs (env): CLIENTS (2000), DURATION (10 s per step), PAYLOAD (100 B),
# RATES (deliveries/s steps, "100000 400000"), IDLE (connections, 10000; 0 skips),
# ROUNDS (2), LOAD (herald-load binary, target/release/herald-load),
# OUT (directory for JSON reports, target/ab), BEFORE_ARGS / AFTER_ARGS
# (extra `serve` flags per build, e.g. settings only the newer one knows).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ $# -eq 2 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN" >&2; exit 2; }
BINS=("$1" "$2")
NAMES=(before after)
EXTRA=("${BEFORE_ARGS:-}" "${AFTER_ARGS:-}")

CLIENTS=${CLIENTS:-2000}
DURATION=${DURATION:-10}
PAYLOAD=${PAYLOAD:-100}
RATES=${RATES:-"100000 400000"}
IDLE=${IDLE:-10000}
ROUNDS=${ROUNDS:-2}
LOAD=${LOAD:-$ROOT/target/release/herald-load}
OUT=${OUT:-$ROOT/target/ab}
mkdir -p "$OUT"

pids=()
redis_pidfile=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$redis_pidfile" ] && [ -f "$redis_pidfile" ] && kill "$(cat "$redis_pidfile")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"
wait_ready() {
  for _ in $(seq 100); do curl -fsS "$1/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$1 did not become ready" >&2; exit 1
}
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  if [ -n "$redis_pidfile" ]; then kill "$(cat "$redis_pidfile")" 2>/dev/null || true; redis_pidfile=""; fi
}
node() { # BIN PORT EXTRA ARGS...
  local bin=$1 port=$2 extra=$3; shift 3
  # shellcheck disable=SC2086 # EXTRA is a list of flags
  "$bin" serve --listen "127.0.0.1:$port" --worker-threads 1 --log warn \
    --max-connections-per-ip 0 --connection-rate-per-ip 0 $extra "$@" >"$OUT/node-$port.log" 2>&1 &
  pids+=($!)
  wait_ready "http://127.0.0.1:$port"
}

echo "| round | build | measure | p50 ms | p99 ms | delivered/s | CPU µs/delivery | RSS KiB/conn | kernel KiB/conn (slab + buffers) |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for i in 0 1; do
    bin=${BINS[$i]} name=${NAMES[$i]} extra=${EXTRA[$i]}
    rport=$(free_port)
    redis_pidfile="$OUT/redis-$rport.pid"
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --pidfile "$redis_pidfile" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    p1=$(free_port); p2=$(free_port)
    node "$bin" "$p1" "$extra" --redis-url "redis://127.0.0.1:$rport"
    node "$bin" "$p2" "$extra" --redis-url "redis://127.0.0.1:$rport"
    for d in $RATES; do
      json="$OUT/$name-r$round-fanout-$d.json"
      # shellcheck disable=SC2086
      c0=$(cpu_of "${pids[@]}" "$(cat "$redis_pidfile")")
      "$LOAD" fanout -q --url "http://127.0.0.1:$p1" --url "http://127.0.0.1:$p2" \
        --clients "$CLIENTS" --rate $((d / CLIENTS)) --duration "$DURATION" --payload "$PAYLOAD" \
        --allow-client-bound --json "$json" >&2 || echo "  (fanout reported loss or error)" >&2
      c1=$(cpu_of "${pids[@]}" "$(cat "$redis_pidfile")")
      jq_py "$json" '"| '"$round"' | '"$name"' | fanout '"$d"'/s | %.1f | %.1f | %d | %.2f | | |" % (r["delivery"]["latency"]["p50_us"]/1000, r["delivery"]["latency"]["p99_us"]/1000, r["delivery"]["deliveries_per_second"], ('"$c1"' - '"$c0"') * 1e6 / max(r["delivery"]["delivered"], 1))'
    done
    stop_all
    [ "$IDLE" -gt 0 ] || continue
    p=$(free_port)
    node "$bin" "$p" "$extra"
    json="$OUT/$name-r$round-idle.json"
    "$LOAD" idle -q --url "http://127.0.0.1:$p" --clients "$IDLE" --connect-rate 2000 --hold 5 --json "$json" >&2
    jq_py "$json" '"| '"$round"' | '"$name"' | idle '"$IDLE"' | | | | | %.2f | %s |" % (sum(m["kib_per_connection"] for m in r["memory"]) / len(r["memory"]), "%.1f + %.1f" % (r["kernel"]["slab_kib"], r["kernel"]["tcp_buffer_kib"]) if r.get("kernel") else "n/a")'
    stop_all
  done
done
echo "(JSON reports in $OUT)"
