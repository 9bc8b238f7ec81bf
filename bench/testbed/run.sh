#!/usr/bin/env bash
# Runs depotmesh on ../shared/testbed's shaped yard: one depot, N vehicles, all starting at once.
#
#   sudo N=30 DEPOT_MBIT=20 VEH_MBIT=10 bench/testbed/run.sh 100 [REP]
#
# FILE_MB selects the testbed's data/fileNM.bin (run ../shared/testbed/setup.sh once first).
# Builds the release binaries, then calls testbed.sh with this directory's depot, ready and
# client scripts. Results (summary.json, per-vehicle JSON summaries and logs) land in
# $TESTBED/results/n<N>_d<DEPOT>_v<VEH>_f<MB>/depotmesh[-rREP]; `analyze.py DIR` prints them.
# Environment: TESTBED (default ../shared/testbed beside the repository), DM_ARGS (extra
# `vehicle-peer fetch` arguments), DM_DEPOT_ARGS (extra `depot-cache serve` arguments),
# DM_VERIFY=0 (skip cmp of every output), DM_RUST_LOG, DM_PREBUILT (a directory holding
# depot-cache, vehicle-peer and origin built earlier: no build, so that runs of two builds can
# alternate), DM_TIMEOUT (seconds, default 600), DM_MESH (fleet, the default: every node holds a
# membership certificate from a fleet key made for the run, as a deployed yard does; open: every
# peer served), and testbed.sh's own (N DEPOT_MBIT VEH_MBIT ...).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TB=${TESTBED:-$(cd "$ROOT/../shared/testbed" && pwd)}
MB=$1; REP=${2:-}
F=$TB/data/file${MB}M.bin
[ -f "$F" ] || { echo "no $F: run $TB/setup.sh first" >&2; exit 1; }
if [ -n "${DM_PREBUILT:-}" ]; then
  SRC=$DM_PREBUILT
else
  (cd "$ROOT" && cargo build --release -q -p depot-cache -p vehicle-peer -p origin)
  SRC=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
# A private copy: the testbed kills every process in its namespaces, and a rebuild must not
# replace a binary that is running.
export DM_BIN=$(mktemp -d /tmp/depotmesh-bin.XXXXXX)
cp "$SRC/depot-cache" "$SRC/vehicle-peer" "$SRC/origin" "$DM_BIN/"
export FILE_MB=$MB
export DM_MESH=${DM_MESH:-fleet}
CFG="n${N:-10}_d${DEPOT_MBIT:-100}_v${VEH_MBIT:-50}_f${MB}"
OUT=$TB/results/$CFG/depotmesh${DM_MESH/fleet/}${REP:+-r$REP}   # depotmesh, depotmeshopen
rm -rf "$OUT"; mkdir -p "$OUT"
case $DM_MESH in
  fleet) "$HERE/enrol.sh" "$OUT/dm" "${N:-10}" ;;
  open) ;;
  *) echo "DM_MESH=$DM_MESH: give fleet or open" >&2; exit 1 ;;
esac
"$TB/testbed.sh" -l "$CFG-depotmesh" -o "$OUT" -t "${DM_TIMEOUT:-600}" \
  -s "$HERE/depot.sh $F" -r "$HERE/ready.sh" -c "$HERE/client.sh $F" 2>&1 \
  | grep -v 'Killed' | tee "$OUT/run.log" | tail -3
rm -rf "$OUT/dm/depot" "$DM_BIN"   # the depot's copy of the file; keep logs
echo "$OUT"
