"""``csg report RUN``: one self-contained HTML page per run, ``RUN/report/index.html``.

Sections: a header with the key numbers, training curves from ``log.jsonl``,
the gate and MI matrix heatmaps (filters in the same order, by the gate's
argmax class) and the overlap of their argmax classes, a Localization section
when ``localization.json`` exists (``csg localize``: GradMap / ActivMap / CAM
totals and per-class Avg-IoU, AP20, AP30, overlay figures), an Adversarial
section when ``adversarial.json`` exists (``csg attack``: detector error per
attack and training size with its spread, black-box success rates, clean
accuracy, figures), an Explanatory graph section when ``graph.json`` exists (``csg graph``: layers,
location instability and few-shot part errors of nodes vs raw filters, figures), every figure listed by any other ``RUN/*.json`` with a
``figures`` list (one section per file), the metrics table and the
configuration. Figures drawn here go to ``RUN/figures/``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import atomic_write_text, to_json
from . import figures as F
from . import html as H
from . import sections as S
from .graph_section import graph_section
from .sections import adversarial_section, localization_section
from .sections import num as _num

REPORT_DIR = "report"
SKIP_JSON = {"config.json", "metrics.json"}
#: files with a section of their own: (file, title, anchor, section builder, the command that writes it)
DEDICATED_JSON = (
    ("localization.json", "Localization (localization.json)", "localization", localization_section, "localize"),
    ("adversarial.json", "Adversarial samples (adversarial.json)", "adversarial", adversarial_section, "attack"),
    ("graph.json", "Explanatory graph (graph.json)", "graph", graph_section, "graph"),
)


def flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``; lists stay values."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def matrix_figures(run, gate: np.ndarray | None, mi: np.ndarray | None, figdir: Path,
                   prefix: str = "report_") -> dict[str, tuple[Path, str]]:
    """Gate heatmap, MI heatmap (same filter order) and the argmax overlap.

    Returns ``{"gate" | "mi" | "overlap": (path, caption)}`` for those that could be drawn.
    """
    out: dict[str, tuple[Path, str]] = {}
    order = owner_gate = None
    names = run.config.get("classes")
    C_all = gate.shape[0] if gate is not None else (np.asarray(mi).shape[1] if mi is not None else 0)
    names = names if isinstance(names, list) and len(names) == C_all else None
    if gate is not None:
        order, owner_gate = F.filter_order(gate)
        C, K = gate.shape
        out["gate"] = ((F.class_filter_heatmap(figdir / f"{prefix}gate.png", gate, order=order, vmin=0, vmax=1,
                                           title=f"class-specific gate G ({C} classes x {K} filters)",
                                           cbar_label="gate value", class_names=names),
                    "The gate G: which classes each filter serves (filters sorted by their argmax class; "
                    "a class-specific gate shows a staircase)."))
    if mi is not None:
        M = np.asarray(mi, dtype=np.float64).T  # C x K
        if order is None:
            order, _ = F.filter_order(M)
        label = "filters in the gate's order" if gate is not None else "filters sorted by argmax class"
        out["mi"] = ((F.class_filter_heatmap(figdir / f"{prefix}mi.png", M, order=order, vmin=0, cmap="magma",
                                           title=f"mutual information MI(a_k; 1[y = c]) ({label})",
                                           cbar_label="MI (nats)", class_names=names),
                    f"The MI matrix (transposed to classes x filters, {label}); MIS = mean over filters of "
                    "the column maximum."))
    if gate is not None and mi is not None and gate.shape == np.asarray(mi).T.shape:
        mi_owner = np.asarray(mi).argmax(axis=1)
        agree = int((owner_gate == mi_owner).sum())
        out["overlap"] = ((F.overlap_figure(figdir / f"{prefix}overlap.png", owner_gate, mi_owner, gate.shape[0],
                                              class_names=names),
                    f"Argmax class of each filter in the gate vs in the MI matrix: {agree} of "
                    f"{gate.shape[1]} filters agree (the paper's Fig. 4c: the maxima almost overlap)."))
    return out


def _analysis_summary(data: dict) -> str:
    """Key numbers of analysis.json as a small table, one block per registered analysis (read by schema)."""
    from ..analysis.base import section
    from ..analysis.registry import ANALYSES

    rows = []
    for analysis in ANALYSES:
        summary = section(data, analysis.name, analysis.schema)
        if summary is not None:
            rows.extend(analysis.key_numbers(summary))
    notes = "".join(f'<p class="note">{H.esc(n)}</p>' for n in data.get("notes", []) or [])
    return (H.table(["quantity", "value"], rows) if rows else "") + notes


def _generic_summary(data: dict) -> str:
    rows = [(k, v) for k, v in data.items() if _num(v) is not None or isinstance(v, str) and k != "run"]
    return H.table(["key", "value"], rows) if rows else ""


def _figures_from_json(run_path: Path, page_dir: Path, name: str, data: dict) -> str:
    items = []
    for fig in data.get("figures", []):
        if isinstance(fig, str):
            fig = {"path": fig}
        if not isinstance(fig, dict) or not isinstance(fig.get("path"), str):
            continue
        items.append(H.figure(run_path / fig["path"], page_dir, str(fig.get("caption", fig["path"]))))
    summary = _analysis_summary(data) if name == "analysis.json" else _generic_summary(data)
    return summary + H.grid(items, wide=name == "analysis.json")


def build_run_report(run, *, out: str | Path | None = None) -> Path:
    """Write the run's report (atomically) and return the path of ``index.html``."""
    cfg = run.config
    metrics = run.metrics()
    run_path = run.path
    page_dir = Path(out) if out is not None else run_path / REPORT_DIR
    page_dir.mkdir(parents=True, exist_ok=True)
    figdir = run.figures_dir
    name = run_path.resolve().name
    method = cfg.get("method", metrics.get("method", "?"))
    C = metrics.get("num_classes", cfg.get("num_classes"))
    K = metrics.get("num_filters")

    head_cards = [("method", method), ("data", cfg.get("data", "?")), ("arch", cfg.get("arch", "?")),
                  ("epochs", cfg.get("epochs")), ("accuracy", _num(metrics.get("accuracy"))),
                  ("MIS", _num(metrics.get("mis"))), ("L1-density", _num(metrics.get("l1_density")))]
    if "l1_interval" in metrics and isinstance(metrics["l1_interval"], list):
        lo, hi = (metrics["l1_interval"] + [None, None])[:2]
        head_cards.append(("interval [1/C, rho]", f"[{H.fmt(lo, 3)}, {H.fmt(hi, 3)}]"))
    subtitle = H.esc(f"{method} on {cfg.get('data', '?')} with {cfg.get('arch', '?')}"
                     + (f", {C} classes" if C else "") + (f", {K} filters" if K else "")
                     + f" — {run_path.resolve()}")
    body = [H.cards(head_cards)]
    if not metrics:
        body.append(f'<p class="note">No metrics.json yet: run <code>csg evaluate {H.esc(run_path)}</code>.</p>')

    # training curves
    log = run.log()
    curves = F.training_curves(figdir / "report_curves.png", log, title=f"training curves: {name}")
    if curves is not None:
        body.append(H.section("Training", H.grid([H.figure(curves, page_dir,
                     f"Per-epoch loss, accuracies, gate L1-density and learning rate from log.jsonl "
                     f"({len(log)} records; CSG epochs shaded).")], wide=True), anchor="training"))

    # gate, MI, overlap
    gate = run.gate()
    mi = run.mi_matrix() if run.has("mi_matrix.npy") else None
    mats = matrix_figures(run, gate, mi, figdir)
    if mats:
        notes = ""
        if gate is None:
            notes = '<p class="note">This run has no gate (gate.npy); only the MI matrix is shown.</p>'
        agreement = metrics.get("gate_mi_agreement")
        if _num(agreement) is not None:
            notes += f'<p class="note">gate-MI agreement (metrics.json): {H.esc(H.fmt(agreement))}</p>'
        body.append(H.section("Class-specific filters: gate and mutual information",
                              notes + H.grid(H.figure(p, page_dir, c) for p, c in mats.values()), anchor="gate"))

    # localization and adversarial results: tables and figures of their own
    for fname, title, anchor, build, _command in DEDICATED_JSON:
        if run.has(fname):
            data = _read_json(run_path / fname)
            note = S.schema_note(fname, data, run_path) if data is not None else None
            inner = (f'<p class="note">{fname} could not be read (not a JSON object); rerun the command.</p>'
                     if data is None else note or build(run_path, page_dir, data, method))
            body.append(H.section(title, inner, anchor=anchor))

    # every other JSON with figures, one section per file
    dedicated = {d[0] for d in DEDICATED_JSON}
    for path in sorted(run_path.glob("*.json")):
        if path.name in SKIP_JSON or path.name in dedicated:
            continue
        data = _read_json(path)
        if not data or not isinstance(data.get("figures"), list):
            continue
        title = path.stem.replace("_", " ").capitalize() + f" ({path.name})"
        body.append(H.section(title, _figures_from_json(run_path, page_dir, path.name, data), anchor=path.stem))
    if not run.has("analysis.json"):
        body.append(f'<p class="note">Run <code>csg analyze {H.esc(run_path)}</code> to add the filter '
                    "removal, similarity, weight-correlation, clustering and ablation figures.</p>")

    # metrics and configuration
    if metrics:
        body.append(H.section("Metrics (metrics.json)", H.table(["metric", "value"], flatten(metrics)),
                              anchor="metrics"))
    body.append(H.section("Configuration", f"<details><summary>config.json</summary><pre>"
                          f"{H.esc(to_json(cfg))}</pre></details>", anchor="config"))
    index = page_dir / "index.html"
    atomic_write_text(index, H.page(f"csg run: {name}", "".join(body), subtitle=subtitle))
    return index
