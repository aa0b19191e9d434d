"""Filter weight correlation (METHOD.md section 4; the paper's Fig. 7 and 8).

``Corr[i, j]`` is the cosine between the flattened weights of filters i and j
of the convolution that produces the feature layer. ``r_s`` is the share of
off-diagonal entries ``>= s``; the inter-class correlation is

    C_IC = 1 / (C (C-1) m^2) * sum_{c != c'} sum_{k in A_c} sum_{k' in A_c'} Corr[k, k']

with ``A_c`` the m filters most activated (mean pooled activation) by class c.
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn

from ..core.errors import CsgError
from . import figures as figs
from ._common import as_labels, class_means
from .base import AnalysisInputs, AnalysisResult, Figure, figure, fmt

# Float rounding leaves cos(w, w) a hair below 1; treat entries within this of s as >= s.
R_S_TOLERANCE = 1e-6


def weight_correlation(conv_weight, eps: float = 1e-12) -> np.ndarray:
    """``K x K`` cosine similarity of the flattened filters (``conv_weight``: K x ...).

    A filter whose weights are all zero correlates 0 with everything (itself included).
    """
    W = np.asarray(conv_weight.detach().cpu() if hasattr(conv_weight, "detach") else conv_weight,
                   dtype=np.float64)
    W = W.reshape(W.shape[0], -1)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    Wn = W / np.maximum(norms, eps)
    return np.clip(Wn @ Wn.T, -1.0, 1.0)


def off_diagonal(corr: np.ndarray) -> np.ndarray:
    K = corr.shape[0]
    return np.asarray(corr)[~np.eye(K, dtype=bool)]


def r_s_curve(corr, grid=None, tol: float = R_S_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """``r_s`` = share of off-diagonal entries ``>= s`` for each s in ``grid`` (default 0, 0.02, ..., 1).

    Entries within ``tol`` below s count as ``>= s`` (float rounding of duplicate filters).
    """
    s = np.linspace(0.0, 1.0, 51) if grid is None else np.asarray(grid, dtype=np.float64)
    off = np.sort(off_diagonal(np.asarray(corr, dtype=np.float64)))
    if off.size == 0:
        return s, np.full(s.shape, np.nan)
    below = np.searchsorted(off, s - tol, side="left")  # entries < s - tol
    return s, 1.0 - below / off.size


def top_filters_per_class(pooled, labels, m: int, num_classes: int | None = None) -> np.ndarray:
    """``A_c``: indices (C x m) of the m filters with the largest mean activation on class c.

    Classes without samples get a row of -1.
    """
    mu, counts = class_means(pooled, labels, num_classes)
    order = np.argsort(-np.nan_to_num(mu, nan=-np.inf), axis=1, kind="stable")[:, :m]
    order[counts == 0] = -1
    return order


def inter_class_correlation(corr, pooled, labels, m: int | None = None, num_classes: int | None = None) -> float:
    """``C_IC`` (see the module docstring). Classes without samples are left out (C counts the rest).

    Computed as ``I Corr I^T`` with ``I`` the C x K indicator of the sets A_c, so
    entry ``(c, c')`` is ``sum_{k in A_c, k' in A_c'} Corr[k, k']``; the off-diagonal sum
    is divided by ``C (C-1) m^2``.
    """
    corr = np.asarray(corr, dtype=np.float64)
    K = corr.shape[0]
    _, C = as_labels(labels, num_classes)
    if m is None:
        m = max(1, K // C)
    if not 1 <= m <= K:
        raise CsgError(f"m = {m} filters per class must be in [1, K={K}]")
    A = top_filters_per_class(pooled, labels, m, num_classes)
    A = A[A[:, 0] >= 0]
    Cp = A.shape[0]
    if Cp < 2:
        return float("nan")
    ind = np.zeros((Cp, K))
    np.put_along_axis(ind, A, 1.0, axis=1)
    block = ind @ corr @ ind.T
    return float((block.sum() - np.trace(block)) / (Cp * (Cp - 1) * m * m))


def feature_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The convolution producing the feature layer: the last ``nn.Conv2d`` inside the
    feature module (``layer3`` -> ``layer3.2.conv2``), else the last one registered before it.

    ``model`` is a :class:`csg.core.model.GatedClassifier` (or any module with ``feature_layer``
    and ``backbone``).
    """
    backbone = getattr(model, "backbone", model)
    feature = getattr(model, "feature_layer", "") or ""
    names = list(backbone.named_modules())
    if feature:
        end = None
        for i, (name, _m) in enumerate(names):  # named_modules is pre-order: a subtree is contiguous
            if name == feature or name.startswith(feature + "."):
                end = i
        if end is None:
            raise CsgError(f"feature layer {feature!r} not found in {type(backbone).__name__}")
        names = names[: end + 1]
    convs = [(n, m) for n, m in names if isinstance(m, nn.Conv2d)]
    if not convs:
        raise CsgError(f"no nn.Conv2d at or before the feature layer {feature!r}; weight correlation needs one")
    name, conv = convs[-1]
    K = getattr(model, "num_filters", conv.out_channels)
    if conv.out_channels != K:
        raise CsgError(f"the last convolution before the feature layer ({name}) has {conv.out_channels} "
                       f"filters, not K={K}; weight correlation needs the conv that produces the features")
    return name, conv


