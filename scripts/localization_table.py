#!/usr/bin/env python3
"""The README's localization table from a comparison.json of csg compare: one row per run, Avg-IoU / AP20 /
AP30 of each map method (csg's maps and Captum's), and each method's Avg-IoU difference from STD with its
95% interval.

    python3 scripts/localization_table.py docs/results/clutter-graph-captum/comparison.json
"""
from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    try:
        data = json.load(open(path))
    except (OSError, ValueError) as exc:
        sys.exit(f"localization_table: cannot read {path} ({exc}); give a comparison.json of csg compare")
    runs = data["runs"]
    keys = [k for k in dict.fromkeys(k for r in runs for k in r["values"]) if k.startswith("loc.")]
    methods = list(dict.fromkeys(k.split(".")[1] for k in keys))
    diffs = {(d["method"], d["metric"]): d for d in data["differences"]}
    print("| run | map | Avg-IoU | AP20 | AP30 | Δ Avg-IoU vs STD |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        for m in methods:
            v = [r["values"].get(f"loc.{m}.{x}") for x in ("avg_iou", "ap20", "ap30")]
            if v[0] is None:
                continue
            d = diffs.get((r["method"], f"loc.{m}.avg_iou"))
            delta = "–" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" + \
                (" ✓" if d["excludes_zero"] else "")
            print(f"| {r['label']} | {m} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {delta} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
