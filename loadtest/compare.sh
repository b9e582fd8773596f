#!/usr/bin/env bash
# Herald vs Socket.IO (+ Redis adapter) on this machine, in one run, with the
# same load client (herald-load):
#   1. a Redis, 2 Herald nodes: fanout rate sweep, fanout at a common rate, idle
#      memory, first over protocol v1 (/ws), then with Socket.IO clients on
#      Herald's /socket.io/ (`--target herald-socketio`);
#   2. a Redis, 2 Socket.IO nodes: the same three measurements;
#   3. a side-by-side table with the ratios.
# Every process it starts is stopped on exit (also on Ctrl-C or failure).
#
# Knobs (env): CLIENTS (2000), DURATION (10 s per step), PAYLOAD (100 B),
# SWEEP (deliveries/s steps), COMMON (deliveries/s for the p50/p99 row),
# IDLE (idle connections per server, 10000), OUT (directory for JSON reports),
# NODE_THREADS (runtime threads per Herald node, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CLIENTS=${CLIENTS:-2000}
DURATION=${DURATION:-10}
PAYLOAD=${PAYLOAD:-100}
SWEEP=${SWEEP:-"50000 100000 150000 200000 250000 300000 400000"}
COMMON=${COMMON:-50000}
IDLE=${IDLE:-10000}
OUT=${OUT:-$ROOT/target/compare}
PEER_SRC=${PEER_SRC:-$ROOT/../shared/peers/socketio}
mkdir -p "$OUT"

pids=()
redis_pidfiles=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "${redis_pidfiles[@]}"; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Ports below the ephemeral range, so the load client's own connections
# (and their TIME_WAIT leftovers) never collide with a server's.
free_port() {
  local p
  while p=$((20000 + RANDOM % 9000)); ss -tanH | awk '{print $4}' | grep -qE ":($p|$((p + 1)))$"; do :; done
  echo "$p"
}
jq_py() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"; }

start_redis() { # -> sets REDIS_PORT
  REDIS_PORT=$(free_port)
  local pidfile="$OUT/redis-$REDIS_PORT.pid"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$pidfile" >/dev/null
  redis_pidfiles+=("$pidfile")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}
stop_redis() { kill "$(cat "$OUT/redis-$REDIS_PORT.pid")" 2>/dev/null || true; }

echo "==> building release binaries" >&2
cargo build --release --locked -q -p herald -p herald-loadtest
LOAD=$ROOT/target/release/herald-load

# sweep NAME TARGET URL... : runs fanout at each SWEEP step until p99 >= 50 ms,
# a loss, or an error; prints "best_deliveries_per_s"
sweep() {
  local name=$1 target=$2; shift 2
  local urls=() u
  for u in "$@"; do urls+=(--url "$u"); done
  local best=0 d
  for d in $SWEEP; do
    local rate=$(( d / CLIENTS )) json="$OUT/$name-fanout-$d.json"
    echo "==> $name fanout: $CLIENTS clients, $rate msg/s (~$d deliveries/s)" >&2
    if ! "$LOAD" fanout -q --target "$target" "${urls[@]}" --clients "$CLIENTS" --rate "$rate" \
        --duration "$DURATION" --payload "$PAYLOAD" --allow-client-bound --json "$json" >&2; then
      echo "    stopped: not everything was delivered" >&2; break
    fi
    local p99 got
    p99=$(jq_py "$json" 'r["delivery"]["latency"]["p99_us"]')
    got=$(jq_py "$json" 'int(r["delivery"]["deliveries_per_second"])')
    if [ "$p99" -ge 50000 ]; then echo "    stopped: p99 ${p99} us >= 50 ms" >&2; break; fi
    best=$got
  done
  echo "$best"
}

common() { # NAME TARGET URL... -> "p50_ms p99_ms"
  local name=$1 target=$2; shift 2
  local urls=() u
  for u in "$@"; do urls+=(--url "$u"); done
  local json="$OUT/$name-common.json"
  "$LOAD" fanout -q --target "$target" "${urls[@]}" --clients "$CLIENTS" --rate $(( COMMON / CLIENTS )) \
    --duration "$DURATION" --payload "$PAYLOAD" --allow-client-bound --json "$json" >&2 || true
  jq_py "$json" '"%.2f %.2f" % (r["delivery"]["latency"]["p50_us"]/1000, r["delivery"]["latency"]["p99_us"]/1000)'
}

idle() { # NAME TARGET URL... -> KiB per connection (mean over nodes)
  local name=$1 target=$2; shift 2
  local urls=() u
  for u in "$@"; do urls+=(--url "$u"); done
  local json="$OUT/$name-idle.json"
  "$LOAD" idle -q --target "$target" "${urls[@]}" --clients "$IDLE" --hold 5 --json "$json" >&2
  jq_py "$json" '"%.1f" % (sum(m["kib_per_connection"] for m in r["memory"]) / len(r["memory"]))'
}

