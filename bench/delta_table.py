#!/usr/bin/env python3
"""delta_table.py RESULTS_TSV [BSDIFF XDELTA3 ZSTD OURS]: the markdown tables of a bench/delta.sh run (stdlib only).

RESULTS_TSV has one line per (pair, tool) measurement, tab-separated, written by delta.sh:
  pair origin tool label old_bytes new_bytes patch_bytes create_s create_kib apply_s apply_kib status
origin is `corpus`, `arm64` (the --arm64 pairs) or `generated`; tool is bsdiff, xdelta3, zstd or ours; label is the setting
used (e.g. `zstd -22`); status is OK, FAIL (output differs), ERR-create or ERR-apply, or SKIP; a
field that was not measured is `-`. The optional labels are the column headers (the settings used on
the corpus); a cell measured with another setting names it. Without them, the most common label of
each tool is its header. Prints the delta-size table, its summary and the baselines'
own costs. Exits 0 whatever the statuses: delta.sh decides the exit code.
"""
import math
import sys

BASELINES = ["bsdiff", "xdelta3", "zstd"]
TOOLS = BASELINES + ["ours"]
FIELDS = ["pair", "origin", "tool", "label", "old_bytes", "new_bytes", "patch_bytes",
          "create_s", "create_kib", "apply_s", "apply_kib", "status"]


def number(text):
    return None if text == "-" else float(text)


def load(path):
    rows = {}   # pair -> tool -> record; pairs keep the order of the file
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(FIELDS):
                sys.exit(f"{path}:{line_number}: {len(parts)} fields, expected {len(FIELDS)}")
            r = dict(zip(FIELDS, parts))
            for key in FIELDS[4:11]:
                r[key] = number(r[key])
            rows.setdefault(r["pair"], {})[r["tool"]] = r
    return rows


def usual_labels(rows):
    """The label most pairs used for each tool: the column header. Others are noted in the cell."""
    labels = {}
    for tool in TOOLS:
        seen = [t[tool]["label"] for t in rows.values() if tool in t and t[tool]["status"] != "SKIP"]
        labels[tool] = max(set(seen), key=seen.count) if seen else tool
    return labels


def setting(r, usual):
    """How a cell's setting differs from its column's: `-19` under `zstd -22`, or ''."""
    label = r["label"]
    if label == usual:
        return ""
    if label.startswith(usual + " "):
        return f" ({label[len(usual) + 1:]})"
    return f" ({label.split(' ', 1)[-1]})"


def ok(r):
    return r is not None and r["status"] == "OK"


def percent_cell(r, usual):
    if r is None:
        return "-"
    if r["status"] == "SKIP":
        return "skip"
    if r["patch_bytes"] is None:
        return r["status"]
    return f"{100 * r['patch_bytes'] / r['new_bytes']:.2f}{setting(r, usual)}"


def best_baseline(tools):
    measured = [(tools[t]["patch_bytes"], t) for t in BASELINES if ok(tools.get(t))]
    return min(measured) if measured else None


def ratio(tools):
    """ours / best baseline (by delta size) for one pair, with the best tool's name, or None."""
    best = best_baseline(tools)
    ours = tools.get("ours")
    if best is None or not ok(ours):
        return None
    return ours["patch_bytes"] / best[0], best[1]


def seconds(value):
    return "-" if value is None else f"{value:.2f}"


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.0f}"


def trip(r):
    if r is None:
        return "-"
    if r["status"] == "SKIP":
        return "skip"
    if r["status"] in ("OK", "FAIL"):
        return r["status"]
    return f"FAIL ({r['status'][4:]})"   # ERR-create / ERR-apply


def time_ratio(tools):
    """Our create time over zstd's (the patch-from baseline) for one pair, or None."""
    ours, zstd = tools.get("ours"), tools.get("zstd")
    if not ours or not zstd or ours["create_s"] is None or not zstd["create_s"]:
        return None
    return ours["create_s"] / zstd["create_s"]


def time_ratio_cell(tools):
    r = time_ratio(tools)
    return "-" if r is None else f"{r:.2f}"


def table(header, body):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(out)


