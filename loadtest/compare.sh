#!/usr/bin/env bash
# Herald against the machine's floor and the peers, in one run, with the same
# load client (herald-load) and the same shape: 2 processes (+ Redis) each.
#   floor        two `herald-load floor` processes forwarding to each other
#                (no Herald code path: the best any server could do here);
#   herald       a Redis and 2 Herald nodes (protocol v1 on /ws);
#   herald-sio   the same, with Socket.IO clients on Herald's /socket.io/;
#   socketio     Socket.IO 4.8 + Redis adapter (../shared/peers/socketio);
#   socketioxide socketioxide + its Redis adapter (../shared/peers/socketioxide).
# Every server set runs for the whole run; each fan-out point (SUBSCRIBERS on
# one channel, a deliveries/s RATE) is measured REPEATS times, interleaved
# (every server at a rate, then the next rate, then again), so noise hits
# all of them alike. For every run it records p50/p99, whether everything
# arrived, and the CPU seconds of the server processes and their Redis (from
# /proc) per delivery (the clients' set-up included). Idle memory per
# connection is measured first, on the fresh servers. Then a table of
# medians (with the spread) and ratios to the floor, from points every
# server shares, so a ratio is never "n/a" because a sweep stopped early.
# Every process it starts is stopped on exit (also on Ctrl-C or failure).
#
# Knobs (env): SERVERS ("floor herald herald-sio socketio socketioxide"),
# RATES (deliveries/s, "50000 100000 200000 400000"), SUBSCRIBERS (2000),
# REPEATS (3), DURATION (10 s per point), PAYLOAD (100 B), IDLE (10000),
# BIG (subscribers of the second pass, 10000; 0 skips it), BIG_RATES
# ("50000"), OUT (directory for JSON reports), REPORT_ONLY (1: print the
# tables again from OUT's points, measuring nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SERVERS=${SERVERS:-"floor herald herald-sio socketio socketioxide"}
RATES=${RATES:-"50000 100000 200000 400000"}
SUBSCRIBERS=${SUBSCRIBERS:-2000}
REPEATS=${REPEATS:-3}
DURATION=${DURATION:-10}
PAYLOAD=${PAYLOAD:-100}
IDLE=${IDLE:-10000}
BIG=${BIG:-10000}
BIG_RATES=${BIG_RATES:-"50000"}
OUT=${OUT:-$ROOT/target/compare}
PEERS=${PEERS:-$ROOT/../shared/peers}
REPORT_ONLY=${REPORT_ONLY:-0}
mkdir -p "$OUT"
[ "$REPORT_ONLY" = 1 ] || rm -f "$OUT"/points.tsv "$OUT"/idle.tsv

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_http() { # URL
  for _ in $(seq 150); do curl -fsS "$1" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$1 did not answer" >&2; exit 1
}
# The process and all its descendants.
tree() { local p=$1 c; echo "$p"; for c in $(pgrep -P "$p" || true); do tree "$c"; done; }
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"

start_redis() { # -> REDIS_PORT, appends the pid to pids
  REDIS_PORT=$(free_port 1)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  pids+=($!)
  REDIS_PID=$!
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}

if [ "$REPORT_ONLY" != 1 ]; then
echo "==> building release binaries" >&2
cargo build --release --locked -q -p herald -p herald-loadtest
LOAD=$ROOT/target/release/herald-load

