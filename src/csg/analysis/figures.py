"""Figures of the analyses (each reads on its own: title, axes, colour bar)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.plotting import (class_ticks, confusion_pair, curves, draw_heatmap, matrix_pair, pyplot,
                              save_figure)


def removal_figure(path, before, after, *, classes, num_removed: int, criterion: str, class_names=None) -> Path:
    S = ", ".join(map(str, classes))
    return confusion_pair(path, before, after, class_names=class_names, highlight=classes,
                          title=f"class-filter removal: {num_removed} filters of classes {{{S}}} zeroed "
                                f"({criterion})",
                          subtitles=("before removal", "after removal"))


def similarity_figure(path, tp, fn, *, reference: str, class_names=None) -> Path:
    ref = "G[c]" if reference == "gate" else "MI[:, c]"
    return matrix_pair(path, tp, fn, title=f"feature-gate similarity cos(a_y(D), {ref})",
                       subtitles=("D = true positives", "D = false negatives"),
                       xlabel=f"class c of {ref}", ylabel="class y of the samples", cmap="RdBu_r", vmin=-1, vmax=1,
                       cbar_label="cosine", class_names=class_names)


def correlation_figure(path, corr, order, owner, *, layer: str, c_ic: float, ordered_by: str) -> Path:
    plt = pyplot()
    K = corr.shape[0]
    fig, ax = plt.subplots(figsize=(6.8, 5.8))
    draw_heatmap(fig, ax, corr[np.ix_(order, order)], title=f"filter weight correlation ({layer}), "
                 f"C_IC = {c_ic:.3f}\nfilters ordered by argmax class of the {ordered_by}",
                 xlabel="filter", ylabel="filter", cmap="RdBu_r", vmin=-1, vmax=1, cbar_label="cosine")
    # class block boundaries
    owners = owner[order]
    edges = np.flatnonzero(np.diff(owners)) + 0.5
    for e in edges:
        ax.axhline(e, color="black", lw=0.4)
        ax.axvline(e, color="black", lw=0.4)
    if K > 64:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)


def r_s_figure(path, s, r, *, label: str) -> Path:
    return curves(path, {label: (s, r)}, title="r_s: share of filter pairs with weight correlation >= s",
                  xlabel="s", ylabel="r_s", logy=True)


def clusters_figure(path, centres, contingency, order, *, purity: float, ari: float, class_names=None) -> Path:
    plt = pyplot()
    k, K = centres.shape
    C = contingency.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(13, min(7, 2.5 + k * 0.35)), gridspec_kw={"width_ratios": [2, 1], "wspace": 0.35})
    draw_heatmap(fig, axes[0], centres[:, order], title="k-means cluster centres (pooled features)",
                 xlabel="filter (sorted by argmax class)", ylabel="cluster (by majority class)", cmap="magma",
                 vmin=0 if np.nanmin(centres) >= 0 else None, cbar_label="mean activation")
    draw_heatmap(fig, axes[1], contingency, title=f"cluster x class counts\npurity {purity:.2f}, ARI {ari:.2f}",
                 xlabel="true class", ylabel="cluster", cmap="Greens", vmin=0, cbar_label="samples",
                 annotate=C <= 12 and k <= 12, fmt="{:.0f}", hide_zero=True)
    class_ticks(axes[1], "x", C, class_names)
    return save_figure(fig, path)


def ablation_figure(path, drop, selectivity, order, *, spearman: float, class_names=None) -> Path:
    plt = pyplot()
    K, C = drop.shape
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"wspace": 0.35})
    lim = float(np.nanmax(np.abs(drop))) if np.isfinite(drop).any() else 1.0
    lim = lim or 1.0
    draw_heatmap(fig, axes[0], drop[order].T, title="per-class accuracy drop D[k, c] when filter k alone is zeroed",
                 xlabel="filter (sorted by argmax class)", ylabel="class", cmap="RdBu_r", vmin=-lim, vmax=lim,
                 cbar_label="accuracy drop")
    class_ticks(axes[0], "y", C, class_names)
    max_drop = np.nanmax(drop, axis=1)
    axes[1].scatter(selectivity, max_drop, s=12, alpha=0.7)
    axes[1].set_xlabel("class selectivity (mu_max - mu_rest) / (mu_max + mu_rest)")
    axes[1].set_ylabel("largest per-class accuracy drop")
    axes[1].set_title(f"selectivity vs largest drop (Spearman {spearman:.2f})", fontsize=10)
    axes[1].grid(alpha=0.3)
    return save_figure(fig, path)