def main():
    if len(sys.argv) not in (2, 2 + len(TOOLS)):
        sys.exit(__doc__)
    rows = load(sys.argv[1])
    labels = usual_labels(rows)
    if len(sys.argv) > 2:
        labels = dict(zip(TOOLS, sys.argv[2:]))
    ran_ours = any("ours" in tools for tools in rows.values())

    header = ["pair", "new MB"] + [f"{labels[t]} %" for t in BASELINES] + [
        "ours %", "ours / best", "ours create s", "create / zstd", "ours create MiB", "ours apply s",
        "ours apply MiB", "round trip " + " / ".join(labels[t].split()[0] for t in TOOLS)]
    body = []
    for pair, tools in rows.items():
        any_row = next(iter(tools.values()))
        ours = tools.get("ours")
        r = ratio(tools)
        body.append(
            [pair, f"{any_row['new_bytes'] / 1e6:.1f}"]
            + [percent_cell(tools.get(t), labels[t]) for t in BASELINES]
            + [percent_cell(ours, labels["ours"]),
               "-" if r is None else f"{r[0]:.3f} ({labels[r[1]].split()[0]})",
               seconds(ours and ours["create_s"]), time_ratio_cell(tools),
               mib(ours and ours["create_kib"]),
               seconds(ours and ours["apply_s"]), mib(ours and ours["apply_kib"]),
               " / ".join(trip(tools.get(t)) for t in TOOLS)])
    print(table(header, body))
    print()

    # Summary: the geometric mean is over the real corpus pairs only (a generated pair has its
    # own baseline set); the worst pair and the peak apply RSS look at every pair.
    if not ran_ours:
        print("ours: not run (--baselines-only)")
    else:
        ratios = {p: ratio(t) for p, t in rows.items()}
        corpus = [r[0] for p, r in ratios.items() if r and rows[p]["ours"]["origin"] == "corpus"]
        n_corpus = sum(1 for t in rows.values() if next(iter(t.values()))["origin"] == "corpus")
        if corpus:
            gmean = math.exp(sum(math.log(x) for x in corpus) / len(corpus))
            missing = f" ({n_corpus - len(corpus)} without a result)" if len(corpus) < n_corpus else ""
            print(f"- geometric mean of ours / best tool over {len(corpus)} corpus pairs{missing}: "
                  f"**{gmean:.3f}**")
        else:
            print("- geometric mean of ours / best tool: - (no corpus pair with a result)")
        arm64 = [r[0] for p, r in ratios.items() if r and rows[p]["ours"]["origin"] == "arm64"]
        if arm64:
            gmean = math.exp(sum(math.log(x) for x in arm64) / len(arm64))
            print(f"- geometric mean of ours / best tool over {len(arm64)} AArch64 pairs: "
                  f"**{gmean:.3f}**")
        measured = [(r[0], p, r[1]) for p, r in ratios.items() if r]
        if measured:
            worst = max(measured)
            print(f"- worst pair: {worst[1]}, ours / best = {worst[0]:.3f} "
                  f"(best: {rows[worst[1]][worst[2]]['label']})")
        times = [(time_ratio(t), p) for p, t in rows.items() if time_ratio(t) is not None]
        if times:
            slowest = max(times)
            print(f"- our create time / zstd's: at most {slowest[0]:.2f} ({slowest[1]}); "
                  f"{sum(1 for r, _ in times if r <= 1.0)} of {len(times)} pairs at or under 1.0")
        creates = [(t["ours"]["create_kib"], p) for p, t in rows.items()
                   if "ours" in t and t["ours"]["create_kib"] is not None]
        if creates:
            peak = max(creates)
            print(f"- max create peak RSS (ours): {mib(peak[0])} MiB ({peak[1]})")
        applies = [(t["ours"]["apply_kib"], p) for p, t in rows.items()
                   if "ours" in t and t["ours"]["apply_kib"] is not None]
        if applies:
            peak = max(applies)
            print(f"- max apply peak RSS (ours): {mib(peak[0])} MiB ({peak[1]})")
    print()

    header = ["pair"] + [f"{labels[t]} {step}" for t in BASELINES for step in ("create", "apply")]
    body = []
    for pair, tools in rows.items():
        cells = [pair]
        for t in BASELINES:
            r = tools.get(t)
            for step in ("create", "apply"):
                if r is None or r["status"] == "SKIP":
                    cells.append("skip" if r else "-")
                elif r[f"{step}_s"] is None:
                    cells.append("-")
                else:
                    cells.append(f"{r[f'{step}_s']:.2f} s, {mib(r[f'{step}_kib'])} MiB"
                                 f"{setting(r, labels[t])}")
        body.append(cells)
    print("Baselines' own costs (wall time, peak RSS):")
    print()
    print(table(header, body))


if __name__ == "__main__":
    main()
