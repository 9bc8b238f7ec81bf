#!/usr/bin/env bash
# depot.sh FILE: in the depot's namespace, import FILE, serve it over QUIC (to the fleet's
# members only, with DM_MESH=fleet), and publish the address and blob id for the vehicles in
# $OUT/dm.
set -u
F=$1; D=$OUT/dm; mkdir -p "$D"; rm -f "$D/addr" "$D/blob"
if [ "$DM_MESH" = fleet ]; then   # enrol.sh made the identity and certificate
  MESH=(--fleet-key "$(cat "$D/fleet.key")" --certificate "$D/depot.member.json")
else
  MESH=(--open-mesh)
fi
"$DM_BIN/depot-cache" import --data-dir "$D/depot" "$F" > "$D/import.txt" || exit 1
awk '{print $1; exit}' "$D/import.txt" > "$D/blob.tmp" && mv "$D/blob.tmp" "$D/blob"
NO_COLOR=1 RUST_LOG=${DM_RUST_LOG:-info} "$DM_BIN/depot-cache" serve --data-dir "$D/depot" \
  --listen "/ip4/$DEPOT_IP/udp/9000/quic-v1" "${MESH[@]}" ${DM_DEPOT_ARGS:-} \
  | { IFS= read -r line; echo "$line" > "$D/addr.tmp"; mv "$D/addr.tmp" "$D/addr"; cat; }
