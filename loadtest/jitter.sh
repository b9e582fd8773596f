#!/usr/bin/env bash
# Delivery under network jitter: `herald-load jitter` against
#   herald       2 Herald nodes + Redis,
#   herald-socketio  the same nodes' Socket.IO endpoint (clients recover with pid + offset),
#   socketio     2 Socket.IO peer nodes + Redis (classic adapter, no recovery),
#   socketio-csr the same with ADAPTER=streams CSR=1 (connection state recovery),
# one after the other, then a side-by-side table. Every process it starts is
# stopped on exit. Hold /tmp/herald-heavy.lock around it on a shared machine.
#
# Knobs (env): CLIENTS (10000), RATE (2 msg/s), DURATION (180s), DROP_EVERY
# (15s), DROP_JITTER (5s), OFFLINE (2s), OFFLINE_JITTER (500ms), GRACE (10s),
# TARGETS ("herald herald-socketio socketio socketio-csr"), NODE_THREADS (runtime threads per
# Herald node, 1), OUT (target/jitter), PEER_SRC (../shared/peers/socketio).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLIENTS=${CLIENTS:-10000}
RATE=${RATE:-2}
DURATION=${DURATION:-180s}
DROP_EVERY=${DROP_EVERY:-15s}
DROP_JITTER=${DROP_JITTER:-5s}
OFFLINE=${OFFLINE:-2s}
OFFLINE_JITTER=${OFFLINE_JITTER:-500ms}
GRACE=${GRACE:-10s}
TARGETS=${TARGETS:-"herald herald-socketio socketio socketio-csr"}
OUT=${OUT:-$ROOT/target/jitter}
PEER_SRC=${PEER_SRC:-$ROOT/../shared/peers/socketio}
mkdir -p "$OUT"

started=()
stop_all() {
  local p
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  started=()
}
trap stop_all EXIT INT TERM

# A listening port below the ephemeral range (the load client's sockets live
# there), free together with the next one.
pick_port() {
  local p _
  for _ in $(seq 200); do
    p=$((21000 + RANDOM % 8000))
    if ! ss -ltnH "( sport = :$p or sport = :$((p + 1)) )" | grep -q .; then
      echo "$p"
      return
    fi
  done
  echo "no free port" >&2
  return 1
}

redis_up() { # -> REDIS_URL; runs in the foreground, so it stops with the rest
  local port
  port=$(pick_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --loglevel warning >"$OUT/redis-$port.log" 2>&1 &
  started+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
  REDIS_URL=redis://127.0.0.1:$port
}

# Resident memory and CPU seconds of the server processes, after a run.
server_usage() { # NAME PID...
  local name=$1
  shift
  ps -o pid=,rss=,time=,comm= -p "$(IFS=,; echo "$*")" | sed "s/^/  $name /" >&2 || true
}

load() { # NAME TARGET URL...
  local name=$1 target=$2 urls=() u
  shift 2
  for u in "$@"; do urls+=(--url "$u"); done
  echo "==> $name: $CLIENTS clients, $RATE msg/s for $DURATION, drop every $DROP_EVERY ± $DROP_JITTER, offline $OFFLINE ± $OFFLINE_JITTER" >&2
  "$ROOT/target/release/herald-load" jitter -q --target "$target" "${urls[@]}" \
    --clients "$CLIENTS" --rate "$RATE" --duration "$DURATION" \
    --drop-every "$DROP_EVERY" --drop-jitter "$DROP_JITTER" \
    --offline "$OFFLINE" --offline-jitter "$OFFLINE_JITTER" --grace "$GRACE" \
    --allow-client-bound --json "$OUT/$name.json" | tee "$OUT/$name.txt" >&2 || true
}

run_herald() { # NAME TARGET: herald (protocol v1) or herald-socketio (its /socket.io/)
  local name=$1 target=$2
  redis_up
  local ports=() pids=() p
  for _ in 1 2; do
    p=$(pick_port)
    # One runtime thread per node, as each Node.js process of the peer has.
    "$ROOT/target/release/herald" serve --listen "127.0.0.1:$p" --redis-url "$REDIS_URL" \
      --worker-threads "${NODE_THREADS:-1}" --max-connections-per-ip 0 \
      --connection-rate-per-ip 0 --log warn >"$OUT/herald-$p.log" 2>&1 &
    started+=($!)
    pids+=($!)
    ports+=("$p")
    until curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1; do sleep 0.1; done
  done
  load "$name" "$target" "http://127.0.0.1:${ports[0]}" "http://127.0.0.1:${ports[1]}"
  server_usage "$name" "${pids[@]}" "${started[0]}"
  stop_all
}

run_socketio() { # NAME, extra env for the peer
  local name=$1 peer=$OUT/socketio-peer base log
  shift
  if [ ! -d "$peer/node_modules" ]; then
    mkdir -p "$peer"
    cp "$PEER_SRC"/*.js "$PEER_SRC"/package.json "$peer/"
    chmod u+w "$peer"/*
    (cd "$peer" && npm install --no-audit --no-fund --silent >&2)
  fi
  redis_up
  base=$(pick_port)
  log=$OUT/$name-peer.log
  (cd "$peer" && exec env "$@" NODES=2 BASE_PORT="$base" REDIS_URL="$REDIS_URL" node server.js) >"$log" 2>&1 &
  started+=($!)
  until grep -q READY "$log"; do sleep 0.1; done
  load "$name" socketio "http://127.0.0.1:$base" "http://127.0.0.1:$((base + 1))"
  # READY <pid>:<port> ...: the node processes.
  server_usage "$name" $(grep READY "$log" | tr ' ' '\n' | grep : | cut -d: -f1) "${started[0]}"
  stop_all
}

for t in $TARGETS; do
  case $t in
    herald) run_herald herald herald ;;
    herald-socketio) run_herald herald-socketio herald-socketio ;;
    socketio) run_socketio socketio ADAPTER=pubsub ;;
    socketio-csr) run_socketio socketio-csr ADAPTER=streams CSR=1 ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

python3 - "$OUT" $TARGETS <<'EOF'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
rows = [("delivered %", lambda r, j, d: "%.3f" % j["delivered_percent"]),
        ("lost", lambda r, j, d: d["lost"]),
        ("duplicates", lambda r, j, d: d["duplicated"]),
        ("reordered", lambda r, j, d: d["out_of_order"]),
        ("unrecovered reconnects", lambda r, j, d: j["unrecovered"]),
        ("drops / reconnects", lambda r, j, d: "%d / %d" % (j["drops"], j["reconnects"])),
        ("failed reconnect attempts", lambda r, j, d: j["reconnect_failures"]),
        ("latency p50 (ms)", lambda r, j, d: "%.1f" % (d["latency"]["p50_us"] / 1e3)),
        ("latency p99 (ms)", lambda r, j, d: "%.1f" % (d["latency"]["p99_us"] / 1e3)),
        ("latency max (ms)", lambda r, j, d: "%.1f" % (d["latency"]["max_us"] / 1e3)),
        ("load client CPU (% of cores)", lambda r, j, d: "%.0f" % r["cpu"]["percent_of_cores"])]
reports = {}
for n in names:
    try:
        reports[n] = json.load(open(f"{out}/{n}.json"))
    except OSError:
        pass
print("| | " + " | ".join(reports) + " |")
print("|---|" + "---|" * len(reports))
for title, f in rows:
    print(f"| {title} | " + " | ".join(str(f(r, r["jitter"], r["delivery"])) for r in reports.values()) + " |")
EOF
