"""The CSG+ ablation table: each variant's seeds paired with the full CSG+ run of the same seed.

    python3 scripts/ablation_table.py RUNS_DIR OUT_DIR

RUNS_DIR holds ``VARIANT-seedS`` run directories (as scripts/ablation.sh makes them); OUT_DIR gets
``ablation.json`` (every seed's numbers and each paired difference with its 95% t interval) and
``ablation.md`` (the table the docs quote).
"""
from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

from csg.core.io import atomic_write_json, atomic_write_text, read_json
from csg.metrics.statistics import paired_t_interval

REFERENCE = "csg-plus"
KEYS = ("accuracy", "mis", "gate_mi_agreement", "gate_activation_agreement", "l1_density", "q_max_mean")


def collect(runs: Path) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = defaultdict(dict)
    for metrics in sorted(runs.glob("*-seed*/metrics.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", metrics.parent.name)
        if match:
            found[match[1]][int(match[2])] = {k: read_json(metrics).get(k) for k in KEYS}
    return dict(found)


def table(found: dict[str, dict[int, dict]]) -> dict:
    reference = found[REFERENCE]
    rows = {}
    for variant, seeds in found.items():
        common = sorted(set(seeds) & set(reference))
        diffs = {}
        for key in ("accuracy", "mis", "gate_mi_agreement"):
            pairs = [seeds[s][key] - reference[s][key] for s in common
                     if seeds[s][key] is not None and reference[s][key] is not None]
            diffs[key] = paired_t_interval(pairs).to_dict() if pairs and variant != REFERENCE else None
        rows[variant] = {"seeds": seeds, "minus_reference": diffs}
    return {"schema": "csg.ablation/1", "reference": REFERENCE, "rows": rows}


def markdown(result: dict) -> str:
    def mean(seeds, key):
        vals = [v[key] for v in seeds.values() if v[key] is not None]
        return f"{sum(vals) / len(vals):.4f}" if vals else "–"

    def diff(d):
        if d is None:
            return "–"
        return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" + (" ✓" if d["excludes_zero"] else "")

    lines = ["| variant | seeds | accuracy | MIS | gate-MI agreement | L1-density | Δ MIS vs CSG+ (95% t) | Δ accuracy vs CSG+ |",
             "|---|---|---|---|---|---|---|---|"]
    for variant, row in result["rows"].items():
        s = row["seeds"]
        lines.append(f"| {variant} | {len(s)} | {mean(s, 'accuracy')} | {mean(s, 'mis')} | {mean(s, 'gate_mi_agreement')} "
                     f"| {mean(s, 'l1_density')} | {diff(row['minus_reference']['mis'])} | {diff(row['minus_reference']['accuracy'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python3 scripts/ablation_table.py RUNS_DIR OUT_DIR")
    runs, out = Path(argv[0]), Path(argv[1])
    found = collect(runs)
    if REFERENCE not in found:
        sys.exit(f"ablation_table: no {REFERENCE}-seedS/metrics.json in {runs}; run scripts/ablation.sh first")
    out.mkdir(parents=True, exist_ok=True)
    result = table(found)
    atomic_write_json(out / "ablation.json", result)
    atomic_write_text(out / "ablation.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main(sys.argv[1:])
