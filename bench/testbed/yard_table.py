#!/usr/bin/env python3
"""yard_table.py RESULT_DIR... : one row per testbed run (depotmesh or a baseline), side by side.

For each run's summary.json: time until all vehicles were done and the median, that time over
the fluid bound T_p2p = max(F/u_depot, F/d_vehicle, N*F/(u_depot + N*u_vehicle)) (the testbed's
README), the depot's bytes sent in copies of the file, how much more the vehicles sent than
the yard needed from them (N*F minus what the depot sent; interface bytes, so packet headers
and acknowledgements count as extra), and the machine's CPU busy %. Prints the medians of the
runs of each method last."""
import json, os, statistics, sys

rows = []
for d in sys.argv[1:]:
    s = json.load(open(os.path.join(d, "summary.json")))
    env, n = s["env"], s["n"]
    f_bytes = int(env["FILE_MB"]) << 20
    f_bits = f_bytes * 8 / 1e6
    u_d, u_v = float(env["DEPOT_MBIT"]), float(env["VEH_MBIT"])
    t_p2p = max(f_bits / u_d, f_bits / u_v, n * f_bits / (u_d + n * u_v))
    needed = n * f_bytes - s["depot_tx_bytes"]
    method = os.path.basename(d.rstrip("/")).split("-r")[0]
    rows.append(dict(
        method=method, run=os.path.basename(d.rstrip("/")), done=s["t_all_done_s"],
        median=s["t_median_s"], bound=t_p2p,
        ratio=(s["t_all_done_s"] / t_p2p) if s["t_all_done_s"] else None,
        copies=s["depot_tx_bytes"] / f_bytes, extra=100 * (s["vehicles_tx_bytes"] / needed - 1),
        busy=s["cpu_avg_pct"]["busy"], failed=len(s["failed"])))

print(f"{'run':<22} {'all done s':>10} {'median s':>9} {'x T_p2p':>8} {'depot copies':>12} "
      f"{'vehicles extra %':>16} {'CPU busy %':>10} {'failed':>6}")
for r in rows:
    done = f"{r['done']:.1f}" if r["done"] else "-"
    ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
    print(f"{r['run']:<22} {done:>10} {r['median']:>9.1f} {ratio:>8} {r['copies']:>12.2f} "
          f"{r['extra']:>16.1f} {r['busy']:>10.1f} {r['failed']:>6}")
print(f"T_p2p = {rows[0]['bound']:.1f} s" if rows else "no runs")
for method in sorted({r["method"] for r in rows}):
    mine = [r for r in rows if r["method"] == method and r["done"]]
    if mine:
        print(f"median of {len(mine)} {method}: all done {statistics.median(r['done'] for r in mine):.1f} s "
              f"= {statistics.median(r['ratio'] for r in mine):.2f} x T_p2p, "
              f"depot {statistics.median(r['copies'] for r in mine):.2f} copies, "
              f"vehicles extra {statistics.median(r['extra'] for r in mine):.1f} %, "
              f"CPU busy {statistics.median(r['busy'] for r in mine):.1f} %")
