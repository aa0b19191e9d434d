"""The comparison as Markdown tables (``comparison.md`` beside ``comparison.json``), for a README or a paper.

Every number comes from ``comparison.json`` (schema ``csg.comparison/2``): per method the mean ± sample
std over its seeds, and each method's difference from STD with its 95% interval, ``✓`` when the interval
excludes 0.
"""
from __future__ import annotations

import math

from ..metrics import T_EQUAL
from .comparison import localization_keys, metric_label



def _pm(agg: dict | None, digits: int, scale: float = 1.0) -> str:
    if not agg or agg.get("mean") is None:
        return "–"
    text = f"{agg['mean'] * scale:.{digits}f}"
    if agg.get("std") is not None:
        text += f" ± {agg['std'] * scale:.{digits}f}"
    return text


def _diff(d: dict | None, digits: int, scale: float = 1.0) -> str:
    if d is None:
        return "–"
    text = f"{d['mean'] * scale:+.{digits}f}"
    if d.get("low") is not None and math.isfinite(d["low"]) and math.isfinite(d["high"]):
        text += f" [{d['low'] * scale:+.{digits}f}, {d['high'] * scale:+.{digits}f}]"
    elif d.get("kind") == T_EQUAL:
        text += f" [no interval: {d['n']} equal differences]"
    return text + (" ✓" if d.get("excludes_zero") else "")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def comparison_markdown(result: dict, *, method_order: list[str] | None = None) -> str:
    rows = result["rows"]
    if method_order:
        rank = {m: i for i, m in enumerate(method_order)}
        rows = sorted(rows, key=lambda r: (r["data"], rank.get(r["method"], 99)))
    index = {(d["data"], d["arch"], d["method"], d["metric"]): d for d in result["differences"]}

    def block(title: str, metrics: list[tuple[str, int, float]]) -> str:
        """One table: a row per method, a column per metric (``(key, digits, scale)``)."""
        present = [(m, d, sc) for m, d, sc in metrics if any(r["values"].get(m, {}).get("n") for r in rows)]
        if not present:
            return ""
        body = []
        for r in rows:
            cells = [r["method"], str(len(r["seeds"]))]
            for m, digits, scale in present:
                cell = _pm(r["values"].get(m), digits, scale)
                d = index.get((r["data"], r["arch"], r["method"], m))
                if d is not None:
                    cell += f"; Δ {_diff(d, digits, scale)}"
                cells.append(cell)
            body.append(cells)
        heads = ["method", "runs"] + [metric_label(m) + (" (%)" if sc == 100 else "") for m, _, sc in present]
        return f"### {title}\n\n" + _table(heads, body) + "\n"

    parts = ["Mean ± sample std over seeds; Δ = difference from STD (paired by seed: mean and 95% t interval; "
             "one seed: bootstrap over test items); ✓ = the interval excludes 0.\n\n"]
    parts.append(block("Accuracy and interpretability", [("accuracy", 4, 1.0), ("mis", 4, 1.0),
                                                         ("gap_closed", 1, 100.0)]))
    parts.append(block("Gate agreement", [("gate_mi_agreement", 3, 1.0), ("gate_activation_agreement", 3, 1.0)]))
    keys = sorted({k for r in rows for k in r["values"]})
    loc = localization_keys(keys)
    parts.append(block("Localization", [(k, 3, 1.0) for k in loc]))
    parts.append(block("Detector error", [(k, 2, 100.0) for k in keys if k.startswith("detection.")]))
    parts.append(block("Black-box success", [(k, 1, 100.0) for k in keys if k.startswith("blackbox.")]))
    parts.append(block("Explanatory graph", [(k, 4, 1.0) for k in keys if k.startswith("graph.")]))
    return "".join(p for p in parts if p)