declare -A URLS TARGET SPIDS
# start_server NAME: starts its processes; sets URLS[NAME], TARGET[NAME], SPIDS[NAME] (server + Redis pids)
start_server() {
  local name=$1 a b
  case $name in
    floor)
      a=$(free_port 1); b=$(free_port 1)
      "$LOAD" floor --listen "127.0.0.1:$a" --peer "http://127.0.0.1:$b" --worker-threads 1 >/dev/null 2>&1 &
      local p1=$!
      "$LOAD" floor --listen "127.0.0.1:$b" --peer "http://127.0.0.1:$a" --worker-threads 1 >/dev/null 2>&1 &
      local p2=$!
      pids+=("$p1" "$p2")
      wait_http "http://127.0.0.1:$a/readyz"; wait_http "http://127.0.0.1:$b/readyz"
      URLS[$name]="http://127.0.0.1:$a http://127.0.0.1:$b"; TARGET[$name]=herald; SPIDS[$name]="$p1 $p2"
      ;;
    herald | herald-sio)
      start_redis
      a=$(free_port 1); b=$(free_port 1)
      local ps=() p
      for p in "$a" "$b"; do
        # One runtime thread per node, like each single-threaded Node.js process of the peer.
        "$ROOT/target/release/herald" serve --listen "127.0.0.1:$p" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
          --worker-threads 1 --max-connections-per-ip 0 --connection-rate-per-ip 0 \
          --log warn >"$OUT/$name-$p.log" 2>&1 &
        ps+=($!); pids+=($!)
      done
      wait_http "http://127.0.0.1:$a/readyz"; wait_http "http://127.0.0.1:$b/readyz"
      URLS[$name]="http://127.0.0.1:$a http://127.0.0.1:$b"
      TARGET[$name]=$([ "$name" = herald ] && echo herald || echo herald-socketio)
      SPIDS[$name]="${ps[*]} $REDIS_PID"
      ;;
    socketio)
      local dir=$OUT/socketio-peer
      if [ ! -d "$dir/node_modules" ]; then
        echo "==> installing the Socket.IO peer (npm)" >&2
        mkdir -p "$dir"; cp "$PEERS/socketio"/*.js "$PEERS/socketio"/package.json "$dir/"; chmod u+w "$dir"/*
        (cd "$dir" && npm install --no-audit --no-fund --silent >&2)
      fi
      start_redis
      a=$(free_port 1)
      (cd "$dir" && NODES=2 BASE_PORT=$a REDIS_URL="redis://127.0.0.1:$REDIS_PORT" exec node server.js >"$OUT/socketio.log" 2>&1) &
      local p=$!; pids+=("$p")
      for _ in $(seq 150); do grep -q READY "$OUT/socketio.log" 2>/dev/null && break; sleep 0.1; done
      URLS[$name]="http://127.0.0.1:$a http://127.0.0.1:$((a + 1))"; TARGET[$name]=socketio
      SPIDS[$name]="$(tree "$p" | tr '\n' ' ') $REDIS_PID"
      ;;
    socketioxide)
      local src=/tmp/herald-sioxide-src tgt=/tmp/herald-sioxide-target
      if [ ! -x "$tgt/release/sioxide-peer" ]; then
        echo "==> building the socketioxide peer (~3 min cold)" >&2
        rm -rf "$src"; cp -r "$PEERS/socketioxide" "$src"; chmod -R u+w "$src"
        CARGO_TARGET_DIR=$tgt cargo build --release --locked -q --manifest-path "$src/Cargo.toml" >&2
      fi
      start_redis
      a=$(free_port 1); b=$(free_port 1)
      PORT=$a WORKERS=1 REDIS_URL="redis://127.0.0.1:$REDIS_PORT" "$tgt/release/sioxide-peer" >"$OUT/sx-$a.log" 2>&1 &
      local p1=$!
      PORT=$b WORKERS=1 REDIS_URL="redis://127.0.0.1:$REDIS_PORT" "$tgt/release/sioxide-peer" >"$OUT/sx-$b.log" 2>&1 &
      local p2=$!
      pids+=("$p1" "$p2")
      for f in "$OUT/sx-$a.log" "$OUT/sx-$b.log"; do
        for _ in $(seq 150); do grep -q READY "$f" 2>/dev/null && break; sleep 0.1; done
      done
      URLS[$name]="http://127.0.0.1:$a http://127.0.0.1:$b"; TARGET[$name]=socketio
      SPIDS[$name]="$p1 $p2 $REDIS_PID"
      ;;
  esac
}

for s in $SERVERS; do echo "==> starting $s" >&2; start_server "$s"; done

# Idle memory first, while every server is fresh: after the fan-out runs a
# process keeps freed memory, and the per-connection delta would read low.
for s in $SERVERS; do
  urls=()
  for u in ${URLS[$s]}; do urls+=(--url "$u"); done
  echo "==> $s: $IDLE idle connections" >&2
  json="$OUT/$s-idle.json"
  if "$LOAD" idle -q --target "${TARGET[$s]}" "${urls[@]}" --clients "$IDLE" --hold 5 --json "$json" >/dev/null 2>&1; then
    printf '%s\t%s\n' "$s" "$(jq_py "$json" '"%.1f" % (sum(m["kib_per_connection"] for m in r["memory"]) / len(r["memory"]))')" >>"$OUT/idle.tsv"
  fi
done

# point NAME SUBSCRIBERS RATE REPEAT: one fan-out run, one line in points.tsv
point() {
  local name=$1 subs=$2 rate=$3 rep=$4 urls=() u json ok c0 c1
  for u in ${URLS[$name]}; do urls+=(--url "$u"); done
  json="$OUT/$name-$subs-$rate-$rep.json"
  echo "==> $name: $subs subscribers, $rate deliveries/s (run $rep)" >&2
  # shellcheck disable=SC2086
  c0=$(cpu_of ${SPIDS[$name]})
  ok=1
  "$LOAD" fanout -q --target "${TARGET[$name]}" "${urls[@]}" --clients "$subs" --rate $((rate / subs)) \
    --duration "$DURATION" --payload "$PAYLOAD" --allow-client-bound --json "$json" >/dev/null 2>&1 || ok=0
  # shellcheck disable=SC2086
  c1=$(cpu_of ${SPIDS[$name]})
  python3 - "$json" "$name" "$subs" "$rate" "$rep" "$ok" "$c0" "$c1" >>"$OUT/points.tsv" <<'EOF'
import json, sys
path, name, subs, rate, rep, ok, c0, c1 = sys.argv[1:]
try:
    d = json.load(open(path))["delivery"]
    delivered, lat = d["delivered"], d["latency"]
    complete = int(ok) and d["lost"] == 0 and d["delivered"] == d["expected"]
    p50, p99 = lat["p50_us"] / 1000, lat["p99_us"] / 1000
except Exception:
    delivered, complete, p50, p99 = 0, 0, float("nan"), float("nan")
us = (float(c1) - float(c0)) * 1e6 / delivered if delivered else float("nan")
print("\t".join(map(str, [name, subs, rate, rep, int(complete), f"{p50:.2f}", f"{p99:.2f}", f"{us:.3f}"])))
EOF
}

for rep in $(seq "$REPEATS"); do
  for rate in $RATES; do for s in $SERVERS; do point "$s" "$SUBSCRIBERS" "$rate" "$rep"; done; done
  if [ "$BIG" -gt 0 ]; then
    for rate in $BIG_RATES; do for s in $SERVERS; do point "$s" "$BIG" "$rate" "$rep"; done; done
  fi
done
fi

python3 - "$OUT" "$SERVERS" "$SUBSCRIBERS" "$BIG" "$REPEATS" "$DURATION" "$PAYLOAD" "$IDLE" <<'EOF'
import statistics, sys, collections, datetime, os
out, servers, subs, big, repeats, duration, payload, idle = sys.argv[1:]
servers = servers.split()
rows = collections.defaultdict(list)
for line in open(f"{out}/points.tsv"):
    name, s, rate, rep, ok, p50, p99, us = line.split("\t")
    rows[(name, int(s), int(rate))].append((int(ok), float(p50), float(p99), float(us)))
idle_kib = dict(l.split("\t") for l in open(f"{out}/idle.tsv").read().splitlines()) if os.path.exists(f"{out}/idle.tsv") else {}

def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")

def cell(vals):
    vals = [v for v in vals if v == v]
    if not vals:
        return "n/a"
    return f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"

def ratio(a, b):
    return f"{a / b:.2f}×" if a == a and b == b and b else "n/a"

print(f"\nOne run, {os.cpu_count()} CPUs, {datetime.date.today()}, {repeats} interleaved repeats of {duration} s per point, {payload}-byte payloads")
for n in sorted({k[1] for k in rows}):
    rates = sorted({k[2] for k in rows if k[1] == n})
    print(f"\n{n} subscribers on one channel: median (min–max) over the repeats; ratios are medians / the floor's")
    print("| deliveries/s | server | all delivered | p50 ms | p99 ms | CPU µs per delivery (server + Redis) | p50 / floor | p99 / floor | CPU / floor | CPU / socketioxide |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rate in rates:
        f = rows.get(("floor", n, rate), [])
        f50, f99, fcpu = med([r[1] for r in f]), med([r[2] for r in f]), med([r[3] for r in f])
        sx = rows.get(("socketioxide", n, rate), [])
        sxcpu = med([r[3] for r in sx])
        for s in servers:
            rs = rows.get((s, n, rate), [])
            if not rs:
                continue
            okc = sum(r[0] for r in rs)
            p50, p99, cpu = med([r[1] for r in rs]), med([r[2] for r in rs]), med([r[3] for r in rs])
            print(f"| {rate:,} | {s} | {okc}/{len(rs)} | {cell([r[1] for r in rs])} | {cell([r[2] for r in rs])} | {cell([r[3] for r in rs])} | {ratio(p50, f50)} | {ratio(p99, f99)} | {ratio(cpu, fcpu)} | {ratio(cpu, sxcpu)} |")
    print(f"\nHighest rate sustained ({n} subscribers): every repeat delivered everything, median p99 < 50 ms")
    best = {}
    for s in servers:
        ok_rates = [r for r in rates if rows.get((s, n, r)) and all(x[0] for x in rows[(s, n, r)]) and med([x[2] for x in rows[(s, n, r)]]) < 50]
        best[s] = max(ok_rates) if ok_rates else 0
    print("| server | sustained deliveries/s | vs floor | vs socketio | idle KiB per connection |")
    print("|---|---|---|---|---|")
    for s in servers:
        print(f"| {s} | {best[s]:,} | {ratio(best[s], best.get('floor', float('nan')))} | {ratio(best[s], best.get('socketio', float('nan')))} | {idle_kib.get(s, 'n/a')} |")
EOF
echo "(JSON reports and points.tsv in $OUT)"
