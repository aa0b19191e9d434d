"""``csg compare RUN... --out DIR``: a Table-1-style comparison of several runs.

One row per (data, arch, method); runs of the same method with different seeds
are aggregated as mean ± sample std. Columns: accuracy, MIS, the share of STD's
gap to the ceiling that the method closes,

    gap closed = (MIS - MIS_std) / (ceiling - MIS_std)

(``MIS_std`` = mean MIS of the STD runs on the same data and arch; ceiling =
metrics ``mis_ceiling`` if present, else ``H(1/C)``), gate-MI agreement, and
L1-density with its interval ``[1/C, rho]``. The published CIFAR-10 rows of
Table 1 are shown beside as a reference, and the gate, MI matrix, correlation and removal figures of every
run are placed side by side. When runs have ``localization.json`` or
``adversarial.json``, a Localization section (GradMap / ActivMap / CAM
Avg-IoU, AP20, AP30 per method, the paper's VOC totals, overlay figures run by
run) and an Adversarial section (clean accuracy, detector error per attack and
training size, black-box success rates, the paper's Tables 3 and 4, figures
run by run) follow the main table; runs with ``graph.json`` (``csg graph``) add an Explanatory graph table (node vs
raw-filter instability and few-shot part errors, one row per run) with their evaluation figures.
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
from . import sections as S
from .graph_section import graph_compare_section
from .run_report import _read_json, matrix_figures
from .sections import num as _num


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


def localization_totals(data: dict | None) -> dict[str, float]:
    """``{"gradmap.avg_iou": ..., "gradmap.ap20": ..., "gradmap.ap30": ..., ...}`` from localization.json, read
    defensively: each method's totals under ``total``/``overall``/``all`` (or the method's dict itself);
    metrics that are missing are left out."""
    out: dict[str, float] = {}
    for key, _label in S.LOC_METHODS:
        for metric, value in S.loc_total(data, key).items():
            if value is not None:
                out[f"{key}.{metric}"] = value
    return out


def detection_errors(data: dict | None) -> dict[str, float]:
    """``{"fgsm.500": mean error, ...}`` from adversarial.json's ``detection`` entry."""
    return {f"{a}.{n}": cell[0] for a, cells in S.detection_cells(data).items() for n, cell in cells.items()}


def detection_spreads(data: dict | None) -> dict[str, float]:
    """``{"fgsm.500": spread over the detector's repeats, ...}`` where adversarial.json gives one."""
    return {f"{a}.{n}": cell[1] for a, cells in S.detection_cells(data).items() for n, cell in cells.items()
            if cell[1] is not None}


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
        self.localization_json = _read_json(self.path / "localization.json") if self.run.has(
            "localization.json") else None
        self.adversarial_json = _read_json(self.path / "adversarial.json") if self.run.has(
            "adversarial.json") else None
        self.localization = localization_totals(self.localization_json)
        self.detection = detection_errors(self.adversarial_json)
        self.detection_spread = detection_spreads(self.adversarial_json)
        self.blackbox = {k: v for k, v in S.blackbox_rates(self.adversarial_json).items() if v is not None}
        self.adv_clean_accuracy = _num((self.adversarial_json or {}).get("clean_accuracy"))
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
        out.update({f"blackbox.{k}": v for k, v in self.blackbox.items()})
        if self.adv_clean_accuracy is not None:
            out["adversarial_clean_accuracy"] = self.adv_clean_accuracy
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


def _pct_agg(agg: dict | None, single_spread: float | None = None, digits: int = 2) -> str:
    """A share as percent, mean ± std over the runs; for a single run, ± ``single_spread`` (its repeats)."""
    if not agg or agg.get("mean") is None:
        return "–"
    spread = agg.get("std") if agg.get("n", 0) > 1 else single_spread
    return S.pct_pm(agg["mean"], spread, digits)


def _attack_order(key: str):
    attack, _, size = key.partition(".")
    order = {"fgsm": 0, "pgd": 1, "cw": 2}
    try:
        n = int(size)
    except ValueError:
        n = 1 << 62
    return (order.get(attack, 9), attack, n, size)


def _copied_figures(r: "_Run", data: dict | None, figdir: Path) -> list[tuple[str, Path, str]]:
    """Copy the figures a run's JSON lists into the comparison's folder: ``[(name, copy, caption)]``."""
    got = []
    for fig in (data or {}).get("figures", []) or []:
        fig = {"path": fig} if isinstance(fig, str) else fig
        if not isinstance(fig, dict) or not isinstance(fig.get("path"), str):
            continue
        src = r.path / fig["path"]
        name = Path(fig["path"]).name
        dst = figdir / f"{r.slug}_{name}"
        if src.is_file():
            atomic_write_bytes(dst, src.read_bytes())
        got.append((name, dst, str(fig.get("caption", name))))
    return got


