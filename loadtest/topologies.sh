#!/usr/bin/env bash
# The `channels` scenario (10,000 channels, one subscriber each, publications
# to random channels) on three Redis set-ups, in one run, with 2 Herald nodes
# each:
#   one     a single Redis;
#   cluster a Redis Cluster of 3 masters (no replicas: the benchmark measures
#           the publish path, and replicas would only take CPU from it);
#   shards  3 independent Redis instances as client-side shards.
# Publications go straight into Redis with Herald's script (--publish-via
# redis), then through the nodes' HTTP API (--publish-via api). For each run
# it records the achieved rate, the latency percentiles, and the CPU seconds
# every Redis process and every node used (from /proc), so the per-shard
# cost can be compared with one Redis's.
# Every process it starts is stopped on exit (also on Ctrl-C or failure).
#
# Knobs (env): RATE (publications/s asked for, 40000: above what the machine
# sustains, so the achieved rate is the ceiling), CHANNELS (10000), DURATION
# (10 s), PUBLISHERS (64 request/answer loops, pipelined on one connection per Redis), OUT (directory for JSON reports), TOPOLOGIES
# ("one cluster shards"), VIAS ("redis api").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=loadtest/lib.sh
. "$ROOT/loadtest/lib.sh"

RATE=${RATE:-40000}
CHANNELS=${CHANNELS:-10000}
DURATION=${DURATION:-10}
PUBLISHERS=${PUBLISHERS:-64}
TOPOLOGIES=${TOPOLOGIES:-"one cluster shards"}
VIAS=${VIAS:-"redis api"}
OUT=${OUT:-$ROOT/target/topologies}
mkdir -p "$OUT"

pids=()
redis_pids=()
cleanup() {
  for p in "${pids[@]}" "${redis_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

REDIS_PORTS=()
start_redis() { # [extra args...] -> appends to REDIS_PORTS / redis_pids
  local port dir pid
  for _ in 1 2 3 4 5 6 7 8; do # another process may take the port first
    port=$(free_port 10000)
    dir="$OUT/redis-$port"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" "$@" \
      >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
      if redis-cli -p "$port" ping >/dev/null 2>&1; then
        redis_pids+=("$pid"); REDIS_PORTS+=("$port"); return
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
  done
  echo "redis did not start" >&2; exit 1
}
stop_all() {
  for p in "${pids[@]}" "${redis_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=(); redis_pids=(); REDIS_PORTS=()
}

wait_ready() { # URL
  for _ in $(seq 100); do curl -fsS "$1/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$1 did not become ready" >&2; exit 1
}

echo "==> building release binaries" >&2
cargo build --release --locked -q -p herald -p herald-loadtest
LOAD=$ROOT/target/release/herald-load

# setup TOPOLOGY -> sets BROKER_ARGS (node flags) and PUB_URL (load tool's --redis-url)
setup() {
  case $1 in
    one)
      start_redis
      BROKER_ARGS=(--redis-url "redis://127.0.0.1:${REDIS_PORTS[0]}")
      PUB_URL="redis://127.0.0.1:${REDIS_PORTS[0]}"
      ;;
    cluster)
      for _ in 1 2 3; do
        start_redis --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000
      done
      local nodes=() p
      for p in "${REDIS_PORTS[@]}"; do nodes+=("127.0.0.1:$p"); done
      redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$OUT/cluster-create.log" 2>&1
      for _ in $(seq 100); do
        local ok=1
        for p in "${REDIS_PORTS[@]}"; do
          redis-cli -p "$p" cluster info | grep -q '^cluster_state:ok' || ok=0
        done
        [ $ok = 1 ] && break
        sleep 0.1
      done
      local seeds
      seeds=$(IFS=,; echo "${nodes[*]}")
      BROKER_ARGS=(--redis-url "redis+cluster://$seeds")
      PUB_URL="redis+cluster://$seeds"
      ;;
    shards)
      start_redis; start_redis; start_redis
      BROKER_ARGS=()
      local urls=() p
      for p in "${REDIS_PORTS[@]}"; do
        BROKER_ARGS+=(--redis-shard "redis://127.0.0.1:$p")
        urls+=("redis://127.0.0.1:$p")
      done
      PUB_URL="${urls[*]}"
      ;;
  esac
}

rows=()
for topo in $TOPOLOGIES; do
  for via in $VIAS; do
    setup "$topo"
    H1=$(free_port 10000); H2=$(free_port 10000)
    node_pids=()
    for p in "$H1" "$H2"; do
      "$ROOT/target/release/herald" serve --listen "127.0.0.1:$p" "${BROKER_ARGS[@]}" \
        --max-connections-per-ip 0 --connection-rate-per-ip 0 --log warn >"$OUT/$topo-$via-$p.log" 2>&1 &
      pids+=($!); node_pids+=($!)
    done
    wait_ready "http://127.0.0.1:$H1"; wait_ready "http://127.0.0.1:$H2"
    json="$OUT/$topo-$via.json"
    declare -A before=()
    for p in "${redis_pids[@]}" "${node_pids[@]}"; do before[$p]=$(cpu_s "$p"); done
    echo "==> $topo, publish via $via: $CHANNELS channels, $RATE/s asked for ${DURATION}s" >&2
    via_args=(--publish-via "$via")
    [ "$via" = redis ] && via_args+=(--redis-url "$PUB_URL")
    "$LOAD" channels -q --url "http://127.0.0.1:$H1" --url "http://127.0.0.1:$H2" \
      --channels "$CHANNELS" --rate "$RATE" --publishers "$PUBLISHERS" --duration "$DURATION" \
      "${via_args[@]}" --allow-client-bound --json "$json" >&2 || true
    redis_cpu=() node_cpu=0
    for p in "${redis_pids[@]}"; do
      redis_cpu+=("$(python3 -c "print('%.1f' % ($(cpu_s "$p") - ${before[$p]}))")")
    done
    for p in "${node_pids[@]}"; do
      node_cpu=$(python3 -c "print('%.1f' % ($node_cpu + $(cpu_s "$p") - ${before[$p]}))")
    done
    unset before
    read -r rate p50 p99 lost < <(jq_py "$json" '"%d %.2f %.2f %d" % (r["delivery"]["publish_rate"], r["delivery"]["latency"]["p50_us"]/1000, r["delivery"]["latency"]["p99_us"]/1000, r["delivery"]["lost"])')
    published=$(jq_py "$json" 'r["delivery"]["published"]')
    rsum=$(python3 -c "print('%.1f' % sum(float(x) for x in '${redis_cpu[*]}'.split()))")
    per=$(python3 -c "print('%.1f' % (1e6 * $rsum / max(1, $published)))")
    rows+=("| $topo | $via | $rate | $p50 | $p99 | $lost | ${redis_cpu[*]} | $per | $node_cpu |")
    stop_all
  done
done

cat <<EOF

channels: $CHANNELS channels, one subscriber each, $RATE publications/s asked for ${DURATION}s, 2 Herald nodes, $(nproc) CPUs, $(date -u +%F)
| Redis | publish via | achieved publishes/s | p50 ms | p99 ms | lost | Redis CPU s (per process) | Redis CPU µs per publish (all processes) | nodes CPU s |
|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")
EOF
echo "(JSON reports in $OUT)"
