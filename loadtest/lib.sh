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
