#!/usr/bin/env bash
# Fan-out over Server-Sent Events against WebSocket (issue 17 item 6), in
# one run: CLIENTS subscribers on one channel, DELIVERIES deliveries/s for
# DURATION s, publications through the HTTP API of the first node, clients
# reading `--target herald` (protocol v1 on /ws) or `--target herald-sse`
# (GET /sse), on two topologies that both run for the whole run:
#   one   1 node, embedded broker;
#   two   2 nodes (--worker-threads 1) + Redis, clients round-robin.
# Each point is measured REPEATS times, alternating (one: ws, sse; two: ws,
# sse; then again), so noise hits both alike. For every run: delivered of
# expected, lost, p50/p99, and CPU per delivery of the servers (nodes and
# Redis, from /proc, the clients' set-up included) and of the load client
# (its own report, the publishing phase). Then the medians and the ratios
# SSE / WebSocket. Every process it starts is stopped on exit (also on
# Ctrl-C or failure).
#
# Knobs (env): CLIENTS (2000), DELIVERIES (100000), DURATION (10), REPEATS
# (2), TOPOLOGIES ("one two"), OUT (directory for JSON reports and logs).
# Binaries come from $CARGO_TARGET_DIR (default target/), built first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLIENTS=${CLIENTS:-2000}
DELIVERIES=${DELIVERIES:-100000}
DURATION=${DURATION:-10}
REPEATS=${REPEATS:-2}
TOPOLOGIES=${TOPOLOGIES:-"one two"}
OUT=${OUT:-$ROOT/target/sse-fanout}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
mkdir -p "$OUT"
rm -f "$OUT/points.tsv"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
wait_ready() {
  for _ in $(seq 100); do curl -fsS "$1/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$1 did not become ready" >&2; exit 1
}
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"
start_node() { # PORT [ARGS...]: starts a node; appends its pid to pids
  local p=$1; shift
  "$BIN/herald" serve --listen "127.0.0.1:$p" --max-connections-per-ip 0 \
    --connection-rate-per-ip 0 --log warn "$@" >"$OUT/node-$p.log" 2>&1 &
  pids+=($!)
}

echo "==> building release binaries" >&2
cargo build --release --locked -q -p herald -p herald-loadtest
LOAD=$BIN/herald-load

declare -A URLS SPIDS
for topo in $TOPOLOGIES; do
  case $topo in
    one)
      a=$(free_port)
      start_node "$a"
      SPIDS[one]=${pids[-1]}
      wait_ready "http://127.0.0.1:$a"
      URLS[one]="http://127.0.0.1:$a"
      ;;
    two)
      r=$(free_port)
      redis-server --port "$r" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
      pids+=($!); rp=$!
      for _ in $(seq 50); do redis-cli -p "$r" ping >/dev/null 2>&1 && break; sleep 0.1; done
      a=$(free_port); b=$(free_port)
      start_node "$a" --redis-url "redis://127.0.0.1:$r" --worker-threads 1
      n1=${pids[-1]}
      start_node "$b" --redis-url "redis://127.0.0.1:$r" --worker-threads 1
      SPIDS[two]="$n1 ${pids[-1]} $rp"
      wait_ready "http://127.0.0.1:$a"; wait_ready "http://127.0.0.1:$b"
      URLS[two]="http://127.0.0.1:$a http://127.0.0.1:$b"
      ;;
    *) echo "unknown topology $topo (one, two)" >&2; exit 2 ;;
  esac
done

# point TOPOLOGY TARGET REPEAT: one fan-out run, one line in points.tsv
point() {
  local topo=$1 target=$2 rep=$3 urls=() u json ok=1 c0 c1
  for u in ${URLS[$topo]}; do urls+=(--url "$u"); done
  json="$OUT/$topo-$target-$rep.json"
  echo "==> $topo, $target, run $rep" >&2
  # shellcheck disable=SC2086
  c0=$(cpu_of ${SPIDS[$topo]})
  "$LOAD" fanout -q --target "$target" "${urls[@]}" --clients "$CLIENTS" \
    --rate $((DELIVERIES / CLIENTS)) --duration "$DURATION" --allow-client-bound \
    --json "$json" >"$OUT/$topo-$target-$rep.txt" 2>&1 || ok=0
  # shellcheck disable=SC2086
  c1=$(cpu_of ${SPIDS[$topo]})
  python3 - "$json" "$topo" "$target" "$rep" "$ok" "$c0" "$c1" >>"$OUT/points.tsv" <<'EOF'
import json, sys
path, topo, target, rep, ok, c0, c1 = sys.argv[1:]
nan = float("nan")
try:
    r = json.load(open(path))
    d = r["delivery"]
    delivered, expected, lost = d["delivered"], d["expected"], d["lost"]
    p50, p99 = d["latency"]["p50_us"] / 1000, d["latency"]["p99_us"] / 1000
    client = r["cpu"]["cpu_seconds"] * 1e6 / delivered if delivered else nan
except Exception:
    delivered, expected, lost, p50, p99, client = 0, 0, 0, nan, nan, nan
server = (float(c1) - float(c0)) * 1e6 / delivered if delivered else nan
print("\t".join(map(str, [topo, target, rep, int(ok), delivered, expected, lost,
                          f"{p50:.2f}", f"{p99:.2f}", f"{server:.2f}", f"{client:.2f}"])))
EOF
}

for rep in $(seq "$REPEATS"); do
  for topo in $TOPOLOGIES; do
    for target in herald herald-sse; do point "$topo" "$target" "$rep"; done
  done
done

python3 - "$OUT/points.tsv" "$CLIENTS" "$DELIVERIES" "$DURATION" "$(nproc)" <<'EOF'
import statistics, sys, time
path, clients, deliveries, duration, cpus = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path)]
names = {"one": "1 node, embedded broker", "two": "2 nodes + Redis"}
wire = {"herald": "WebSocket", "herald-sse": "SSE"}
print(f"\nSSE fan-out: {clients} subscribers on one channel, {deliveries} deliveries/s for "
      f"{duration} s, {cpus} CPUs, {time.strftime('%Y-%m-%d', time.gmtime())}\n")
print("| topology | wire | run | delivered / expected | lost | p50 ms | p99 ms | server CPU µs/delivery | client CPU µs/delivery |")
print("|---|---|---|---|---|---|---|---|---|")
for t, tg, rep, ok, dl, ex, lost, p50, p99, s, c in rows:
    flag = "" if ok == "1" else " (failed)"
    print(f"| {names[t]} | {wire[tg]} | {rep} | {int(dl):,} / {int(ex):,}{flag} | {lost} | {p50} | {p99} | {s} | {c} |")
print("\nMedians, and SSE / WebSocket:\n")
print("| topology | wire | p50 ms | p99 ms | server CPU µs/delivery | client CPU µs/delivery |")
print("|---|---|---|---|---|---|")
med = {}
for t in dict.fromkeys(r[0] for r in rows):
    for tg in ("herald", "herald-sse"):
        pts = [r for r in rows if r[0] == t and r[1] == tg]
        if not pts:
            continue
        m = [statistics.median(float(r[i]) for r in pts) for i in (7, 8, 9, 10)]
        med[t, tg] = m
        print(f"| {names[t]} | {wire[tg]} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.2f} |")
    if (t, "herald") in med and (t, "herald-sse") in med:
        ws, sse = med[t, "herald"], med[t, "herald-sse"]
        ratio = [f"{b / a:.2f}×" if a else "n/a" for a, b in zip(ws, sse)]
        print(f"| {names[t]} | SSE / WebSocket | {' | '.join(ratio)} |")
EOF
