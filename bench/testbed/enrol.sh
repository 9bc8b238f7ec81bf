#!/usr/bin/env bash
# enrol.sh DIR N: a fleet key for the run (an origin directory of its own), and the depot's and
# N vehicles' identities, each certified for its role, as `origin member issue` does for a real
# fleet. depot.sh and client.sh find them under DIR: fleet.key (hex), depot/ (the depot's data
# directory, its identity made), depot.member.json, veh<I>/identity.key and veh<I>/member.json.
set -euo pipefail
D=$1; COUNT=$2
mkdir -p "$D"
ORIGIN=(env USER=bench "$DM_BIN/origin" --dir "$D/origin")
"${ORIGIN[@]}" member key 2>/dev/null \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["fleet_key"])' > "$D/fleet.key"
certify() { # DATA_DIR ROLE OUT
  local peer
  if [ "$2" = depot ]; then peer=$("$DM_BIN/depot-cache" identity --data-dir "$1")
  else peer=$("$DM_BIN/vehicle-peer" identity --data-dir "$1"); fi
  "${ORIGIN[@]}" member issue --peer "$peer" --role "$2" --days 2 --out "$3" > /dev/null
}
certify "$D/depot" depot "$D/depot.member.json"
for i in $(seq "$COUNT"); do certify "$D/veh$i" vehicle "$D/veh$i/member.json"; done
echo "enrolled the depot and $COUNT vehicles under fleet key $(cut -c1-16 "$D/fleet.key")…" >&2
