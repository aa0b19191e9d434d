"""Single-unit ablation (METHOD.md section 4; Zhou et al. 2018).

Zeroing filter k removes ``a_k W[:, k]`` from every logit (the head is linear
after pooling), so all K ablations run as one batched computation

    logits_k = logits - a[:, k, None] * W[:, k]        (K x N x C, chunked over K)

restricted to the (k, n) pairs whose outcome can change (see :func:`ablation_drops`),
and ``D[k, c] = acc_c(intact) - acc_c(without k)``. A unit's class selectivity
is ``(mu_max - mu_rest) / (mu_max + mu_rest)`` with ``mu_max`` its mean
activation on its top class and ``mu_rest`` the mean of its class means over
the other classes; 0 for a dead unit.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.errors import CsgError
from . import figures as figs
from ._common import as_labels, check_pooled, class_means
from .base import AnalysisInputs, AnalysisResult, Figure, figure, fmt, small


@torch.no_grad()
def ablation_drops(pooled, labels, head_weight, head_bias=None, num_classes: int | None = None,
                   device="cpu", budget_bytes: int = 256 * 2 ** 20) -> tuple[np.ndarray, np.ndarray]:
    """``D`` (K x C): per-class accuracy drop when each filter alone is zeroed, and the
    intact per-class accuracy (C). Classes without samples give NaN.

    All K ablations are one batched computation, ``logits_k = logits - a[:, k, None] * W[:, k]``,
    evaluated only where it can matter: zeroing filter k moves any logit difference by at most
    ``|a[n, k]| * (max_c W[c, k] - min_c W[c, k])``, so a sample whose margin (true-class logit
    minus the best other logit) is larger than that in absolute value keeps its outcome. The
    remaining (k, n) pairs, usually a small share, get the exact ``argmax`` in chunks of at most
    ``budget_bytes``; float64 throughout, so the result equals zeroing filters one by one.
    """
    f64 = torch.float64
    W = torch.as_tensor(np.asarray(head_weight), dtype=f64, device=device)
    y, C = as_labels(labels, num_classes if num_classes is not None else W.shape[0])
    a_np = check_pooled(pooled, y)
    N, K = a_np.shape
    if tuple(W.shape) != (C, K):
        raise CsgError(f"head weight is {tuple(W.shape)} but the features give C={C}, K={K}")
    a = torch.as_tensor(a_np, dtype=f64, device=device)
    logits = a @ W.T
    if head_bias is not None:
        logits = logits + torch.as_tensor(np.asarray(head_bias), dtype=f64, device=device)
    yt = torch.as_tensor(y, device=device)
    rows = torch.arange(N, device=device)
    counts = torch.bincount(yt, minlength=C).to(f64)
    correct0 = logits.argmax(1) == yt
    base = torch.bincount(yt[correct0], minlength=C).to(f64) / counts
    true = logits[rows, yt]
    others = logits.clone()
    others[rows, yt] = -torch.inf
    margin = (true - others.max(1).values).abs() if C > 1 else torch.full_like(true, torch.inf)
    spread = W.max(0).values - W.min(0).values  # K: the most one filter can move a logit difference, per unit
    delta = torch.zeros(K * C, dtype=f64, device=device)  # change in correct counts, flattened (k, c)
    k_chunk = max(1, budget_bytes // max(1, N * 8))
    pair_chunk = max(1, budget_bytes // max(1, C * 8 * 3))
    for k0 in range(0, K, k_chunk):  # loop over chunks only; each is one batched op
        ks = torch.arange(k0, min(K, k0 + k_chunk), device=device)
        bound = a[:, ks].abs().T * spread[ks, None]  # k x N
        kk, nn = torch.nonzero(margin.unsqueeze(0) <= bound * (1 + 1e-9) + 1e-12, as_tuple=True)
        kk = ks[kk]
        for p0 in range(0, kk.numel(), pair_chunk):
            k_, n_ = kk[p0:p0 + pair_chunk], nn[p0:p0 + pair_chunk]
            ablated = logits[n_] - a[n_, k_].unsqueeze(1) * W[:, k_].T  # pairs x C
            change = (ablated.argmax(1) == yt[n_]).to(f64) - correct0[n_].to(f64)
            delta.index_add_(0, k_ * C + yt[n_], change)
    drop = -delta.view(K, C) / counts
    return drop.cpu().numpy(), base.cpu().numpy()


def class_selectivity(pooled, labels, num_classes: int | None = None, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Selectivity per unit (K) and its top class (K). Classes without samples are ignored."""
    mu, counts = class_means(pooled, labels, num_classes)
    mu = mu[counts > 0]
    if mu.shape[0] < 2:
        raise CsgError("class selectivity needs samples of at least two classes")
    present = np.flatnonzero(counts > 0)
    top = mu.argmax(axis=0)
    mu_max = mu.max(axis=0)
    mu_rest = (mu.sum(axis=0) - mu_max) / (mu.shape[0] - 1)
    denom = mu_max + mu_rest
    sel = np.where(np.abs(denom) > eps, (mu_max - mu_rest) / np.where(np.abs(denom) > eps, denom, 1.0), 0.0)
    return sel, present[top]