wait_ready() { # URL
  for _ in $(seq 100); do curl -fsS "$1/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$1 did not become ready" >&2; exit 1
}

# ---- Herald -------------------------------------------------------------
# herald_part NAME TARGET: a fresh Redis and 2 fresh nodes (idle memory is
# measured from a clean start), the three measurements, then stop them all.
# Sets ${NAME}_best, ${NAME}_p50, ${NAME}_p99, ${NAME}_idle.
herald_part() {
  local name=$1 target=$2 p
  start_redis
  H1=$(free_port); H2=$(free_port)
  for p in "$H1" "$H2"; do
    # One runtime thread per node, like each single-threaded Node.js process of the peer.
    # The load client opens thousands of connections from few addresses: no per-address limits.
    "$ROOT/target/release/herald" serve --listen "127.0.0.1:$p" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
      --worker-threads "${NODE_THREADS:-1}" --max-connections-per-ip 0 --connection-rate-per-ip 0 \
      --log warn >"$OUT/$name-$p.log" 2>&1 &
    pids+=($!)
  done
  wait_ready "http://127.0.0.1:$H1"; wait_ready "http://127.0.0.1:$H2"
  local urls=("http://127.0.0.1:$H1" "http://127.0.0.1:$H2") best p50 p99 kib
  best=$(sweep "$name" "$target" "${urls[@]}")
  read -r p50 p99 < <(common "$name" "$target" "${urls[@]}")
  kib=$(idle "$name" "$target" "${urls[@]}")
  printf -v "${name//-/_}_best" %s "$best"
  printf -v "${name//-/_}_p50" %s "$p50"
  printf -v "${name//-/_}_p99" %s "$p99"
  printf -v "${name//-/_}_idle" %s "$kib"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  stop_redis
}
herald_part herald herald
h_best=$herald_best h_p50=$herald_p50 h_p99=$herald_p99 h_idle=$herald_idle
herald_part herald-sio herald-socketio
x_best=$herald_sio_best x_p50=$herald_sio_p50 x_p99=$herald_sio_p99 x_idle=$herald_sio_idle

# ---- Socket.IO ----------------------------------------------------------
PEER=$OUT/socketio-peer
if [ ! -d "$PEER/node_modules" ]; then
  echo "==> installing the Socket.IO peer (npm)" >&2
  mkdir -p "$PEER"
  cp "$PEER_SRC"/*.js "$PEER_SRC"/package.json "$PEER/"
  chmod u+w "$PEER"/*
  (cd "$PEER" && npm install --no-audit --no-fund --silent >&2)
fi
start_redis
S1=$(free_port); S2=$((S1 + 1))  # free_port checked both
(cd "$PEER" && NODES=2 BASE_PORT=$S1 REDIS_URL="redis://127.0.0.1:$REDIS_PORT" exec node server.js \
  >"$OUT/socketio.log" 2>&1) &
pids+=($!)
for _ in $(seq 100); do grep -q READY "$OUT/socketio.log" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$OUT/socketio.log" || { echo "Socket.IO peer did not start" >&2; cat "$OUT/socketio.log" >&2; exit 1; }
SURLS=("http://127.0.0.1:$S1" "http://127.0.0.1:$S2")
s_best=$(sweep socketio socketio "${SURLS[@]}")
read -r s_p50 s_p99 < <(common socketio socketio "${SURLS[@]}")
s_idle=$(idle socketio socketio "${SURLS[@]}")

# ---- Table --------------------------------------------------------------
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('%.1fx' % (a/b) if b else 'n/a')" "$1" "$2"; }
cat <<EOF

Herald vs Socket.IO, 2 nodes + Redis each, $CLIENTS subscribers, ${PAYLOAD}-byte payloads, $(date -u +%F)
| measure | Herald (v1) | Herald (Socket.IO clients) | Socket.IO | Herald v1 vs Socket.IO | Herald-as-Socket.IO vs Socket.IO |
|---|---|---|---|---|---|
| sustained deliveries/s (all delivered, p99 < 50 ms) | $h_best | $x_best | $s_best | $(ratio "$h_best" "$s_best") | $(ratio "$x_best" "$s_best") |
| p50 at $COMMON deliveries/s (ms) | $h_p50 | $x_p50 | $s_p50 | $(ratio "$s_p50" "$h_p50") lower | $(ratio "$s_p50" "$x_p50") lower |
| p99 at $COMMON deliveries/s (ms) | $h_p99 | $x_p99 | $s_p99 | $(ratio "$s_p99" "$h_p99") lower | $(ratio "$s_p99" "$x_p99") lower |
| resident KiB per idle connection ($IDLE) | $h_idle | $x_idle | $s_idle | $(ratio "$s_idle" "$h_idle") less | $(ratio "$s_idle" "$x_idle") less |
EOF
echo "(JSON reports in $OUT)"
