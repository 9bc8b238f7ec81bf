#!/usr/bin/env bash
# client.sh FILE: in a vehicle's namespace, fetch the blob from the depot and from neighbours
# found by mDNS (fleet members only, with DM_MESH=fleet), then keep serving. On the JSON summary
# line: save it, compare the output with FILE (unless DM_VERIFY=0), then publish the completion
# time in $DONE_FILE.
set -u
F=$1; D=$OUT/dm; mkdir -p "$D"
ADDR=$(cat "$D/addr"); BLOB=$(cat "$D/blob")
read -r -a EXTRA <<< "${DM_ARGS:-}"
if [ "$DM_MESH" = fleet ]; then   # enrol.sh made this vehicle's identity and certificate
  mkdir -p "$WORK/vp"; cp "$D/veh$VID/identity.key" "$WORK/vp/"
  MESH=(--fleet-key "$(cat "$D/fleet.key")" --certificate "$D/veh$VID/member.json")
else
  MESH=(--open-mesh)
fi
NO_COLOR=1 RUST_LOG=${DM_RUST_LOG:-info} "$DM_BIN/vehicle-peer" fetch --data-dir "$WORK/vp" \
  --peer "$ADDR" --listen "/ip4/$VEH_IP/udp/9000/quic-v1" --keep-serving --out "$WORK/out.bin" \
  "${MESH[@]}" "${EXTRA[@]}" "$BLOB" 2> "$D/veh$VID.stderr.log" | {
  IFS= read -r line; t=$(date +%s.%N)
  [ -n "$line" ] || exit 1
  echo "$line" > "$D/veh$VID.json"
  if [ "${DM_VERIFY:-1}" = 1 ]; then
    if cmp -s "$WORK/out.bin" "$F"; then echo MATCH > "$D/cmp.$VID"; else echo DIFFER > "$D/cmp.$VID"; fi
  fi
  echo "$t" > "$DONE_FILE.tmp"; mv "$DONE_FILE.tmp" "$DONE_FILE"
  cat > /dev/null
}
