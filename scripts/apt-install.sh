# Sourced by the scripts in scripts/: `apt_install_missing CMD:PACKAGE ...`
# installs, with apt, the Debian package of each command that is not on
# PATH (a bare PACKAGE is checked with `dpkg -s`). Package services
# (redis-server, prometheus, haproxy) are kept from starting: the scripts
# only use the binaries, and nothing may take the machine's shared ports.
apt_install_missing() {
  local need=() spec cmd pkg
  for spec in "$@"; do
    cmd=${spec%%:*}
    pkg=${spec#*:}
    if [ "$cmd" = "$spec" ]; then
      dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    else
      command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
    fi
  done
  [ ${#need[@]} -gt 0 ] || return 0
  echo "==> installing ${need[*]}"
  local sudo="" prc=/usr/sbin/policy-rc.d saved=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # policy-rc.d exiting 101 tells invoke-rc.d not to start services;
  # whatever policy was there before is put back.
  if [ -e "$prc" ]; then saved=$(mktemp) && $sudo cp -p "$prc" "$saved"; fi
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$prc" >/dev/null
  $sudo chmod 755 "$prc"
  local rc=0
  { $sudo apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } || rc=$?
  if [ -n "$saved" ]; then $sudo mv "$saved" "$prc"; else $sudo rm -f "$prc"; fi
  return $rc
}
