# Shell helpers shared by the benchmark scripts in loadtest/ (sourced).

# CPU seconds (user + system) of the given processes so far, from /proc.
cpu_of() {
  local hz total=0 p
  hz=$(getconf CLK_TCK)
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    total=$(awk -v t="$total" -v hz="$hz" '{print t + ($14 + $15) / hz}' "/proc/$p/stat")
  done
  echo "$total"
}

# A free loopback port below the ephemeral range (so the load client's own
# connections never collide with a server's). With OFFSET, port+OFFSET must
# be free too (a second listener, e.g. Redis Cluster's bus port).
free_port() { # [OFFSET]
  local p taken
  while p=$((20000 + RANDOM % 9000)); taken=":$p"; [ -n "${1:-}" ] && taken=":($p|$((p + $1)))"
    ss -tanH | awk '{print $4}' | grep -qE "$taken$"; do :; done
  echo "$p"
}

# Evaluates the Python expression $2 with r = the JSON file $1.
jq_py() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"; }