def _paired(runs: list["_Run"], attr: str, out: Path, figdir: Path, command: str,
            fig_entries: list[dict]) -> str:
    """One ``.pair`` row per figure name, one column per run that has the result; a method none of whose
    runs has it gets one visible note with the command (seeds without it are not listed one by one)."""
    methods_with = {(r.data, r.arch, r.method) for r in runs if getattr(r, attr) is not None}
    seen: set = set()
    shown = []
    for r in runs:
        key = (r.data, r.arch, r.method)
        if getattr(r, attr) is not None or (key not in methods_with and key not in seen):
            shown.append(r)
            seen.add(key)
    runs = shown
    by_name: "OrderedDict[str, dict[str, tuple[Path, str]]]" = OrderedDict()
    for r in runs:
        for name, dst, caption in _copied_figures(r, getattr(r, attr), figdir):
            by_name.setdefault(name, {})[r.label] = (dst, caption)
    html_rows = []
    for name, per in by_name.items():
        cells = []
        for r in runs:
            if r.label in per:
                dst, caption = per[r.label]
                cells.append(H.figure(dst, out, f"{r.label} ({r.method}): {caption}"))
                if dst.is_file():
                    fig_entries.append({"path": dst.relative_to(out).as_posix(), "caption": f"{r.label}: {caption}"})
            elif getattr(r, attr) is None:
                cells.append(f'<figure><div class="missing">{H.esc(r.label)}: run <code>csg {command} '
                             f"{H.esc(r.path)}</code></div></figure>")
            else:
                cells.append(f'<figure><div class="missing">{H.esc(r.label)}: no {H.esc(name)}</div></figure>')
        html_rows.append('<div class="pair">' + "".join(cells) + "</div>")
    return "".join(html_rows)


