"""``build_atlas``: every filter's top images, maps, classes and causal effect, as data.

Built from the features captured once by ``csg evaluate`` (``features.npz``) plus two passes that need
the model: the ActivMap levels over the test split (:func:`~csg.atlas.maps.fit_levels`, also capturing
the pooled activations of any extra layer) and one batched pass over the top (image, filter) pairs for
their ActivMaps and GradMaps (:func:`~csg.atlas.maps.pair_maps`). Returns an :class:`Atlas`: ``data``
(JSON-ready, ``"schema": "csg.atlas/1"``) and ``tiles`` (per layer, the thumbnails' pixels and maps, for
the page writer in :mod:`csg.report.atlas_page`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import CsgError
from ..core.hooks import resolve_module
from .dissection import clutter_masks, dissection_iou, pair_iou
from .inputs import RunInputs, read_run_inputs
from .maps import fit_levels, pair_feature_maps, pair_maps
from .selection import top_images
from .units import CRITERIA, NONE, unit_table

SCHEMA = "csg.atlas/1"
#: METHOD.md section 5's GradMap blur: 5 px on the paper's 128 px VOC crops
PAPER_SIGMA, PAPER_SIDE = 5.0, 128


def default_sigma(h: int, w: int) -> float:
    """The paper's blur scaled to the image: ``5 * max(h, w) / 128`` px (1.09 px at 28 px), so the
    GradMap is as smooth relative to the object as on VOC; ``--sigma 5`` gives the absolute value."""
    return PAPER_SIGMA * max(h, w) / PAPER_SIDE


@dataclass
class Atlas:
    data: dict[str, Any]  # JSON-ready
    tiles: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # layer -> arrays, K x k x ...


def _layer_conv(model, layer: str, k: int) -> nn.Conv2d | None:
    """The last ``nn.Conv2d`` inside ``layer`` with ``k`` output channels (the one producing its maps)."""
    module = resolve_module(model.backbone, layer) if layer else model.backbone
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.out_channels == k]
    return convs[-1] if convs else None


def _thumb_size(h: int, w: int, thumb: int) -> tuple[int, int]:
    scale = min(1.0, float(thumb) / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _shrink(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average ``... x H x W`` to ``size`` (a copy when the size is already right)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float().clone()
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]).float(), size=size, mode="area")
    return y.reshape(*lead, *size)


def _sig(a, digits: int = 4):
    """Nested lists of ``a`` with ``digits`` significant digits; NaN/inf -> None."""
    arr = np.asarray(a, dtype=np.float64)
    flat = [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in arr.ravel().tolist()]
    return np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim > 1 else flat


def _cls(a):
    """Class arrays: ``NONE`` -> None."""
    if a is None:
        return None
    arr = np.asarray(a, dtype=np.int64)
    return np.where(arr == NONE, None, arr).astype(object).tolist()


def _level_index(n: int, level_images: int | None, seed: int) -> torch.Tensor | None:
    if level_images is None or level_images >= n:
        return None
    if level_images < 1:
        raise CsgError(f"--level-images must be positive, got {level_images}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:level_images].sort().values


def atlas_from_parts(model, dataset, inputs: RunInputs, *, layers: Sequence[str] = (), top_k: int = 9,
                     quantile: float = 0.3, level_images: int | None = None, gradmap: bool = True,
                     sigma: float | None = None, threshold: float = 1.0, num_neighbours: int = 5, thumb: int = 64,
                     batch_size: int = 64, chunk: int = 64, device="cpu", seed: int = 0,
                     run_info: dict | None = None, progress: bool = False) -> Atlas:
    """The atlas of ``model`` on ``dataset`` (the split whose pooled features ``inputs`` holds, row for row).

    ``layers``: layers shown besides the feature layer (dotted names, at or before it). Per layer: top-k
    images from the pooled activations, the class criteria, MI row, selectivity, ablation drops (feature
    layer only: the head reads it), weight-correlation neighbours, and with object masks the dissection IoU
    (:mod:`csg.atlas.dissection`). ``thumb`` bounds the side of the returned tiles (px). ``sigma``: the
    GradMap blur in px, by default :func:`default_sigma` of the image size.
    """
    from ..analysis import ablation_drops, class_selectivity, weight_correlation
    from ..analysis.correlation import feature_conv
    from ..metrics import mutual_information_matrix

    if not 0 < quantile < 1:
        raise CsgError(f"--quantile must lie strictly between 0 and 1 (0.3 = top 30%), got {quantile}")
    if thumb < 4:
        raise CsgError(f"--thumb must be at least 4 px, got {thumb}")
    if not torch.is_tensor(getattr(dataset, "images", None)):
        raise CsgError(f"the atlas needs the test images in memory, and {type(dataset).__name__} streams them; "
                       "use the in-memory loader of the data (e.g. image-folder instead of image-folder-stream)")
    labels = inputs.labels
    n, k_feat = inputs.pooled.shape
    c = len(inputs.class_names)
    if len(dataset) != n or not np.array_equal(dataset.labels.cpu().numpy(), labels):
        raise CsgError(f"features.npz ({n} images) does not match the run's test split ({len(dataset)} images, "
                       "or other labels); re-run `csg evaluate` on the run")
    if model.num_filters != k_feat or model.num_classes != c:
        raise CsgError(f"the model has {model.num_filters} filters and {model.num_classes} classes but "
                       f"features.npz gives {k_feat} and {c}; re-run `csg evaluate`")
    model.eval()
    feature = model.feature_layer
    names = [feature] + [name for name in dict.fromkeys(layers) if name and name != feature]
    for name in names[1:]:
        resolve_module(model.backbone, name)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    fit = fit_levels(model, dataset.images, names, quantile=quantile, level_index=_level_index(n, level_images, seed),
                     pooled_layers=names[1:], batch_size=batch_size, device=device, progress=progress)
    timing["levels_s"] = time.perf_counter() - t0
    masks = dataset.masks
    h, w = dataset.image_size
    th, tw = _thumb_size(h, w, thumb)
    sigma = default_sigma(h, w) if sigma is None else float(sigma)
    layers_out, tiles = [], {}
    t_maps = t_units = 0.0
    for name in names:
        t1 = time.perf_counter()
        is_feature = name == feature
        pooled = inputs.pooled if is_feature else fit["pooled"][name]
        k = pooled.shape[1]
        top_idx, top_val = top_images(pooled, top_k)
        kk = top_idx.shape[1]
        mi = inputs.mi if is_feature and inputs.mi is not None else mutual_information_matrix(pooled, labels, num_classes=c)
        selectivity, top_class = class_selectivity(pooled, labels, c)
        if is_feature and inputs.selectivity is not None:
            selectivity = inputs.selectivity
        drop = gate = None
        corr = inputs.correlation if is_feature else None
        if is_feature:
            gate = inputs.gate
            drop = inputs.ablation_drop
            if drop is None:
                head = model.head
                drop, _ = ablation_drops(pooled, labels, head.weight.detach().cpu().double().numpy(),
                                         None if head.bias is None else head.bias.detach().cpu().double().numpy(), c)
            if corr is None:
                corr = weight_correlation(feature_conv(model)[1].weight)
        else:
            conv = _layer_conv(model, name, k)
            corr = weight_correlation(conv.weight) if conv is not None else None
        units = unit_table(mi=mi, selectivity=selectivity, top_class=top_class, drop=drop, gate=gate,
                           correlation=corr, num_neighbours=num_neighbours)
        t_units += time.perf_counter() - t1

        t2 = time.perf_counter()
        channels = dataset.images.shape[1]
        tile = {"image": np.zeros((k, kk, channels, th, tw), np.uint8),
                "activ_region": np.zeros((k, kk, th, tw), np.uint8)}
        if gradmap:
            tile["grad"] = np.zeros((k, kk, th, tw), np.float16)
            tile["grad_region"] = np.zeros((k, kk, th, tw), np.uint8)
        iou_obj = np.full((k, kk), np.nan) if masks is not None else None
        iou_clu = np.full((k, kk), np.nan) if masks is not None else None
        levels = torch.as_tensor(fit["levels"][name])
        # every pair's map at the layer's resolution, each distinct top image run once (P x h x w is small)
        all_img = torch.as_tensor(top_idx.reshape(-1))
        low = pair_feature_maps(model, name, dataset.images, all_img, torch.arange(k).repeat_interleave(kk),
                                batch_size=batch_size, device=device)
        starts = range(0, k, chunk)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"atlas maps {name}", leave=False)
        for f0 in starts:
            f1 = min(k, f0 + chunk)
            img = torch.as_tensor(top_idx[f0:f1].reshape(-1))
            filt = torch.arange(f0, f1).repeat_interleave(kk)
            pm = pair_maps(model, name, dataset.images, img, filt, levels, gradmap=gradmap, sigma=sigma,
                           threshold=threshold, batch_size=batch_size, device=device, low=low[f0 * kk:f1 * kk])
            shape = (f1 - f0, kk)
            images = dataset.images[img.to(dataset.images.device)].cpu()
            tile["image"][f0:f1] = _shrink(images, (th, tw)).round().clamp(0, 255).to(torch.uint8).numpy().reshape(
                *shape, channels, th, tw)
            tile["activ_region"][f0:f1] = (_shrink(pm["activ_region"], (th, tw)) * 255).round().to(torch.uint8) \
                .numpy().reshape(*shape, th, tw)
            if gradmap:
                tile["grad"][f0:f1] = _shrink(pm["grad"], (th, tw)).numpy().astype(np.float16).reshape(*shape, th, tw)
                tile["grad_region"][f0:f1] = (_shrink(pm["grad_region"], (th, tw)) * 255).round().to(torch.uint8) \
                    .numpy().reshape(*shape, th, tw)
            if masks is not None:
                m = masks[img.to(masks.device)].cpu()
                iou_obj[f0:f1] = pair_iou(pm["activ_region"], m).numpy().reshape(shape)
                iou_clu[f0:f1] = pair_iou(pm["activ_region"], clutter_masks(images, m)).numpy().reshape(shape)
        display = name or "(backbone output)"
        tiles[display] = tile
        t_maps += time.perf_counter() - t2

        criteria = [cr for cr in CRITERIA if units[f"class_{cr}"] is not None]
        unit_json = {
            "filter": list(range(k)),
            "dead": (top_val.max(axis=1) <= 0).tolist(),
            "class": _cls(np.where(units["class"] != NONE, units["class"], units["class_mi"])),
            **{f"class_{cr}": _cls(units[f"class_{cr}"]) for cr in CRITERIA},
            "agree": _cls(units["agree"]),
            "mi": _sig(units["mi"]), "mi_max": _sig(units["mi_max"]),
            "selectivity": _sig(units["selectivity"]), "top_class": _cls(units["top_class"]),
            "drop": None if units["drop"] is None else _sig(units["drop"]),
            "max_drop": None if units["max_drop"] is None else _sig(units["max_drop"]),
            "iou_object": None if iou_obj is None else _sig(dissection_iou(iou_obj)),
            "iou_clutter": None if iou_clu is None else _sig(dissection_iou(iou_clu)),
            "top_images": top_idx.tolist(), "top_activations": _sig(top_val),
            "top_labels": labels[top_idx].tolist(), "top_predictions": inputs.predictions[top_idx].tolist(),
            "top_iou_object": None if iou_obj is None else _sig(iou_obj),
            "top_iou_clutter": None if iou_clu is None else _sig(iou_clu),
            "neighbours": None if units["neighbours"] is None else units["neighbours"].tolist(),
            "neighbour_corr": None if units["neighbour_corr"] is None else _sig(units["neighbour_corr"]),
            "level": _sig(fit["levels"][name]),
        }
        layers_out.append({"name": display, "feature_layer": is_feature, "num_filters": k,
                           "top_k": kk, "criteria": criteria, "level_precision": fit["precision"][name],
                           "units": unit_json})
    timing["units_s"], timing["maps_s"] = t_units, t_maps
    info = dict(run_info or {})
    metrics = inputs.metrics
    data = {
        "schema": SCHEMA,
        "run": {"label": info.get("label"), "path": info.get("path"), "method": inputs.config.get("method"),
                "data": inputs.config.get("data", dataset.name), "arch": inputs.config.get("arch"),
                "seed": inputs.config.get("seed"), "accuracy": metrics.get("accuracy"), "mis": metrics.get("mis")},
        "classes": list(inputs.class_names),
        "split": "test", "num_images": n, "image_size": [h, w], "channels": int(dataset.images.shape[1]),
        "has_masks": masks is not None, "has_gradmap": bool(gradmap),
        "settings": {"top_k": int(top_k), "quantile": float(quantile), "level_images": level_images,
                     "gradmap": {"sigma": float(sigma), "threshold": float(threshold)} if gradmap else None,
                     "neighbours": int(num_neighbours), "thumb": [th, tw],
                     "iou": "mean per-image IoU of the ActivMap region over the filter's top-k images"},
        "sources": dict(inputs.sources), "notes": list(inputs.notes),
        "layers": layers_out, "timing": timing,
    }
    return Atlas(data=data, tiles=tiles)


def build_atlas(run, *, device="cpu", model=None, dataset=None, **options) -> Atlas:
    """The atlas of a run directory (``csg.RunDir``): its test split, as ``csg evaluate`` captured it.

    ``dataset``: the images ``csg.evaluate_run(run, dataset=...)`` captured, for a run trained on data
    passed from Python (a torch ``Dataset`` of ``(image, label[, mask])``, a ``DataLoader`` or a csg dataset)."""
    inputs = read_run_inputs(run)
    cfg = inputs.config
    if model is None:
        model = run.load_model(device)
    dataset = run.dataset(dataset, "test", subset=cfg.get("test_subset"), seed=cfg.get("seed", 0))
    info = {"label": run.path.resolve().name, "path": str(run.path)}
    return atlas_from_parts(model, dataset, inputs, device=device, run_info=info, **options)
