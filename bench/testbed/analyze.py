#!/usr/bin/env python3
"""analyze.py RESULT_DIR: what a bench/testbed/run.sh run did, per vehicle and in all.

Prints the testbed's summary (time until all done, median, depot copies), the fetchers'
request counters summed, where the vehicles' bytes went (payload served, QUIC packets, lost and
sent again; from the `stopped` line each vehicle logs when the testbed ends it), the fastest,
median and slowest vehicles, and for those three the groups held every 10 s (from the progress
lines)."""
import glob, json, re, sys

d = sys.argv[1]
summary = json.load(open(f"{d}/summary.json"))
size = int(summary["env"]["FILE_MB"]) << 20
depot = open(f"{d}/dm/addr").read().strip().split("/p2p/")[1]
print(f"all done {summary['t_all_done_s']} s, median {summary['t_median_s']} s, "
      f"depot sent {summary['depot_tx_bytes'] / size:.2f} copies, "
      f"CPU busy {summary['cpu_avg_pct']['busy']} %, failed {summary['failed']}")
rows = []
for f in glob.glob(f"{d}/dm/veh*.json"):
    j = json.load(open(f))
    vid = int(re.findall(r"veh(\d+)\.json", f)[0])
    rows.append((j["seconds"], vid, j["bytes_per_peer"].get(depot, 0) / 1e6, j.get("requests", {})))
rows.sort()
totals = {}
for row in rows:
    for key, value in row[3].items():
        totals[key] = totals.get(key, 0) + value
print("requests, all vehicles:", totals)
print(f"verified from the depot: {sum(r[2] for r in rows):.0f} MB")
# What serving cost the vehicles: their `stopped` lines (counted until the testbed ended them).
served, quic = 0, {}
for f in glob.glob(f"{d}/dm/veh*.stderr.log"):
    for line in open(f):
        if line.startswith("stopped "):
            stopped = json.loads(line[len("stopped "):])
            served += stopped["served_bytes"]
            for key, value in stopped["transport"].items():
                quic[key] = quic.get(key, 0) + value
if quic:
    needed = len(rows) * size - summary["depot_tx_bytes"]
    print(f"vehicles: needed from them {needed / 1e6:.0f} MB, payload served {served / 1e6:.0f} MB, "
          f"QUIC sent {quic['udp_tx_bytes'] / 1e6:.0f} MB in {quic['udp_tx_datagrams']} datagrams, "
          f"lost {quic['lost_bytes'] / 1e6:.0f} MB ({100 * quic['lost_packets'] / max(quic['sent_packets'], 1):.1f} % "
          f"of packets), interfaces {summary['vehicles_tx_bytes'] / 1e6:.0f} MB, "
          f"{quic['connections']} connection ends")
matches = len(glob.glob(f"{d}/dm/cmp.*"))
differ = sum("DIFFER" in open(f).read() for f in glob.glob(f"{d}/dm/cmp.*"))
print(f"outputs compared: {matches}, differing: {differ}")
for seconds, vid, from_depot, _ in [rows[0], rows[len(rows) // 2], rows[-1]]:
    held = {}
    for line in open(f"{d}/dm/veh{vid}.stderr.log"):
        m = re.match(r"progress (\d+) of \d+ groups held, \d+ bytes fetched, \d+ peers, ([\d.]+) s", line)
        if m:
            held[int(float(m.group(2)) // 10)] = int(m.group(1))
    print(f"veh{vid}: {seconds:.1f} s, {from_depot:.1f} MB from the depot; groups held every 10 s:",
          [held[k] for k in sorted(held)])