def _result_sections(runs: list["_Run"], rows: list[dict], per_run: dict, out: Path,
                     figdir: Path) -> tuple[list[str], list[dict]]:
    """The Localization and Adversarial sections, STD and CSG side by side: a table per section with the
    paper's figures as reference rows, then each figure of the runs paired run by run."""
    sections: list[str] = []
    fig_entries: list[dict] = []

    # ---- localization
    loc_cols = [(f"{k}.{m}", f"{lab} {mlab}") for k, lab in S.LOC_METHODS for m, mlab in S.LOC_METRICS
                if any(per_run[r.label].get(f"{k}.{m}") is not None for r in runs)]
    if loc_cols:
        trows, classes = [], []
        for row in rows:
            n_with = max(row["values"].get(c, {}).get("n") or 0 for c, _ in loc_cols)  # runs that were localized
            trows.append([H.esc(row["method"]), H.esc(row["data"]), H.esc(row["arch"]), str(n_with)]
                         + [_pm(row["values"].get(c)) for c, _ in loc_cols])
            classes.append("")
        for which in ("csg", "std"):
            ref = S.PAPER_LOCALIZATION_VOC[which]
            trows.append([f"{which} (paper)", "PASCAL VOC animals", "ResNet-152", "paper"]
                         + [H.fmt(ref.get(c.split(".")[0], {}).get(c.split(".")[1])) for c, _ in loc_cols])
            classes.append("ref")
        inner = ('<p class="note">Totals of <code>csg localize</code> (METHOD.md section 5), mean ± sample std '
                 "over the runs of each method. Italic rows: the paper's VOC / ResNet-152 totals, for scale.</p>"
                 + H.table(["method", "data", "arch", "runs"] + [lab for _, lab in loc_cols], trows,
                           row_classes=classes, raw=True)
                 + _paired(runs, "localization_json", out, figdir, "localize", fig_entries))
        sections.append(H.section("Localization (localization.json), run by run", inner, anchor="localization"))

    # ---- adversarial
    det_cols = sorted({k[len("detection."):] for r in runs for k in per_run[r.label] if k.startswith("detection.")},
                      key=_attack_order)
    bb_cols = sorted({k[len("blackbox."):] for r in runs for k in per_run[r.label] if k.startswith("blackbox.")})
    has_acc = any(per_run[r.label].get("adversarial_clean_accuracy") is not None for r in runs)
    if det_cols or bb_cols or has_acc:
        by_label = {r.label: r for r in runs}
        trows, classes = [], []
        for row in rows:
            v = row["values"]

            def repeat_spread(col: str) -> float | None:
                # the detector's own spread, when a single run of the row has this result
                have = [by_label[m] for m in row["runs"] if col in by_label[m].detection]
                return have[0].detection_spread.get(col) if len(have) == 1 else None

            n_with = max(v.get(k, {}).get("n") or 0 for k in ["adversarial_clean_accuracy"]
                         + [f"detection.{c}" for c in det_cols] + [f"blackbox.{c}" for c in bb_cols])
            trows.append([H.esc(row["method"]), H.esc(row["data"]), str(n_with),
                          _pct_agg(v.get("adversarial_clean_accuracy"))]
                         + [_pct_agg(v.get(f"detection.{c}"), repeat_spread(c)) for c in det_cols]
                         + [_pct_agg(v.get(f"blackbox.{c}"), None, 1) for c in bb_cols])
            classes.append("")
        for which in ("std", "csg"):
            det_ref = S.PAPER_DETECTION_CIFAR10[which]
            bb_ref = S.PAPER_BLACKBOX_CIFAR10[which]
            cells = []
            for c in det_cols:
                attack, _, size = c.partition(".")
                sizes = dict(zip(S.PAPER_DETECTION_SIZES, det_ref.get(attack, ())))
                cells.append(f"{sizes[size]:.2f}" if size in sizes else "–")
            trows.append([f"{which} (paper)", "CIFAR-10 (ResNet-20)", "paper", f"{bb_ref['clean_accuracy']:.2f}"]
                         + cells + [f"{bb_ref[c]:.1f}" if c in bb_ref else "–" for c in bb_cols])
            classes.append("ref")
        headers = (["method", "data", "runs", "clean accuracy %"]
                   + [f"{c.partition('.')[0]} detector error % @{c.partition('.')[2]}/class" for c in det_cols]
                   + [f"{c} success %" for c in bb_cols])
        inner = ('<p class="note">Results of <code>csg attack</code> (METHOD.md section 6): random-forest '
                 "detector error per white-box attack and training images per class, and black-box success "
                 "rates. Mean ± sample std over the runs of a method; where one run has the result, ± the "
                 "spread over the detector's seeded repeats. Italic rows: the paper's CIFAR-10 / ResNet-20 Tables 3 "
                 "and 4.</p>"
                 + H.table(headers, trows, row_classes=classes, raw=True)
                 + _paired(runs, "adversarial_json", out, figdir, "attack", fig_entries))
        sections.append(H.section("Adversarial detection error and black-box attacks (adversarial.json), "
                                  "run by run", inner, anchor="adversarial"))
    return sections, fig_entries


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
    # localization and adversarial results have their own sections below
    headers = ["method", "data", "arch", "runs", "accuracy", "MIS", "gap closed vs STD", "gate-MI agreement",
               "L1-density", "interval [1/C, rho]"]
    table_rows, classes = [], []
    for row in rows:
        a = row["values"]
        lo, hi = a.get("interval_low", {}).get("mean"), a.get("interval_high", {}).get("mean")
        interval = f"[{H.fmt(lo, 3)}, {H.fmt(hi, 3)}]" if lo is not None else "–"
        gap = "0 (baseline)" if row["method"] == "std" else _pm(a.get("gap_closed"), 3)
        table_rows.append([H.esc(row["method"]), H.esc(row["data"]), H.esc(row["arch"]), str(len(row["runs"])),
                           _pm(a.get("accuracy")), _pm(a.get("mis")), gap, _pm(a.get("gate_mi_agreement"), 3),
                           _pm(a.get("l1_density")), interval])
        classes.append("")
    for ref in PAPER_TABLE1_CIFAR10:
        table_rows.append([H.esc(ref["method"]), ref["data"], ref["arch"], "paper", H.fmt(ref["accuracy"]),
                           H.fmt(ref["mis"]), "0 (baseline)" if ref["method"].startswith("std") else H.fmt(ref["gap_closed"], 3),
                           "–", H.fmt(ref["l1_density"]), ref["interval"]])
        classes.append("ref")
    body = [H.section("Table 1: accuracy and interpretability",
                      '<p class="note">Mean ± sample standard deviation over the runs of each method. Gap closed '
                      "= (MIS − MIS<sub>STD</sub>) / (ceiling − MIS<sub>STD</sub>), ceiling = metrics "
                      "<code>mis_ceiling</code> or H(1/C). Italic rows: the published CIFAR-10 / ResNet-20 numbers "
                      "(Liang et al. 2020, Table 1) for reference.</p>"
                      + H.table(headers, table_rows, row_classes=classes, raw=True), anchor="table")]

    result_sections, result_figs = _result_sections(runs, rows, per_run, out, figdir)
    body += result_sections
    graph_html = graph_compare_section(runs, out, figdir, result_figs)  # csg graph: nodes vs raw filters
    if graph_html:
        body.append(graph_html)

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
    fig_entries: list[dict[str, str]] = list(result_figs)
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
