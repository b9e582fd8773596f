#!/usr/bin/env bash
# How fast one node drains its Redis pub/sub connection (issue 15 item 5:
# does one pub/sub connection per Redis limit a node?).
#
# A Redis with no output-buffer limit for pub/sub clients, one Herald node,
# one WebSocket subscriber on CHANNELS channels (Node.js + ws from
# clients/js). `redis-benchmark` then PUBLISHes N ready-made Herald payloads
# (each channel's real epoch, offset 1: the node parses every message, looks
# the channel up in its hub and drops it as a duplicate, which is the whole
# per-message cost of the pub/sub read path) as fast as Redis takes them.
# Prints the publish rate, the rate at which the node drained them (from
# herald_broker_messages_received_total), and both processes' CPU.
#
# Knobs (env): N (1000000), CHANNELS (4), PAYLOAD (100 bytes of data), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"
N=${N:-1000000}
CHANNELS=${CHANNELS:-4}
PAYLOAD=${PAYLOAD:-100}
OUT=${OUT:-$ROOT/target/pubsub-drain}
mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

cargo build --release --locked -q -p herald
[ -d clients/js/node_modules/ws ] || (cd clients/js && npm ci --silent >&2)

R=$(free_port)
redis-server --port "$R" --bind 127.0.0.1 --save '' --appendonly no \
  --client-output-buffer-limit "pubsub 0 0 0" >"$OUT/redis.log" 2>&1 &
rpid=$!; pids+=("$rpid")
for _ in $(seq 50); do redis-cli -p "$R" ping >/dev/null 2>&1 && break; sleep 0.1; done
H=$(free_port); A=$(free_port)
"$ROOT/target/release/herald" serve --listen "127.0.0.1:$H" --admin-listen "127.0.0.1:$A" \
  --redis-url "redis://127.0.0.1:$R" --log warn >"$OUT/node.log" 2>&1 &
hpid=$!; pids+=("$hpid")
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

# The subscriber: exits non-zero if the node ever closes it.
cat >"$ROOT/clients/js/.drain-subscriber.mjs" <<EOF
import WebSocket from 'ws';
const ws = new WebSocket('ws://127.0.0.1:$H/ws');
ws.on('open', () => {
  ws.send(JSON.stringify({ op: 'connect' }));
  for (let i = 0; i < $CHANNELS; i++) ws.send(JSON.stringify({ op: 'subscribe', channel: 'drain-' + i, id: i + 1 }));
});
ws.on('message', () => {});
ws.on('close', (code) => { console.error('subscriber closed', code); process.exit(1); });
EOF
node "$ROOT/clients/js/.drain-subscriber.mjs" 2>"$OUT/subscriber.log" &
pids+=($!)
for _ in $(seq 100); do
  [ "$(redis-cli -p "$R" pubsub numsub "herald:{drain-$((CHANNELS - 1))}" | tail -1)" = 1 ] && break
  sleep 0.1
done
rm -f "$ROOT/clients/js/.drain-subscriber.mjs"

received() { curl -s "http://127.0.0.1:$A/metrics" | awk '/^herald_broker_messages_received_total /{print $2}'; }
before=$(received); c0=$(cpu_s "$hpid"); r0=$(cpu_s "$rpid"); t0=$(date +%s.%N)
per=$((N / CHANNELS))
for i in $(seq 0 $((CHANNELS - 1))); do
  e=$(redis-cli -p "$R" hget "herald:{drain-$i}:m" e)
  body=$(python3 -c "import sys; print('1 $e 0\n{\"op\":\"message\",\"channel\":\"drain-$i\",\"event\":\"e\",\"data\":\"' + 'x' * $PAYLOAD + '\"}')")
  redis-benchmark -p "$R" -n "$per" -c 2 -P 32 -q PUBLISH "herald:{drain-$i}" "$body" >/dev/null 2>&1 &
done
wait_pubs() { for j in $(jobs -p); do case " ${pids[*]} " in *" $j "*) ;; *) wait "$j";; esac; done; }
wait_pubs
t1=$(date +%s.%N)
target=$((before + per * CHANNELS))
for _ in $(seq 1200); do [ "$(received)" -ge "$target" ] && break; sleep 0.05; done
t2=$(date +%s.%N)
got=$(( $(received) - before ))
c1=$(cpu_s "$hpid"); r1=$(cpu_s "$rpid")
[ -s "$OUT/subscriber.log" ] && { cat "$OUT/subscriber.log" >&2; exit 1; }
python3 - <<EOF
n, t0, t1, t2 = $got, $t0, $t1, $t2
node, redis = $c1 - $c0, $r1 - $r0
print(f"{n} messages on {$CHANNELS} channels, {$PAYLOAD}-byte data, $(nproc) CPUs, $(date -u +%F)")
print(f"| published/s (redis-benchmark) | drained by the node/s | node CPU s | node CPU µs per message | node CPU share while draining | Redis CPU s |")
print(f"|---|---|---|---|---|---|")
print(f"| {n / (t1 - t0):,.0f} | {n / (t2 - t0):,.0f} | {node:.2f} | {node / n * 1e6:.2f} | {node / (t2 - t0):.0%} | {redis:.2f} |")
EOF
