"""``csg compare RUN... --out DIR``: the comparison page of several runs (data: :mod:`.comparison`).

Sections: Table 1 (one row per data, arch and method, seeds as mean ± std: accuracy, MIS, gap closed,
both gate agreements, L1-density with its interval, training time; the paper's CIFAR-10 rows beside);
each method's paired difference from STD with its 95% interval, marking the ones that exclude 0; the
localization and adversarial results when the runs have them (with the paper's tables as reference
rows); the runs with links to their reports and atlases; summary figures; and the gate, MI, correlation,
removal, localization and adversarial figures of every run side by side. Writes ``index.html``,
``comparison.json`` (schema ``csg.comparison/2``) and ``figures/``.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..core.run_files import ATLAS_DIR, FIGURES, MI_MATRIX, REPORT_DIR
from ..metrics import T_EQUAL, mis_ceiling
from . import figures as F
from . import html as H
from . import sections as S
from .atlas_page import atlas_links, atlas_section
from .graph_section import graph_compare_section
from .markdown import comparison_markdown
from .comparison import MAIN_METRICS, RunResults, compare, localization_keys, metric_label
from .run_report import matrix_figures


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


def _pm(agg: dict | None, digits: int = 4, scale: float = 1.0) -> str:
    if not agg or agg.get("mean") is None:
        return "–"
    text = H.fmt(agg["mean"] * scale, digits)
    if agg.get("std") is not None:
        text += f" ± {H.fmt(agg['std'] * scale, digits)}"
    return text


def _signed(x: float | None, digits: int, scale: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x * scale:+.{digits}f}"


def difference_cell(d: dict | None, digits: int = 4, scale: float = 1.0) -> str:
    """``+0.0123 [+0.0040, +0.0206]`` with a mark when the interval excludes 0 (HTML)."""
    if d is None:
        return "–"
    text = _signed(d["mean"], digits, scale)
    if np.isfinite(d["low"]) and np.isfinite(d["high"]):
        text += f" [{_signed(d['low'], digits, scale)}, {_signed(d['high'], digits, scale)}]"
    elif d.get("kind") == T_EQUAL:
        text += f" [no interval: {d['n']} equal differences]"
    else:
        text += " [no interval]"
    if d.get("excludes_zero"):
        return f'<strong title="the 95% interval excludes 0">{H.esc(text)} ✓</strong>'
    return H.esc(text)


def _copied_figures(r: RunResults, data: dict | None, figdir: Path) -> list[tuple[str, Path, str]]:
    """Copy the figures a run's result lists into the comparison's folder: ``[(name, copy, caption)]``."""
    got = []
    for fig in (data or {}).get("figures", []) or []:
        if not isinstance(fig, dict) or not isinstance(fig.get("path"), str):
            continue
        src = r.path / fig["path"]
        name = Path(fig["path"]).name
        dst = figdir / f"{r.slug}_{name}"
        if src.is_file():
            atomic_write_bytes(dst, src.read_bytes())
            got.append((name, dst, str(fig.get("caption", name))))
    return got


def _paired_figures(runs: list[RunResults], attr: str, out: Path, figdir: Path, command: str,
                    fig_entries: list[dict]) -> str:
    """One row per figure name, one column per run with the result; a method none of whose runs has it
    gets one note with the command."""
    runs = [r for r in runs if r.recorded_in is None]  # recorded runs (an earlier comparison.json) have no figures
    have = {(r.data, r.arch, r.method) for r in runs if getattr(r, attr) is not None}
    shown, seen = [], set()
    for r in runs:
        key = (r.data, r.arch, r.method)
        if getattr(r, attr) is not None or (key not in have and key not in seen):
            shown.append(r)
            seen.add(key)
    by_name: "OrderedDict[str, dict[str, tuple[Path, str]]]" = OrderedDict()
    for r in shown:
        for name, dst, caption in _copied_figures(r, getattr(r, attr), figdir):
            by_name.setdefault(name, {})[r.label] = (dst, caption)
    rows = []
    for name, per in by_name.items():
        cells = []
        for r in shown:
            if r.label in per:
                dst, caption = per[r.label]
                cells.append(H.figure(dst, out, f"{r.label} ({r.method}): {caption}"))
                fig_entries.append({"path": dst.relative_to(out).as_posix(), "caption": f"{r.label}: {caption}"})
            elif getattr(r, attr) is None:
                cells.append(f'<figure><div class="missing">{H.esc(r.label)}: run <code>csg {command} '
                             f"{H.esc(r.path)}</code></div></figure>")
        rows.append('<div class="pair">' + "".join(cells) + "</div>")
    return "".join(rows)


def _differences_table(diffs: list[dict], metrics: list[str], *, scale: float = 1.0, digits: int = 4) -> str:
    """Rows: method (vs STD); columns: metrics; cells: mean difference [95% interval]."""
    methods = list(OrderedDict.fromkeys((d["data"], d["arch"], d["method"]) for d in diffs))
    metrics = [m for m in metrics if any(d["metric"] == m for d in diffs)]
    if not methods or not metrics:
        return ""
    index = {(d["data"], d["arch"], d["method"], d["metric"]): d for d in diffs}
    rows = []
    for data, arch, method in methods:
        cells = [H.esc(f"{method} − std"), H.esc(data), H.esc(arch)]
        basis = set()
        for m in metrics:
            d = index.get((data, arch, method, m))
            cells.append(difference_cell(d, digits, scale))
            if d is not None:
                basis.add(f"{d['kind']}, n={d['n']}")
        cells.append(H.esc("; ".join(sorted(basis))))
        rows.append(cells)
    return H.table(["difference", "data", "arch"] + [metric_label(m) for m in metrics] + ["interval from"], rows,
                   raw=True)


def _table1(rows: list[dict]) -> str:
    headers = ["method", "data", "arch", "runs", "accuracy", "MIS", "gap closed vs STD", "gate-MI agreement",
               "gate-activation agreement", "L1-density", "interval [1/C, rho]", "training time (s)"]
    body, classes = [], []
    for row in rows:
        a = row["values"]
        lo, hi = a.get("interval_low", {}).get("mean"), a.get("interval_high", {}).get("mean")
        body.append([H.esc(row["method"]), H.esc(row["data"]), H.esc(row["arch"]), str(len(row["runs"])),
                     _pm(a.get("accuracy")), _pm(a.get("mis")),
                     "0 (baseline)" if row["method"] == "std" else _pm(a.get("gap_closed"), 1, 100) + " %",
                     _pm(a.get("gate_mi_agreement"), 3), _pm(a.get("gate_activation_agreement"), 3),
                     _pm(a.get("l1_density")), f"[{H.fmt(lo, 3)}, {H.fmt(hi, 3)}]" if lo is not None else "–",
                     _pm(a.get("training_seconds"), 0)])
        classes.append("")
    for ref in PAPER_TABLE1_CIFAR10:
        body.append([H.esc(ref["method"]), ref["data"], ref["arch"], "paper", H.fmt(ref["accuracy"]),
                     H.fmt(ref["mis"]), "0 (baseline)" if ref["method"].startswith("std")
                     else H.fmt(100 * ref["gap_closed"], 1) + " %", "–", "–", H.fmt(ref["l1_density"]),
                     ref["interval"], "200 epochs"])
        classes.append("ref")
    return H.table(headers, body, row_classes=classes, raw=True)


def _localization_section(rows, diffs, runs, out, figdir, fig_entries) -> str | None:
    cols = [c for c in localization_keys({k for row in rows for k in row["values"]})
            if any(row["values"].get(c, {}).get("n") for row in rows)]
    if not cols:
        return None
    body, classes = [], []
    for row in rows:
        n = max(row["values"].get(c, {}).get("n") or 0 for c in cols)
        body.append([H.esc(row["method"]), H.esc(row["data"]), str(n)] + [_pm(row["values"].get(c), 3) for c in cols])
        classes.append("")
    for which in ("csg", "std"):
        ref = S.PAPER_LOCALIZATION_VOC[which]
        body.append([f"{which} (paper)", "PASCAL VOC animals, ResNet-152", "paper"]
                    + [H.fmt(ref.get(c.split(".")[1], {}).get(c.split(".")[2]), 4) for c in cols])
        classes.append("ref")
    inner = ('<p class="note">Totals of <code>csg localize</code> (METHOD.md section 5), mean ± sample std over '
             "the runs of each method; below, each method's paired difference from STD with its 95% interval. "
             "Italic rows: the paper's VOC / ResNet-152 totals, for scale.</p>"
             + H.table(["method", "data", "runs"] + [metric_label(c) for c in cols], body, row_classes=classes,
                       raw=True)
             + _differences_table(diffs, cols, digits=3)
             + _paired_figures(runs, "localization", out, figdir, "localize", fig_entries))
    return H.section("Localization (localization.json)", inner, anchor="localization")


def _adversarial_section(rows, diffs, runs, out, figdir, fig_entries) -> str | None:
    det = sorted({k for row in rows for k in row["values"] if k.startswith("detection.")
                  and row["values"][k].get("n")}, key=_attack_order)
    bb = sorted({k for row in rows for k in row["values"] if k.startswith("blackbox.") and row["values"][k].get("n")})
    if not det and not bb:
        return None
    body, classes = [], []
    for row in rows:
        n = max(row["values"].get(c, {}).get("n") or 0 for c in det + bb)
        body.append([H.esc(row["method"]), H.esc(row["data"]), str(n),
                     _pm(row["values"].get("adversarial_clean_accuracy"), 2, 100)]
                    + [_pm(row["values"].get(c), 2, 100) for c in det + bb])
        classes.append("")
    for which in ("std", "csg"):
        cells = []
        for c in det:
            _, attack, size = c.split(".", 2)
            sizes = dict(zip(S.PAPER_DETECTION_SIZES, S.PAPER_DETECTION_CIFAR10[which].get(attack, ())))
            cells.append(f"{sizes[size]:.2f}" if size in sizes else "–")
        ref = S.PAPER_BLACKBOX_CIFAR10[which]
        cells += [f"{ref[c.split('.', 1)[1]]:.1f}" if c.split(".", 1)[1] in ref else "–" for c in bb]
        body.append([f"{which} (paper)", "CIFAR-10, ResNet-20", "paper", f"{ref['clean_accuracy']:.2f}"] + cells)
        classes.append("ref")
    inner = ('<p class="note">Results of <code>csg attack</code> (METHOD.md section 6), in %: random-forest '
             "detector error per white-box attack and training images per class, and black-box success rates; "
             "mean ± sample std over the runs of a method, then each method's difference from STD with its 95% "
             "interval (one run each: a bootstrap over each model's own test items). Italic rows: the paper's "
             "CIFAR-10 Tables 3 and 4.</p>"
             + H.table(["method", "data", "runs", "clean accuracy %"] + [metric_label(c) + " %" for c in det + bb], body,
                       row_classes=classes, raw=True)
             + _differences_table(diffs, det + bb, scale=100, digits=2)
             + _paired_figures(runs, "adversarial", out, figdir, "attack", fig_entries))
    return H.section("Adversarial detection and black-box attacks (adversarial.json)", inner, anchor="adversarial")


def _attack_order(key: str):
    _, attack, size = (key.split(".", 2) + ["", ""])[:3]
    try:
        n = int(size)
    except ValueError:
        n = 1 << 62
    return ({"fgsm": 0, "pgd": 1, "cw": 2}.get(attack, 9), attack, n)


def _runs_table(runs: list[RunResults], per_run: dict, out: Path) -> str:
    rows = []
    for r in runs:
        v = per_run[r.label]
        links = []
        for what, target in (("report", r.path / REPORT_DIR / "index.html"), ("atlas", r.path / ATLAS_DIR / "index.html")):
            if target.is_file():
                links.append(f'<a href="{H.rel_src(target, out)}">{what}</a>')
        if r.recorded_in is not None:
            links.append(f"recorded in {H.esc(r.recorded_in)}")
        rows.append([H.esc(r.label), H.esc(r.method), H.esc(str(r.seed)), H.fmt(v.get("accuracy")), H.fmt(v.get("mis")),
                     H.fmt(v.get("gap_closed"), 3), H.fmt(v.get("gate_mi_agreement"), 3),
                     H.fmt(v.get("gate_activation_agreement"), 3), H.fmt(v.get("l1_density")), H.fmt(v.get("c_ic")),
                     " · ".join(links) or "–"])
    return H.table(["run", "method", "seed", "accuracy", "MIS", "gap closed", "gate-MI agreement",
                    "gate-activation agreement", "L1-density", "C_IC", "pages"], rows, raw=True)


def compare_runs(paths: Sequence[str | Path], out: str | Path, *, reps: int = 2000) -> Path:
    """Write ``out/index.html``, ``out/comparison.json`` and ``out/figures/``; returns the page's path."""
    result, runs = compare(paths, reps=reps)
    out = Path(out)
    figdir = out / FIGURES
    figdir.mkdir(parents=True, exist_ok=True)
    per_run = {r["label"]: r["values"] for r in result["runs"]}
    rows, diffs = result["rows"], result["differences"]
    fig_entries: list[dict] = []
    main_metrics = [m for m in MAIN_METRICS]
    body = [H.section("Table 1: accuracy and interpretability",
                      '<p class="note">Mean ± sample standard deviation over the runs (seeds) of each method. Gap '
                      "closed = (MIS − MIS<sub>STD</sub>) / (ceiling − MIS<sub>STD</sub>), ceiling H(1/C); "
                      "gate-MI agreement: filters whose argmax class is the same in the gate (ICNN: its "
                      "category, PICNN: Q) and in the MI matrix; gate-activation agreement: the same against "
                      "the class of each filter's largest mean activation (MI is unsigned). Italic rows: the "
                      "published CIFAR-10 / ResNet-20 numbers (Liang et al. 2020, Table 1).</p>"
                      + _table1(rows), anchor="table")]
    diff_table = _differences_table(diffs, main_metrics)
    if diff_table:
        body.append(H.section("Differences from STD, with 95% intervals",
                              '<p class="note">Method minus STD on the same data and architecture. Several seeds: '
                              "one difference per seed (gap closed against that seed's own STD run), mean and t "
                              "interval; one seed: a bootstrap over the test images (MIS and gap closed: subsamples "
                              "without replacement). ✓ marks an interval that excludes 0.</p>" + diff_table,
                              anchor="differences"))
    for section in (_localization_section(rows, diffs, runs, out, figdir, fig_entries),
                    _adversarial_section(rows, diffs, runs, out, figdir, fig_entries),
                    graph_compare_section(runs, out, figdir, fig_entries)):   # csg graph: nodes vs raw filters
        if section:
            body.append(section)
    body.append(H.section("Runs", _runs_table(runs, per_run, out), anchor="runs"))
    atlas_hrefs, atlas_pair = atlas_links([(r.label, r.path) for r in runs], out)  # the runs' unit atlases
    if atlas_hrefs:
        body.append(atlas_section(atlas_hrefs, atlas_pair, out))
    if result["notes"]:
        body.append("".join(f'<p class="note">{H.esc(n)}</p>' for n in result["notes"]))

    summary = []
    names = [row["method"] if len({r["data"] for r in rows}) == 1 else f"{row['method']}\n{row['data']}"
             for row in rows]
    ceilings = [v["mis_ceiling"] for v in per_run.values() if v.get("mis_ceiling") is not None]
    p = F.bar_with_errors(figdir / "mis_by_method.png", names,
                          [row["values"].get("mis", {}).get("mean") or 0.0 for row in rows],
                          [row["values"].get("mis", {}).get("std") or 0.0 for row in rows],
                          title="MIS by method (mean ± std over seeds)", ylabel="MIS (nats)",
                          reference={"ceiling H(1/C)": float(np.mean(ceilings))} if ceilings else None)
    summary.append((p, "MIS per method with the ceiling; error bars: std over seeds."))
    rs = {r.label: (np.asarray(r.analysis["correlation"]["r_s"]["s"], dtype=float),
                    np.asarray([np.nan if x is None else x for x in r.analysis["correlation"]["r_s"]["r"]], dtype=float))
          for r in runs if r.analysis and isinstance((r.analysis.get("correlation") or {}).get("r_s"), dict)}
    if rs:
        p = F.curves(figdir / "r_s_by_run.png", rs, title="r_s: share of filter pairs with weight correlation >= s",
                     xlabel="s", ylabel="r_s", logy=True)
        summary.append((p, "r_s curves of every analysed run (the paper's Fig. 8)."))
    body.append(H.section("Summary figures", H.grid(H.figure(p, out, c) for p, c in summary)))
    fig_entries += [{"path": Path(p).relative_to(out).as_posix(), "caption": c} for p, c in summary]
    body += _matrix_sections(runs, out, figdir, fig_entries)

    result["figures"] = fig_entries
    result["reference"] = PAPER_TABLE1_CIFAR10
    atomic_write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", comparison_markdown(result))
    index = out / "index.html"
    subtitle = H.esc(f"{len(runs)} runs, {len(rows)} methods: " + ", ".join(r.label for r in runs))
    atomic_write_text(index, H.page("csg comparison", "".join(body), subtitle=subtitle))
    return index


