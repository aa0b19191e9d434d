"""``csg graph RUN``: mine the explanatory graph of a trained run, evaluate it against part landmarks, draw it.

Writes ``RUN/graph.npz`` (every array), ``RUN/graph.json`` (schema ``csg.graph/1``: settings, layers with
their top nodes, timings, the evaluation and the figures) and ``RUN/figures/graph_*.png``, and merges the
headline numbers into ``metrics.json``. The Python entry on any model is :func:`explanatory_graph`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.errors import CsgError
from ..core.io import jsonable
from ..core.run_files import GRAPH, GRAPH_ARRAYS
from .evaluate import few_shot_localization, location_instability, raw_filter_units
from .features import check_layers, default_layers, negative_spread, prepare_layers
from .mining import MiningSettings, graph_arrays, mine_graph

SCHEMA = "csg.graph/1"
#: the dataset whose negatives (object-free canvases) and landmarks csg generates itself
CLUTTER = "fashion-mnist-clutter"


def explanatory_graph(model: torch.nn.Module, images: torch.Tensor, layers: Sequence[str] | None = None, *,
                      negatives: torch.Tensor | None = None, rho: Sequence[float] | None = None,
                      nodes_per_filter: Sequence[int] | int | None = None,
                      settings: MiningSettings | None = None, batch_size: int = 64, device="cpu",
                      progress: bool = False, max_seconds: float | None = None,
                      on_estimate: Callable[[float], None] | None = None) -> dict:
    """Mine the explanatory graph of ``model`` on ``images`` (uint8 or float in [0, 1], N x C x H x W).

    ``layers``: 2-4 dotted names, bottom to top (default: the backbone's last three blocks). ``negatives``:
    images without the objects, for the per-unit normalisation ``x / sigma_neg``; None normalises by the
    spread over ``images`` themselves. Returns ``{"graph": ExplanatoryGraph, "layers": [LayerData],
    "seconds": {"features", "mining"}}``; the layer data carry the raw filters' peaks (the baseline).
    """
    settings = settings or MiningSettings()
    model.eval()
    if images.dim() != 4 or images.shape[0] < 2:
        raise CsgError(f"images must be N x C x H x W with N >= 2, got {tuple(images.shape)}")
    layers = list(layers) if layers else default_layers(model, images[:1].to(device).float()
                                                        / (255.0 if images.dtype == torch.uint8 else 1.0))
    if not 1 <= len(layers) <= 6:
        raise CsgError(f"give 2-4 layers to mine (at most 6), got {len(layers)}")
    check_layers(model, layers)
    t0 = time.perf_counter()
    sigma_neg = negative_spread(model, negatives if negatives is not None else images, layers,
                                batch_size=batch_size, device=device)
    data = prepare_layers(model, images, layers, sigma_neg, evidence_sigma=settings.evidence_sigma,
                          batch_size=batch_size, device=device)
    t1 = time.perf_counter()
    graph = mine_graph([d.evidence for d in data], [d.stride for d in data], names=layers, rho=rho,
                       nodes_per_filter=nodes_per_filter, image_size=images.shape[2:], settings=settings,
                       device=device, progress=progress, max_seconds=max_seconds, on_estimate=on_estimate)
    return {"graph": graph, "layers": data, "seconds": {"features": t1 - t0, "mining": time.perf_counter() - t1}}


def _raw_positions_px(d) -> torch.Tensor:
    stride = torch.tensor(d.stride, dtype=torch.float32)
    return (d.raw_positions + 0.5) * stride - 0.5


def evaluate_graph(graph, data, landmarks: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, *,
                   top_images: int = 20, top_units: int | None = None, shots: Sequence[int] = (1, 3),
                   repeats: int = 10, voters: int = 10, min_score: float = 1.0, seed: int = 0) -> dict:
    """Instability (per layer and its mean) and few-shot localization (all layers' units pooled, and per
    layer), graph nodes against raw filters. ``top_units`` None: as many top nodes as the layer has filters."""
    h, w = graph.image_size
    diagonal = math.hypot(h, w)
    inst: dict = {"nodes": {"per_layer": {}}, "raw_filters": {"per_layer": {}}, "top_units": {}}
    pooled_nodes, pooled_raw = [], []
    per_layer_units: dict[str, dict] = {}
    for lay, d in zip(graph.layers, data):
        k = int(top_units) if top_units is not None else lay.num_filters
        node_pos = lay.positions_px().cpu()
        node_sc = lay.scores.cpu()
        raw_pos, raw_sc = raw_filter_units(d.raw_scores, _raw_positions_px(d))
        a = location_instability(node_pos, node_sc, landmarks, valid, diagonal=diagonal, top_images=top_images,
                                 top_units=k)
        b = location_instability(raw_pos, raw_sc, landmarks, valid, diagonal=diagonal, top_images=top_images,
                                 top_units=k)
        inst["nodes"]["per_layer"][lay.name] = a["instability"]
        inst["raw_filters"]["per_layer"][lay.name] = b["instability"]
        inst["top_units"][lay.name] = k
        pooled_nodes.append((node_pos, node_sc))
        pooled_raw.append((raw_pos, raw_sc))
        per_layer_units[lay.name] = {"nodes": (node_pos, node_sc), "raw_filters": (raw_pos, raw_sc)}
    for key in ("nodes", "raw_filters"):
        vals = [v for v in inst[key]["per_layer"].values() if v == v]
        inst[key]["mean"] = float(np.mean(vals)) if vals else math.nan
    inst["top_images"] = int(top_images)
    units = {"nodes": (torch.cat([p for p, _ in pooled_nodes]), torch.cat([s for _, s in pooled_nodes])),
             "raw_filters": (torch.cat([p for p, _ in pooled_raw]), torch.cat([s for _, s in pooled_raw]))}
    opts = dict(diagonal=diagonal, shots=shots, repeats=repeats, voters=voters, min_score=min_score, seed=seed)
    few = few_shot_localization(units, landmarks, valid, labels, **opts)
    for name, u in per_layer_units.items():
        per = few_shot_localization(u, landmarks, valid, labels, **opts)
        for k in per:
            few[k].setdefault("per_layer", {})[name] = {"nodes": per[k]["nodes"], "raw_filters": per[k]["raw_filters"]}
    return {"diagonal": diagonal, "instability": inst, "few_shot": few,
            "settings": {"top_images": top_images, "top_units": top_units, "shots": list(shots), "repeats": repeats,
                         "voters": voters, "min_score": min_score, "seed": seed}}


def _layer_summary(lay, top: int = 10) -> dict:
    best = torch.topk(lay.scores, min(20, lay.scores.shape[1]), dim=1).values.mean(1)
    order = torch.topk(best, min(top, lay.num_nodes)).indices
    nodes = []
    for u in order.tolist():  # ten nodes for people to read; all of them are in graph.npz
        nodes.append({"node": u, "filter": u // lay.nodes_per_filter,
                      "mu": [round(float(v), 3) for v in lay.mu[u]],
                      "mu_px": [round(float(v), 2) for v in lay.to_pixels(lay.mu[u])],
                      "sigma": round(float(lay.sigma[u]), 3), "mean_top20_score": round(float(best[u]), 4),
                      "parents": None if lay.parents is None else lay.parents[u].tolist()})
    return {"name": lay.name, "map_size": list(lay.map_size), "stride": list(lay.stride),
            "filters": lay.num_filters, "nodes_per_filter": lay.nodes_per_filter, "num_nodes": lay.num_nodes,
            "rho": lay.rho, "parents_per_node": None if lay.parents is None else int(lay.parents.shape[1]),
            "mean_sigma": float(lay.sigma.mean()), "score_scale": lay.score_scale, "top_nodes": nodes}


def _load_negatives(spec: str | None, run, cfg: dict, count: int, seed: int):
    """(images or None, description) for ``--negatives``: auto, self, or a .npy file of images."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        if cfg.get("data") == CLUTTER:
            from ..data.clutter import clutter_negatives

            return (clutter_negatives(count, "test", data_dir=cfg.get("data_dir"), seed=seed),
                    f"{count} {CLUTTER} canvases of clutter without an object (seeded, test-split fragments)")
        spec = "self"
    if spec == "self":
        return None, "the mined images themselves (no negative set given)"
    path = Path(spec)
    if not path.is_file() or path.suffix != ".npy":
        raise CsgError(f"--negatives {spec!r}: give auto, self, or a .npy file of images (N x C x H x W)")
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 4:
        raise CsgError(f"{path} holds shape {arr.shape}; negatives must be N x C x H x W images")
    t = torch.from_numpy(arr)
    if t.dtype != torch.uint8:
        t = t.to(torch.float32)
    return t, f"{arr.shape[0]} images from {path}"


def graph_run(run, layers: Sequence[str] | None = None, *, images: int = 300, negatives: str | None = "auto",
              num_negatives: int = 200, rho: Sequence[float] | None = None,
              nodes_per_filter: Sequence[int] | int | None = None, settings: MiningSettings | None = None,
              top_units: int | None = None, shots: Sequence[int] = (1, 3), repeats: int = 10, voters: int = 10,
              device="cpu", progress: bool = False, max_minutes: float | None = None, figures: bool = True,
              log: Callable[[str], None] | None = None, dataset=None) -> dict:
    """``csg graph``: mine, evaluate (when the data has landmarks), draw; writes graph.npz, graph.json.

    ``dataset``: your own images to mine instead of the run's test split (a torch ``Dataset`` of
    ``(image, label)``, a ``DataLoader`` or a csg dataset)."""
    settings = settings or MiningSettings()
    say = log or (lambda _m: None)
    start = time.perf_counter()
    cfg = run.config
    if images < 2:
        raise CsgError(f"--images must be at least 2, got {images}")
    model = run.load_model(device)
    if layers:
        check_layers(model, layers)  # a typo fails before any data is made
    neg, neg_text = _load_negatives(negatives, run, cfg, num_negatives, settings.seed)
    dataset = run.dataset(dataset, "test")
    if len(dataset) > images:
        dataset = dataset.subset(images, seed=settings.seed)

    def estimate(seconds: float) -> None:
        when = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
        say(f"mining {len(dataset)} images is estimated at {when} "
            "(from one timed chunk per layer and one block of parent links)")

    mined = explanatory_graph(model, dataset.images, layers, negatives=neg, rho=rho,
                              nodes_per_filter=nodes_per_filter, settings=settings, device=device,
                              progress=progress, on_estimate=estimate,
                              max_seconds=None if max_minutes is None else 60.0 * max_minutes)
    graph, data = mined["graph"], mined["layers"]
    seconds = dict(mined["seconds"])
    result: dict = {"schema": SCHEMA, "run": str(run.path), "data": cfg.get("data"), "split": "test",
                    "num_images": len(dataset), "image_size": list(graph.image_size),
                    "negatives": neg_text, "settings": graph.settings,
                    "layers": [_layer_summary(lay) for lay in graph.layers]}
    t = time.perf_counter()
    evaluation = None
    if dataset.landmarks is not None:
        evaluation = evaluate_graph(graph, data, dataset.landmarks, dataset.landmark_valid, dataset.labels,
                                    top_units=top_units, shots=shots, repeats=repeats, voters=voters,
                                    seed=settings.seed)
        evaluation["landmarks"] = list(dataset.landmark_names)
        result["evaluation"] = evaluation
    else:
        result["evaluation"] = None
        result["notes"] = [f"{cfg.get('data')} has no part landmarks; the graph is mined but not evaluated "
                           f"(landmarks come with {CLUTTER})"]
    seconds["evaluation"] = time.perf_counter() - t
    t = time.perf_counter()
    result["figures"] = _draw(run, graph, data, dataset, evaluation) if figures else []
    seconds["figures"] = time.perf_counter() - t
    arrays = graph_arrays(graph)
    for i, d in enumerate(data):
        arrays[f"raw_L{i}_scores"] = d.raw_scores.numpy().astype(np.float32)
        arrays[f"raw_L{i}_positions"] = d.raw_positions.numpy().astype(np.float32)
    if dataset.landmarks is not None:
        arrays["landmarks"] = dataset.landmarks.numpy().astype(np.float32)
        arrays["landmark_valid"] = dataset.landmark_valid.numpy()
    arrays["labels"] = dataset.labels.numpy().astype(np.int32)
    run.write_npz(GRAPH_ARRAYS, **arrays)
    seconds["total"] = time.perf_counter() - start
    result["seconds"] = seconds
    result["arrays"] = {"file": GRAPH_ARRAYS, "keys": sorted(arrays),
                        "layout": "L{i}_* per layer i bottom to top: filter, mu (cells), sigma (cells), parents "
                                  "(indices into layer i+1), mean_position, scores (nodes x images, mean 1), "
                                  "positions (nodes x images x 2 cells; pixel = (cell + 0.5) * stride - 0.5); "
                                  "raw_L{i}_scores / _positions: filters x images, the raw-filter baseline"}

    run.write_json(GRAPH, jsonable(result))
    if evaluation is not None:
        inst, few = evaluation["instability"], evaluation["few_shot"]
        summary = {"graph_instability_nodes": inst["nodes"]["mean"],
                   "graph_instability_raw": inst["raw_filters"]["mean"]}
        for k, v in few.items():
            summary[f"graph_{k}shot_nodes"] = v["nodes"]
            summary[f"graph_{k}shot_raw"] = v["raw_filters"]
        run.update_metrics(summary)
    return result


def _draw(run, graph, data, dataset, evaluation) -> list[dict]:
    from .figures import evaluation_figure, graph_overlay_figure, patches_figure

    figdir = run.figures_dir
    figs = []
    side = min(graph.image_size)
    draw_layers = []
    for lay in graph.layers:
        patch = int(min(side, max(9, round(6 * math.sqrt(lay.stride[0] * lay.stride[1]) + 6))))
        draw_layers.append({"name": lay.name, "positions": lay.positions_px().cpu(), "scores": lay.scores.cpu(),
                            "filters": lay.filter.cpu(), "side": patch | 1})
    p = patches_figure(figdir / "graph_patches.png", dataset.images, draw_layers)
    figs.append({"path": f"figures/{p.name}", "caption": "Per layer, the best node (by mean score over its 20 best "
                 "images) of each of the most responsive filters, one row each, with the patches of the images "
                 "where it scores highest; the red cross is the node's inferred position."})
    # the image on which the graph as a whole fires most
    total = sum(lay.scores.cpu().sum(0) for lay in graph.layers)
    i = int(total.argmax())
    per_image = [{"name": lay.name, "positions": lay.positions_px().cpu()[:, i], "scores": lay.scores.cpu()[:, i],
                  "parents": None if lay.parents is None else lay.parents.cpu()} for lay in graph.layers]
    name = dataset.classes[int(dataset.labels[i])]
    p = graph_overlay_figure(figdir / "graph_overlay.png", dataset.images[i], per_image,
                             title=f"image {i} ({name}): the 10 best nodes per layer and links to their parents")
    figs.append({"path": f"figures/{p.name}", "caption": f"One image ({name}) with the nodes of each layer that "
                 "score highest on it (dot size ~ score) and lines to each node's three best-scoring parents."})
    if evaluation is not None:
        p = evaluation_figure(figdir / "graph_evaluation.png", evaluation)
        figs.append({"path": f"figures/{p.name}", "caption": "Location instability of the top units per layer and "
                     "few-shot part localization error, graph nodes against raw filters (and a fixed-position "
                     "baseline); both divided by the image diagonal, lower is better."})
    return figs
