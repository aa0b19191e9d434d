"""``csg compare RUN... --out DIR``: a Table-1-style comparison of several runs.

One row per (data, arch, method); runs of the same method with different seeds
are aggregated as mean ± sample std. Columns: accuracy, MIS, the share of STD's
gap to the ceiling that the method closes,

    gap closed = (MIS - MIS_std) / (ceiling - MIS_std)

(``MIS_std`` = mean MIS of the STD runs on the same data and arch; ceiling =
metrics ``mis_ceiling`` if present, else ``H(1/C)``), gate-MI agreement,
L1-density with its interval ``[1/C, rho]``, localization totals and the
adversarial detection error when those files exist. The published CIFAR-10
rows of Table 1 are shown beside as a reference, and the gate, MI matrix,
correlation and removal figures of every run are placed side by side.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CsgError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..metrics import mis_ceiling
from . import figures as F
from . import html as H
from .run_report import _num, _read_json, flatten, matrix_figures


def _paper_rows() -> list[dict]:
    h = mis_ceiling(num_classes=10)
    std_mis = 0.1119
    return [
        {"method": "csg (paper)", "data": "CIFAR-10", "arch": "ResNet-20", "accuracy": 0.9192, "mis": 0.1603,
         "gap_closed": (0.1603 - std_mis) / (h - std_mis), "l1_density": 0.1000, "interval": "[0.1, 0.1]"},
        {"method": "std (paper)", "data": "CIFAR-10", "arch": "ResNet-20", "accuracy": 0.9169, "mis": std_mis,
         "gap_closed": 0.0, "l1_density": None, "interval": "–"},
    ]


PAPER_TABLE1_CIFAR10 = _paper_rows()

LOCALIZATION_METHODS = (("gradmap", "GradMap", ("avg_iou", "ap20")), ("activmap", "ActivMap", ("avg_iou", "ap30")),
                        ("cam", "CAM", ("avg_iou", "ap30")))
_ALIASES = {"avg_iou": ("avg_iou", "mean_iou", "iou", "avg-iou", "Avg-IoU"), "ap20": ("ap20", "AP20", "ap_20"),
            "ap30": ("ap30", "AP30", "ap_30")}


def localization_totals(data: dict | None) -> dict[str, float]:
    """``{"gradmap.avg_iou": ..., "gradmap.ap20": ..., ...}`` from localization.json, read defensively:
    each method's totals under ``total``/``overall``/``all`` (or the method's dict itself)."""
    out: dict[str, float] = {}
    if not isinstance(data, dict):
        return out
    for key, _label, wanted in LOCALIZATION_METHODS:
        block = data.get(key)
        if not isinstance(block, dict):
            continue
        total = next((block[t] for t in ("total", "overall", "all", "totals") if isinstance(block.get(t), dict)), block)
        for w in wanted:
            value = next((_num(total.get(a)) for a in _ALIASES[w] if _num(total.get(a)) is not None), None)
            if value is not None:
                out[f"{key}.{w}"] = value
    return out


def detection_errors(data: dict | None) -> dict[str, float]:
    """Numeric leaves of adversarial.json's ``detection`` entry, as dotted keys."""
    if not isinstance(data, dict) or not isinstance(data.get("detection"), dict):
        return {}
    return {k: float(v) for k, v in flatten(data["detection"]) if _num(v) is not None}


