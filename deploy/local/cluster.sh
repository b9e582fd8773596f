#!/usr/bin/env bash
# A local Herald cluster without Docker: redis-server, N herald nodes and
# HAProxy in front of them, all on 127.0.0.1.
#
#   deploy/local/cluster.sh up [-n N]   start Redis, N nodes (default 3) and HAProxy
#   deploy/local/cluster.sh status      each process up/down, /readyz of each node
#   deploy/local/cluster.sh down        stop exactly what `up` started
#
# Settings (environment, read by `up`; `status` and `down` use what `up` used):
#   CLUSTER_DIR         state: pids, logs, secrets [target/local-cluster]
#   CLUSTER_LB_PORT     HAProxy, for WebSocket clients [8800]
#   CLUSTER_PORT_BASE   node i listens on BASE+i [8800]
#   CLUSTER_ADMIN_BASE  node i's admin listener (API, metrics) on ADMIN_BASE+i [9800]
#   CLUSTER_REDIS_PORT  [6390]
#   CLUSTER_STATS_PORT  HAProxy stats page [8899]
#   CLUSTER_BIN         herald binary [target/release/herald, built if missing]
# Other HERALD_* variables (HERALD_LOG, ...) are passed on to the nodes.
# Needs redis-server, haproxy and curl; installs them with apt when missing.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(realpath -m "${CLUSTER_DIR:-$root/target/local-cluster}")
herald=$(realpath -m "${CLUSTER_BIN:-$root/target/release/herald}")
lb_port=${CLUSTER_LB_PORT:-8800}
base=${CLUSTER_PORT_BASE:-8800}
admin_base=${CLUSTER_ADMIN_BASE:-9800}
redis_port=${CLUSTER_REDIS_PORT:-6390}
stats_port=${CLUSTER_STATS_PORT:-8899}
nodes=3
# The script's own settings are CLUSTER_*, never HERALD_*: the nodes refuse
# unknown HERALD_* variables, and inherit this environment.

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "cluster: $*" >&2; exit 1; }

# Each started process is recorded as "PID EXE" in $dir/pids/NAME; a PID
# only counts as ours while /proc/PID/exe is still that executable.
pid_of() {
  local pid exe
  [ -r "$dir/pids/$1" ] || return 1
  read -r pid exe <"$dir/pids/$1"
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] && echo "$pid"
}

names() {
  echo redis
  for i in $(seq 1 "$nodes"); do echo "node-$i"; done
  echo haproxy
}

# start NAME COMMAND...: in its own session, so that a Ctrl-C in this
# terminal does not reach it; setsid does not fork here (no job control), so
# $! is the process itself.
start() {
  local name=$1 exe
  shift
  exe=$(realpath "$(command -v "$1")")
  setsid "$@" >"$dir/logs/$name.out" 2>"$dir/logs/$name.log" </dev/null &
  echo "$! $exe" >"$dir/pids/$name"
}

# wait_for NAME SECONDS COMMAND...: retry COMMAND while process NAME lives.
wait_for() {
  local name=$1 tries=$(($2 * 10))
  shift 2
  until "$@" >/dev/null 2>&1; do
    tries=$((tries - 1))
    if ! pid_of "$name" >/dev/null; then
      echo "cluster: $name exited; from $dir/logs/$name.log:" >&2
      grep -m 3 -A 3 -i 'error' "$dir/logs/$name.log" >&2 || tail -n 5 "$dir/logs/$name.log" >&2
      return 1
    fi
    [ "$tries" -gt 0 ] || { echo "cluster: $name not ready after $(($2))s; see $dir/logs/$name.log" >&2; return 1; }
    sleep 0.1
  done
}

http_ok() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1")" = 200 ]; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# 48 hex characters; no pipe reader that quits early (SIGPIPE under pipefail).
secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