# ---- the analysis entry (registry) -----------------------------------------------------------------------
SCHEMA = "csg.analysis.correlation/1"


def compute(inputs: AnalysisInputs) -> AnalysisResult:
    """Schema ``csg.analysis.correlation/1``: ``layer`` (the convolution producing the feature layer),
    ``r_s`` (``s``, ``r``), ``c_ic`` with its ``m``, ``mean_off_diagonal``, ``mean_abs_off_diagonal``,
    ``ordered_by``. Arrays: ``correlation`` (K x K)."""
    layer, conv = feature_conv(inputs.model)
    corr = weight_correlation(conv.weight)
    s, r = r_s_curve(corr)
    K, C = inputs.num_filters, inputs.num_classes
    m = inputs.options.get("m")
    m_used = int(m) if m is not None else max(1, K // C)
    c_ic = inter_class_correlation(corr, inputs.pooled, inputs.labels, m_used, C)
    off = corr[~np.eye(K, dtype=bool)]
    summary = {"schema": SCHEMA, "layer": layer, "r_s": {"s": s, "r": r}, "c_ic": c_ic, "m": m_used,
               "mean_off_diagonal": float(off.mean()) if off.size else float("nan"),
               "mean_abs_off_diagonal": float(np.abs(off).mean()) if off.size else float("nan"),
               "ordered_by": inputs.ordered_by}
    return AnalysisResult("correlation", SCHEMA, summary, {"correlation": corr.astype(np.float32)})


def render(result: AnalysisResult, inputs: AnalysisInputs, figdir) -> list[Figure]:
    s = result.summary
    K = inputs.num_filters
    path, fig1 = figure(figdir, "analysis_correlation.png",
                        f"Cosine between the flattened weights of the {K} filters of {s['layer']}, ordered by their "
                        f"argmax class in the {s['ordered_by']} (lines: class blocks). Inter-class correlation "
                        f"C_IC = {fmt(s['c_ic'])} (m = {s['m']}).")
    figs.correlation_figure(path, result.arrays["correlation"], inputs.order, inputs.owner, layer=s["layer"],
                            c_ic=s["c_ic"], ordered_by=s["ordered_by"])
    path, fig2 = figure(figdir, "analysis_r_s.png",
                        f"r_s: share of off-diagonal filter pairs of {s['layer']} whose weight correlation is at "
                        "least s (log scale near 0).")
    figs.r_s_figure(path, np.asarray(s["r_s"]["s"]), np.asarray(s["r_s"]["r"]), label=inputs.run_name)
    return [fig1, fig2]


def key_numbers(s: dict) -> list[tuple[str, str]]:
    return [(f"inter-class weight correlation C_IC (m = {s.get('m')})", fmt(s.get("c_ic"), 4)),
            ("mean |off-diagonal weight correlation|", fmt(s.get("mean_abs_off_diagonal"), 4))]