class _Run:
    def __init__(self, path: Path):
        from ..rundir import RunDir

        self.run = RunDir(path)
        self.path = Path(path)
        self.cfg = self.run.config
        self.metrics = self.run.metrics()
        self.method = str(self.cfg.get("method", self.metrics.get("method", "?")))
        self.data = str(self.cfg.get("data", "?"))
        self.arch = str(self.cfg.get("arch", "?"))
        self.seed = self.cfg.get("seed")
        self.analysis = _read_json(self.path / "analysis.json") if self.run.has("analysis.json") else None
        self.localization = localization_totals(_read_json(self.path / "localization.json"))
        self.detection = detection_errors(_read_json(self.path / "adversarial.json"))
        self.label = self.path.resolve().name
        C = self.metrics.get("num_classes") or self.cfg.get("num_classes")
        if not C and self.run.has("mi_matrix.npy"):
            C = self.run.mi_matrix().shape[1]
        self.num_classes = int(C) if C else None

    def values(self) -> dict[str, float | None]:
        m = self.metrics
        C = self.num_classes
        ceiling = _num(m.get("mis_ceiling")) or (mis_ceiling(num_classes=C) if C and C > 1 else None)
        rho = _num(m.get("rho")) or _num(self.cfg.get("rho"))
        interval = m.get("l1_interval") if isinstance(m.get("l1_interval"), list) else None
        if rho is None and interval and len(interval) == 2:
            rho = _num(interval[1])
        if rho is None and C and _num(m.get("l1_density")) is not None:
            rho = 1.0 / C  # the method's default density when none was set
        out = {"accuracy": _num(m.get("accuracy")), "mis": _num(m.get("mis")), "mis_ceiling": ceiling,
               "gate_mi_agreement": _num(m.get("gate_mi_agreement")), "l1_density": _num(m.get("l1_density")),
               "interval_low": (1.0 / C) if C and _num(m.get("l1_density")) is not None else None,
               "interval_high": rho if _num(m.get("l1_density")) is not None else None}
        out.update(self.localization)
        out.update({f"detection.{k}": v for k, v in self.detection.items()})
        if self.analysis:
            out["c_ic"] = _num(self.analysis.get("correlation", {}).get("c_ic"))
        return out