install_deps() {
  local need=()
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  [ ${#need[@]} -eq 0 ] && return
  echo "==> installing ${need[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

write_haproxy_cfg() {
  # Each proxied connection takes two descriptors.
  local fds
  fds=$(ulimit -Hn)
  [ "$fds" = unlimited ] && fds=1048576
  cat <<EOF
global
    maxconn $(((fds - 100) / 2))

defaults
    mode http
    timeout connect 2s
    timeout http-request 10s
    timeout client 60s
    timeout server 60s
    # After the WebSocket upgrade (herald pings every 25s).
    timeout tunnel 1h

frontend ws
    bind 127.0.0.1:$lb_port
    default_backend herald

backend herald
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    # PROXY protocol v2 names the client to the nodes (started with
    # --proxy-protocol and this HAProxy as their trusted proxy), so their
    # per-address limits see clients, not HAProxy. Health checks go to the
    # admin port without it.
    default-server inter 1s fall 2 rise 1 send-proxy-v2
    # Socket.IO long-polling (and its upgrade to WebSocket): every request
    # of a session carries its sid, which starts with the id of the node
    # that holds the session and a dot. Route it there; no cookie or stick
    # table needed. A node that is down is skipped by its rule, so the
    # request goes to another node, which answers "Session ID unknown" (400)
    # at once and the client opens a new session. A node that refuses
    # connections before its checks mark it down: the retry goes to another
    # node at once, instead of after HAProxy's 1 s turn-around delays.
    retries 2
    option redispatch 1
EOF
  for i in $(seq 1 "$nodes"); do
    echo "    use-server node-$i if { urlp(sid) -m beg node-$i. }"
  done
  for i in $(seq 1 "$nodes"); do
    echo "    server node-$i 127.0.0.1:$((base + i)) check port $((admin_base + i))"
  done
  cat <<EOF

listen stats
    bind 127.0.0.1:$stats_port
    stats enable
    stats uri /
EOF
}

up() {
  [[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 50 ] || die "-n takes 1 to 50"
  [ "$redis_port" != 6379 ] || die "refusing Redis port 6379 (it may be someone else's Redis)"
  mkdir -p "$dir/pids" "$dir/logs" "$dir/redis"
  if [ -e "$dir/cluster.env" ]; then
    # shellcheck source=/dev/null
    (. "$dir/cluster.env"; for n in $(names); do pid_of "$n" >/dev/null && exit 1; done; exit 0) ||
      die "already running (state in $dir); run: $0 down"
  fi
  install_deps
  if [ ! -x "$herald" ]; then
    echo "==> cargo build --release -p herald"
    (cd "$root" && cargo build --release -p herald)
  fi
  local ports=("$lb_port" "$redis_port" "$stats_port")
  for i in $(seq 1 "$nodes"); do ports+=($((base + i)) $((admin_base + i))); done
  for p in "${ports[@]}"; do ! port_busy "$p" || die "port $p is in use (see the settings in $0)"; done
  [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -eq ${#ports[@]} ] || die "port ranges overlap: ${ports[*]}"

  # Kept across restarts, so clients' reconnect tokens stay valid.
  [ -s "$dir/reconnect-secret" ] || (umask 077; secret >"$dir/reconnect-secret")
  [ -s "$dir/api-key" ] || (umask 077; secret >"$dir/api-key")
  printf 'nodes=%s\nlb_port=%s\nbase=%s\nadmin_base=%s\nredis_port=%s\nstats_port=%s\nherald=%q\n' \
    "$nodes" "$lb_port" "$base" "$admin_base" "$redis_port" "$stats_port" "$herald" >"$dir/cluster.env"
  trap 'echo "cluster: start failed, stopping what was started" >&2; down >/dev/null 2>&1 || true' ERR

  start redis redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$dir/redis"
  wait_for redis 10 redis-cli -p "$redis_port" ping

  HERALD_RECONNECT_SECRET=$(cat "$dir/reconnect-secret")
  export HERALD_RECONNECT_SECRET
  local api_key
  api_key=$(cat "$dir/api-key")
  if "$herald" serve --help | grep -q -- '--api-key'; then
    export HERALD_API_KEY=$api_key
  else
    api_key=""
    echo "cluster: this herald build has no --api-key: the publish API is open" >&2
  fi
  for i in $(seq 1 "$nodes"); do
    start "node-$i" "$herald" serve --node-id "node-$i" --listen "127.0.0.1:$((base + i))" \
      --admin-listen "127.0.0.1:$((admin_base + i))" --redis-url "redis://127.0.0.1:$redis_port" \
      --drain-timeout 3s --proxy-protocol --trusted-proxy 127.0.0.1
  done
  for i in $(seq 1 "$nodes"); do
    wait_for "node-$i" 15 http_ok "http://127.0.0.1:$((admin_base + i))/readyz"
  done

  write_haproxy_cfg >"$dir/haproxy.cfg"
  haproxy -c -q -f "$dir/haproxy.cfg"
  start haproxy haproxy -db -f "$dir/haproxy.cfg"
  wait_for haproxy 10 http_ok "http://127.0.0.1:$lb_port/"
  trap - ERR

  echo "Herald cluster: Redis, $nodes nodes, HAProxy (state and logs in $dir)"
  echo "  clients    ws://127.0.0.1:$lb_port/ws  (demo page http://127.0.0.1:$lb_port/)"
  for i in $(seq 1 "$nodes"); do
    echo "  node-$i     admin http://127.0.0.1:$((admin_base + i))  (its public port $((base + i)) expects HAProxy's PROXY header)"
  done
  echo "  redis      redis://127.0.0.1:$redis_port"
  echo "  stats      http://127.0.0.1:$stats_port/"
  [ -z "$api_key" ] || echo "  API key    $api_key"
  echo "  publish    ${api_key:+HERALD_API_KEY=$api_key }$herald publish news headline '{\"n\":1}' --url http://127.0.0.1:$((admin_base + 1))"
}

status() {
  local rc=0 pid state check
  for n in $(names); do
    check=""
    if pid=$(pid_of "$n"); then
      state="up"
      case $n in
        redis) check=$(redis-cli -p "$redis_port" ping 2>&1 || true) ;;
        node-*)
          local i=${n#node-}
          check="/readyz $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$((admin_base + i))/readyz" || true)"
          [ "$check" = "/readyz 200" ] || rc=1 ;;
        haproxy) check="frontend $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$lb_port/" || true)" ;;
      esac
    else
      state="down" pid="-" rc=1
    fi
    printf '%-9s %-5s pid %-8s %s\n' "$n" "$state" "$pid" "$check"
  done
  return $rc
}

# Reverse order: the load balancer first, Redis after the nodes have drained.
down() {
  local n
  stop haproxy
  for n in $(names | grep '^node-'); do stop "$n" nowait; done
  for n in $(names | grep '^node-'); do reap "$n"; done
  stop redis
  rm -f "$dir/cluster.env"
}

# stop NAME [nowait]: SIGTERM to the recorded process.
stop() {
  local pid
  if pid=$(pid_of "$1"); then
    echo "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  elif [ -e "$dir/pids/$1" ]; then
    echo "$1 was not running"
  fi
  [ "${2:-}" = nowait ] || reap "$1"
}

# reap NAME: wait until it has exited (SIGKILL after 15 s), then forget it.
reap() {
  local pid
  if pid=$(pid_of "$1") && ! wait_gone 15 "$pid"; then
    echo "$1 did not stop in 15 s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pids/$1"
}

# wait_gone SECONDS PID: true once PID has exited.
wait_gone() {
  local tries=$(($1 * 10))
  while [ -e "/proc/$2" ] && [ "$(awk '{print $3}' "/proc/$2/stat" 2>/dev/null)" != Z ]; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || return 1
    sleep 0.1
  done
}

cmd=${1:-}
[ $# -eq 0 ] || shift
case $cmd in
  up)
    while getopts n: opt; do
      case $opt in
        n) nodes=$OPTARG ;;
        *) usage ;;
      esac
    done
    up ;;
  status | down)
    [ $# -eq 0 ] || usage
    [ -e "$dir/cluster.env" ] || { echo "no cluster recorded in $dir"; [ "$cmd" = down ]; exit; }
    # shellcheck source=/dev/null
    . "$dir/cluster.env"
    "$cmd" ;;
  *) usage ;;
esac
