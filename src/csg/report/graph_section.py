"""Report sections for ``graph.json`` (``csg graph``): one run's explanatory graph, and runs side by side.

The file is read defensively: a missing key shows as an en dash, never an error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.io import atomic_write_bytes
from . import html as H
from .sections import figure_items, num

from ..core.run_files import GRAPH as GRAPH_JSON
NOTE = ('<p class="note">The explanatory graph (Zhang et al. 2018; METHOD.md section 9, docs/graph.md): each '
        "filter's map as a mixture of patterns (nodes), each linked to co-activated nodes of the layer above. "
        "<b>Location instability</b>: over a unit's 20 best images, the standard deviation of its distance to "
        "each part landmark, averaged over landmarks and the top units of a layer, divided by the image "
        "diagonal. <b>k-shot part error</b>: from k annotated images per class and part, the units nearest the "
        "part vote for it on the other images; mean distance / diagonal. Lower is better for both; raw filters "
        "(position = argmax of the map) are the baseline, <i>fixed</i> predicts the shots' mean position.</p>")


def graph_values(data: dict | None) -> dict[str, float]:
    """Headline numbers: ``instability.nodes``, ``instability.raw_filters`` (layer means), per layer
    ``instability.nodes.<layer>``, and ``<k>shot.nodes`` / ``.raw_filters`` / ``.fixed``; missing ones left out."""
    ev = data.get("evaluation") if isinstance(data, dict) else None
    out: dict[str, float] = {}
    if not isinstance(ev, dict):
        return out
    inst = ev.get("instability") if isinstance(ev.get("instability"), dict) else {}
    for key in ("nodes", "raw_filters"):
        block = inst.get(key) if isinstance(inst.get(key), dict) else {}
        if num(block.get("mean")) is not None:
            out[f"instability.{key}"] = num(block["mean"])
        for layer, v in (block.get("per_layer") or {}).items():
            if num(v) is not None:
                out[f"instability.{key}.{layer}"] = num(v)
    for k, block in (ev.get("few_shot") or {}).items():
        if isinstance(block, dict):
            for key in ("nodes", "raw_filters", "fixed"):
                if num(block.get(key)) is not None:
                    out[f"{k}shot.{key}"] = num(block[key])
    return out


def _shots(values: dict[str, float]) -> list[str]:
    return sorted({k.split("shot.")[0] for k in values if "shot." in k}, key=lambda s: (len(s), s))


def graph_section(run_path: Path, page_dir: Path, data: dict, method: str | None = None) -> str:
    """Cards, the layers, the instability per layer and the few-shot errors (nodes vs raw filters), figures."""
    parts = [NOTE]
    seconds = data.get("seconds") if isinstance(data.get("seconds"), dict) else {}
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    cards = [("images", data.get("num_images")), ("iterations", settings.get("iterations")),
             ("seconds", f"{float(seconds['total']):.0f}" if num(seconds.get("total")) is not None else None)]
    parts.append(H.cards(cards))
    if isinstance(data.get("negatives"), str):
        parts.append(f'<p class="note">Normalisation by negatives: {H.esc(data["negatives"])}.</p>')
    layers = [lay for lay in data.get("layers") or [] if isinstance(lay, dict)]
    if layers:
        rows = [[H.esc(lay.get("name", "?")), H.esc("x".join(str(x) for x in lay.get("map_size", []))),
                 H.fmt(lay.get("filters")), H.fmt(lay.get("nodes_per_filter")), H.fmt(lay.get("num_nodes")),
                 H.fmt(num(lay.get("rho")), 3), H.fmt(lay.get("parents_per_node")),
                 H.fmt(num(lay.get("mean_sigma")), 2)] for lay in layers]
        parts.append("<h3>Layers</h3>" + H.table(["layer", "map", "filters", "nodes per filter", "nodes", "rho",
                                                  "parents per node", "mean sigma (cells)"], rows, raw=True))
    values = graph_values(data)
    if values:
        names = [lay.get("name") for lay in layers] or sorted({k.split(".")[2] for k in values
                                                               if k.count(".") == 2 and k.startswith("instab")})
        rows = [[H.esc(n), H.fmt(values.get(f"instability.nodes.{n}")),
                 H.fmt(values.get(f"instability.raw_filters.{n}"))] for n in names]
        rows.append(["<b>mean</b>", H.fmt(values.get("instability.nodes")), H.fmt(values.get("instability.raw_filters"))])
        parts.append("<h3>Location instability</h3>" + H.table(["layer", "graph nodes", "raw filters"], rows, raw=True))
        rows = [[f"{k}-shot", H.fmt(values.get(f"{k}shot.nodes")), H.fmt(values.get(f"{k}shot.raw_filters")),
                 H.fmt(values.get(f"{k}shot.fixed"))] for k in _shots(values)]
        if rows:
            parts.append("<h3>Few-shot part localization (error / diagonal)</h3>"
                         '<p class="note">All layers\' units vote together; below, each layer alone.</p>'
                         + H.table(["shots", "graph nodes", "raw filters", "fixed position"], rows, raw=True))
        few = (data.get("evaluation") or {}).get("few_shot") or {}
        per = {k: b.get("per_layer") for k, b in few.items() if isinstance(b, dict) and isinstance(b.get("per_layer"), dict)}
        if per:
            ks = sorted(per, key=lambda s: (len(s), s))
            lnames = [n for n in names if any(n in per[k] for k in ks)]
            prow = [[H.esc(n)] + [H.fmt(num((per[k].get(n) or {}).get(u))) for k in ks for u in ("nodes", "raw_filters")]
                    for n in lnames]
            parts.append(H.table(["layer"] + [f"{k}-shot {u}" for k in ks for u in ("nodes", "raw filters")], prow,
                                 raw=True))
    elif data.get("notes"):
        parts.append("".join(f'<p class="note">{H.esc(n)}</p>' for n in data["notes"]))
    parts.append(H.grid(figure_items(run_path, page_dir, data), wide=True))
    return "".join(parts)


def graph_compare_section(runs: Sequence, out: Path, figdir: Path, fig_entries: list[dict]) -> str:
    """One row per run with graph.json (STD first): layer-mean instability of nodes and raw filters and the
    k-shot errors, then each run's evaluation figure side by side. ``runs`` have ``label``, ``method``,
    ``path``; returns "" when none has a graph."""
    have = []
    for r in runs:  # a few runs
        if getattr(r, "recorded_in", None) is not None:  # recorded in an earlier comparison: no files
            continue
        path = Path(r.path) / GRAPH_JSON
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                have.append((r, data, graph_values(data)))
    if not have:
        return ""
    have.sort(key=lambda t: (t[0].method != "std", t[0].method))
    shots = sorted({k for _, _, v in have for k in _shots(v)}, key=lambda s: (len(s), s))
    headers = ["run", "method", "images", "instability nodes", "instability raw filters"]
    for k in shots:
        headers += [f"{k}-shot nodes", f"{k}-shot raw filters", f"{k}-shot fixed"]
    rows = []
    for r, data, v in have:
        row = [H.esc(r.label), H.esc(r.method), H.fmt(data.get("num_images")), H.fmt(v.get("instability.nodes")),
               H.fmt(v.get("instability.raw_filters"))]
        for k in shots:
            row += [H.fmt(v.get(f"{k}shot.nodes")), H.fmt(v.get(f"{k}shot.raw_filters")), H.fmt(v.get(f"{k}shot.fixed"))]
        rows.append(row)
    methods: dict[str, list[dict]] = {}
    for r, _, v in have:
        methods.setdefault(r.method, []).append(v)
    agg_rows = []
    if any(len(vs) > 1 for vs in methods.values()):
        for m, vs in methods.items():
            def pm(key):
                x = np.array([v[key] for v in vs if key in v], dtype=float)
                if x.size == 0:
                    return "–"
                return H.fmt(float(x.mean())) + (f" ± {H.fmt(float(x.std(ddof=1)))}" if x.size > 1 else "")
            row = [f"<i>{H.esc(m)} (mean of {len(vs)})</i>", H.esc(m), "–", pm("instability.nodes"),
                   pm("instability.raw_filters")]
            for k in shots:
                row += [pm(f"{k}shot.nodes"), pm(f"{k}shot.raw_filters"), pm(f"{k}shot.fixed")]
            agg_rows.append(row)
    figs = []
    for r, data, _ in have:
        for fig in data.get("figures") or []:
            src = Path(r.path) / fig.get("path", "") if isinstance(fig, dict) else None
            if src is None or src.name != "graph_evaluation.png" or not src.is_file():
                continue
            slug = getattr(r, "slug", r.label)
            dst = figdir / f"{slug}_graph_evaluation.png"
            atomic_write_bytes(dst, src.read_bytes())
            figs.append(H.figure(dst, out, f"{r.label} ({r.method}): {fig.get('caption', '')}"))
            fig_entries.append({"path": dst.relative_to(out).as_posix(), "caption": f"{r.label}: graph evaluation"})
    same = ('<p class="note">Runs of the same data mined with the same <code>--images</code> and <code>--seed</code> '
            "use the same test canvases (a stratified seeded subset).</p>")
    inner = (NOTE + same + H.table(headers, rows + agg_rows, raw=True)
             + ('<div class="pair">' + "".join(figs) + "</div>" if figs else ""))
    return H.section("Explanatory graph (graph.json), run by run", inner, anchor="graph")


__all__ = ["graph_section", "graph_compare_section", "graph_values", "GRAPH_JSON"]