def _unique_labels(runs: list[_Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        base = r.label
        if sum(x.label == base for x in runs) > 1:
            base = f"{r.path.resolve().parent.name}-{r.label}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        r.label = base if n == 0 else f"{base}-{n + 1}"
        r.slug = re.sub(r"[^A-Za-z0-9._-]+", "_", r.label)


def _aggregate(values: list[float | None]) -> dict[str, float | int | None]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def _pm(agg: dict | None, digits: int = 4) -> str:
    if not agg or agg.get("mean") is None:
        return "–"
    text = H.fmt(agg["mean"], digits)
    if agg.get("std") is not None:
        text += f" ± {H.fmt(agg['std'], digits)}"
    return text


def compare_runs(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out/index.html``, ``out/comparison.json`` and ``out/figures/``; returns the page's path."""
    if not paths:
        raise CsgError("no runs given; usage: csg compare RUN [RUN ...] --out DIR")
    runs = [_Run(Path(p)) for p in paths]
    _unique_labels(runs)
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)

    per_run = {r.label: r.values() for r in runs}
    # STD baseline per (data, arch), falling back to the same data
    std_mis: dict[tuple[str, str], float] = {}
    for key in {(r.data, r.arch) for r in runs}:
        vals = [per_run[r.label]["mis"] for r in runs if r.method == "std" and (r.data, r.arch) == key]
        vals = [v for v in vals if v is not None]
        if not vals:
            vals = [per_run[r.label]["mis"] for r in runs if r.method == "std" and r.data == key[0]
                    and per_run[r.label]["mis"] is not None]
        if vals:
            std_mis[key] = float(np.mean(vals))
    for r in runs:
        v = per_run[r.label]
        base = std_mis.get((r.data, r.arch))
        if base is not None and v["mis"] is not None and v["mis_ceiling"] is not None and v["mis_ceiling"] > base:
            v["gap_closed"] = (v["mis"] - base) / (v["mis_ceiling"] - base)
        else:
            v["gap_closed"] = None

    # group: STD first, then the order of appearance
    groups: "OrderedDict[tuple[str, str, str], list[_Run]]" = OrderedDict()
    for r in sorted(runs, key=lambda r: (r.method != "std",)):
        groups.setdefault((r.data, r.arch, r.method), []).append(r)
    keys = sorted({k for v in per_run.values() for k, x in v.items() if x is not None})
    rows = []
    for (data, arch, method), members in groups.items():
        agg = {k: _aggregate([per_run[m.label].get(k) for m in members]) for k in keys}
        rows.append({"method": method, "data": data, "arch": arch, "runs": [m.label for m in members],
                     "seeds": [m.seed for m in members], "values": agg})

    # ---- the main table
    loc_cols = [(f"{k}.{w}", f"{lab} {'IoU' if w == 'avg_iou' else w.upper()}") for k, lab, ws in LOCALIZATION_METHODS
                for w in ws if any(per_run[r.label].get(f"{k}.{w}") is not None for r in runs)]
    headers = ["method", "data", "arch", "runs", "accuracy", "MIS", "gap closed vs STD", "gate-MI agreement",
               "L1-density", "interval [1/C, rho]"] + [lab for _, lab in loc_cols]
    table_rows, classes = [], []
    for row in rows:
        a = row["values"]
        lo, hi = a.get("interval_low", {}).get("mean"), a.get("interval_high", {}).get("mean")
        interval = f"[{H.fmt(lo, 3)}, {H.fmt(hi, 3)}]" if lo is not None else "–"
        gap = "0 (baseline)" if row["method"] == "std" else _pm(a.get("gap_closed"), 3)
        table_rows.append([H.esc(row["method"]), H.esc(row["data"]), H.esc(row["arch"]), str(len(row["runs"])),
                           _pm(a.get("accuracy")), _pm(a.get("mis")), gap, _pm(a.get("gate_mi_agreement"), 3),
                           _pm(a.get("l1_density")), interval] + [_pm(a.get(c)) for c, _ in loc_cols])
        classes.append("")
    for ref in PAPER_TABLE1_CIFAR10:
        table_rows.append([H.esc(ref["method"]), ref["data"], ref["arch"], "paper", H.fmt(ref["accuracy"]),
                           H.fmt(ref["mis"]), "0 (baseline)" if ref["method"].startswith("std") else H.fmt(ref["gap_closed"], 3),
                           "–", H.fmt(ref["l1_density"]), ref["interval"]] + ["–"] * len(loc_cols))
        classes.append("ref")
    body = [H.section("Table 1: accuracy and interpretability",
                      '<p class="note">Mean ± sample standard deviation over the runs of each method. Gap closed '
                      "= (MIS − MIS<sub>STD</sub>) / (ceiling − MIS<sub>STD</sub>), ceiling = metrics "
                      "<code>mis_ceiling</code> or H(1/C). Italic rows: the published CIFAR-10 / ResNet-20 numbers "
                      "(Liang et al. 2020, Table 1) for reference.</p>"
                      + H.table(headers, table_rows, row_classes=classes, raw=True), anchor="table")]

    det_cols = sorted({k for r in runs for k in per_run[r.label] if k.startswith("detection.")})
    if det_cols:
        det_rows = [[H.esc(row["method"]), H.esc(row["data"])] + [_pm(row["values"].get(c), 3) for c in det_cols]
                    for row in rows]
        body.append(H.section("Adversarial detection error (adversarial.json)",
                              H.table(["method", "data"] + [c[len("detection."):] for c in det_cols], det_rows,
                                      raw=True), anchor="adversarial"))

    # per-run table with links to the run reports
    run_rows = []
    for r in runs:
        v = per_run[r.label]
        report = r.path / "report" / "index.html"
        name = (f'<a href="{H.rel_src(report, out)}">{H.esc(r.label)}</a>' if report.is_file() else H.esc(r.label))
        run_rows.append([name, H.esc(r.method), H.esc(str(r.seed)), H.fmt(v["accuracy"]), H.fmt(v["mis"]),
                         H.fmt(v["gap_closed"], 3), H.fmt(v["gate_mi_agreement"], 3), H.fmt(v["l1_density"]),
                         H.fmt(v.get("c_ic"))])
    body.append(H.section("Runs", H.table(["run", "method", "seed", "accuracy", "MIS", "gap closed",
                                           "gate-MI agreement", "L1-density", "C_IC"], run_rows, raw=True),
                          anchor="runs"))

    # ---- figures
    fig_entries: list[dict[str, str]] = []
    summary_figs = []
    labels_ = [f"{row['method']}\n{row['data']}" if len({r['data'] for r in rows}) > 1 else row["method"]
               for row in rows]
    mis_mean = [row["values"].get("mis", {}).get("mean") or 0.0 for row in rows]
    mis_std = [row["values"].get("mis", {}).get("std") or 0.0 for row in rows]
    ceilings = [v["mis_ceiling"] for v in per_run.values() if v["mis_ceiling"] is not None]
    p = F.bar_with_errors(figdir / "mis_by_method.png", labels_, mis_mean, mis_std, title="MIS by method (mean ± std)",
                          ylabel="MIS (nats)", reference={"ceiling H(1/C)": float(np.mean(ceilings))} if ceilings else None)
    summary_figs.append((p, "MIS per method with the ceiling; error bars: std over seeds."))
    rs = {r.label: (np.asarray(r.analysis["correlation"]["r_s"]["s"], dtype=float),
                    np.asarray([np.nan if x is None else x for x in r.analysis["correlation"]["r_s"]["r"]], dtype=float))
          for r in runs if r.analysis and isinstance(r.analysis.get("correlation", {}).get("r_s"), dict)}
    if rs:
        p = F.curves(figdir / "r_s_by_run.png", rs, title="r_s: share of filter pairs with weight correlation >= s",
                     xlabel="s", ylabel="r_s", logy=True)
        summary_figs.append((p, "r_s curves of every analysed run (the paper's Fig. 8)."))
    body.append(H.section("Summary figures", H.grid(H.figure(p, out, c) for p, c in summary_figs)))
    fig_entries += [{"path": Path(p).relative_to(out).as_posix(), "caption": c} for p, c in summary_figs]

    kinds = [("gate", "Gate"), ("mi", "MI matrix"), ("correlation", "Filter weight correlation"),
             ("removal", "Class-filter removal")]
    paired: dict[str, list[str]] = {k: [] for k, _ in kinds}
    for r in runs:
        drawn = matrix_figures(r.run, r.run.gate(), r.run.mi_matrix() if r.run.has("mi_matrix.npy") else None,
                               figdir, prefix=f"{r.slug}_")
        for kind, _title in kinds:
            if kind in ("gate", "mi"):
                if kind in drawn:
                    p, c = drawn[kind]
                    paired[kind].append(H.figure(p, out, f"{r.label} ({r.method}): {c}"))
                    fig_entries.append({"path": p.relative_to(out).as_posix(), "caption": f"{r.label}: {c}"})
                elif kind == "gate":
                    paired[kind].append(f'<figure><div class="missing">{H.esc(r.label)} ({H.esc(r.method)}): '
                                        "no gate</div></figure>")
                continue
            src = r.path / "figures" / f"analysis_{kind}.png"
            caption = next((f["caption"] for f in (r.analysis or {}).get("figures", [])
                            if isinstance(f, dict) and f.get("path") == f"figures/analysis_{kind}.png"), kind)
            if src.is_file():
                dst = figdir / f"{r.slug}_analysis_{kind}.png"
                atomic_write_bytes(dst, src.read_bytes())
                paired[kind].append(H.figure(dst, out, f"{r.label} ({r.method}): {caption}"))
                fig_entries.append({"path": dst.relative_to(out).as_posix(), "caption": f"{r.label}: {caption}"})
            else:
                paired[kind].append(f'<figure><div class="missing">{H.esc(r.label)}: run '
                                    f"<code>csg analyze {H.esc(r.path)}</code></div></figure>")
    for kind, title in kinds:
        if paired[kind]:
            body.append(H.section(f"{title}, run by run", '<div class="pair">' + "".join(paired[kind]) + "</div>",
                                  anchor=f"pair-{kind}"))

    result = {"runs": [{"label": r.label, "path": str(r.path), "method": r.method, "data": r.data, "arch": r.arch,
                        "seed": r.seed, "values": per_run[r.label]} for r in runs],
              "rows": rows, "reference": PAPER_TABLE1_CIFAR10, "figures": fig_entries}
    from ..analysis.runner import clean

    atomic_write_json(out / "comparison.json", clean(result))
    index = out / "index.html"
    subtitle = H.esc(f"{len(runs)} runs, {len(rows)} methods: " + ", ".join(r.label for r in runs))
    atomic_write_text(index, H.page("csg comparison", "".join(body), subtitle=subtitle))
    return index