def selectivity_vs_drop(selectivity, drop) -> dict[str, float]:
    """Spearman rank correlation between selectivity and the largest per-class drop ``max_c D[k, c]``."""
    from scipy.stats import spearmanr

    max_drop = np.nanmax(np.asarray(drop, dtype=np.float64), axis=1)
    sel = np.asarray(selectivity, dtype=np.float64)
    if np.ptp(sel) == 0 or np.ptp(max_drop) == 0:  # a constant input has no rank correlation
        return {"spearman": math.nan, "p_value": math.nan}
    res = spearmanr(sel, max_drop)
    return {"spearman": float(res.statistic if hasattr(res, "statistic") else res[0]),
            "p_value": float(res.pvalue if hasattr(res, "pvalue") else res[1])}


# ---- the analysis entry (registry) -----------------------------------------------------------------------
SCHEMA = "csg.analysis.ablation/1"


def compute(inputs: AnalysisInputs) -> AnalysisResult:
    """Schema ``csg.analysis.ablation/1``: ``drop`` (K x C when small), ``base_per_class_accuracy``,
    ``selectivity``, ``top_class``, ``max_drop``, ``max_drop_class`` (per filter),
    ``spearman_selectivity_max_drop`` with its ``p_value``, ``top_class_is_max_drop_class``,
    ``mean_max_drop``. Arrays: ``ablation_drop`` (K x C), ``selectivity`` (K)."""
    drop, base = ablation_drops(inputs.pooled, inputs.labels, inputs.head_weight, inputs.head_bias,
                                inputs.num_classes, device=inputs.device)
    selectivity, top_class = class_selectivity(inputs.pooled, inputs.labels, inputs.num_classes)
    stats = selectivity_vs_drop(selectivity, drop)
    max_drop = np.nanmax(drop, axis=1)
    max_drop_class = np.nanargmax(np.where(np.isnan(drop), -np.inf, drop), axis=1)
    hit = (top_class == max_drop_class)[max_drop > 0]
    summary = {"schema": SCHEMA, "drop": small(drop), "base_per_class_accuracy": base, "selectivity": selectivity,
               "top_class": top_class, "max_drop": max_drop, "max_drop_class": max_drop_class,
               "spearman_selectivity_max_drop": stats["spearman"], "p_value": stats["p_value"],
               "top_class_is_max_drop_class": float(hit.mean()) if hit.size else math.nan,
               "mean_max_drop": float(np.nanmean(max_drop))}
    return AnalysisResult("ablation", SCHEMA, summary, {"ablation_drop": drop, "selectivity": selectivity})


def render(result: AnalysisResult, inputs: AnalysisInputs, figdir) -> list[Figure]:
    s = result.summary
    path, fig = figure(figdir, "analysis_ablation.png",
                       "Left: per-class accuracy drop when one filter is zeroed (all filters in one batched pass "
                       "through the head). Right: class selectivity vs the largest per-class drop; Spearman rho = "
                       f"{fmt(s['spearman_selectivity_max_drop'], 2)}.")
    figs.ablation_figure(path, result.arrays["ablation_drop"], result.arrays["selectivity"], inputs.order,
                         spearman=s["spearman_selectivity_max_drop"], class_names=inputs.class_names)
    return [fig]


def key_numbers(s: dict) -> list[tuple[str, str]]:
    return [("ablation: Spearman(selectivity, largest drop)", fmt(s.get("spearman_selectivity_max_drop"))),
            ("ablation: mean largest per-class drop", fmt(s.get("mean_max_drop"), 4))]