def _matrix_sections(runs: list[RunResults], out: Path, figdir: Path, fig_entries: list[dict]) -> list[str]:
    kinds = [("gate", "Gate"), ("mi", "MI matrix"), ("correlation", "Filter weight correlation"),
             ("removal", "Class-filter removal")]
    paired: dict[str, list[str]] = {k: [] for k, _ in kinds}
    for r in (r for r in runs if r.recorded_in is None):  # recorded runs have no files to draw from
        drawn = matrix_figures(r.run, r.run.gate(), r.run.mi_matrix() if r.run.has(MI_MATRIX) else None, figdir,
                               prefix=f"{r.slug}_")
        for kind in ("gate", "mi"):
            if kind in drawn:
                p, c = drawn[kind]
                paired[kind].append(H.figure(p, out, f"{r.label} ({r.method}): {c}"))
                fig_entries.append({"path": p.relative_to(out).as_posix(), "caption": f"{r.label}: {c}"})
            elif kind == "gate":
                paired[kind].append(f'<figure><div class="missing">{H.esc(r.label)} ({H.esc(r.method)}): no '
                                    "gate</div></figure>")
        figures = {Path(f["path"]).name: f for f in (r.analysis or {}).get("figures", []) if isinstance(f, dict)}
        for kind in ("correlation", "removal"):
            name = f"analysis_{kind}.png"
            src = r.path / FIGURES / name
            if src.is_file():
                dst = figdir / f"{r.slug}_{name}"
                atomic_write_bytes(dst, src.read_bytes())
                caption = figures.get(name, {}).get("caption", kind)
                paired[kind].append(H.figure(dst, out, f"{r.label} ({r.method}): {caption}"))
                fig_entries.append({"path": dst.relative_to(out).as_posix(), "caption": f"{r.label}: {caption}"})
            else:
                paired[kind].append(f'<figure><div class="missing">{H.esc(r.label)}: run '
                                    f"<code>csg analyze {H.esc(r.path)}</code></div></figure>")
    return [H.section(f"{title}, run by run", '<div class="pair">' + "".join(paired[k]) + "</div>",
                      anchor=f"pair-{k}") for k, title in kinds if paired[k]]
