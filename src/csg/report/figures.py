"""The report's own figures: training curves and the gate-MI argmax overlap (primitives: core.plotting)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.plotting import (bar_with_errors, class_filter_heatmap, class_ticks, curves, draw_heatmap,  # noqa: F401
                             filter_order, pyplot, save_figure)

__all__ = ["training_curves", "overlap_figure", "class_filter_heatmap", "filter_order", "bar_with_errors", "curves"]


def training_curves(path, log: list[dict], *, title: str = "training curves") -> Path | None:
    """Loss, accuracies, L1-density and learning rate per epoch; CSG epochs shaded.

    Missing keys are skipped; returns None when the log has nothing to plot.
    """
    rows = [r for r in log if isinstance(r, dict) and isinstance(r.get("epoch"), (int, float))]
    if not rows:
        return None
    epochs = np.array([r["epoch"] for r in rows], dtype=float)

    def series(key):
        vals = np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in rows], dtype=float)
        return vals if np.isfinite(vals).any() else None

    panels = []
    if series("loss") is not None:
        panels.append(("loss", [("loss", "loss")]))
    acc = [(k, lab) for k, lab in (("train_accuracy", "train (STD path)"), ("train_csg_accuracy", "train (CSG path)"),
                                    ("test_accuracy", "test")) if series(k) is not None]
    if acc:
        panels.append(("accuracy", acc))
    if series("l1_density") is not None:
        panels.append(("L1-density of the gate", [("l1_density", "L1-density")]))
    if series("lr") is not None:
        panels.append(("learning rate", [("lr", "lr")]))
    if not panels:
        return None
    plt = pyplot()
    n = len(panels)
    cols = min(n, 2)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(5.5 * cols, 3.2 * math.ceil(n / cols)),
                             squeeze=False)
    csg_epochs = [r["epoch"] for r in rows if str(r.get("phase", "")).lower() in ("csg", "joint")]
    for ax, (name, keys) in zip(axes.ravel(), panels):
        for e in csg_epochs:
            ax.axvspan(e - 0.5, e + 0.5, color="#fde0c5", lw=0, zorder=0)
        for key, label in keys:
            ax.plot(epochs, series(key), marker="o", ms=3, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if len(keys) > 1 or csg_epochs:
            if csg_epochs:
                from matplotlib.patches import Patch

                handles, labels = ax.get_legend_handles_labels()
                ax.legend(handles + [Patch(color="#fde0c5", label="CSG epoch")], labels + ["CSG epoch"], fontsize=8)
            else:
                ax.legend(fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def overlap_figure(path, gate_owner: np.ndarray, mi_owner: np.ndarray, num_classes: int, *,
                   title: str = "argmax class per filter: gate vs MI", class_names=None) -> Path:
    """Contingency of each filter's argmax class in the gate (rows) and in the MI matrix (columns)."""
    plt = pyplot()
    C = num_classes
    table = np.zeros((C, C), dtype=np.int64)
    np.add.at(table, (np.asarray(gate_owner), np.asarray(mi_owner)), 1)
    agree = int(np.trace(table))
    K = int(table.sum())
    size = min(7, 2.5 + C * 0.35)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    draw_heatmap(fig, ax, table, title=f"{title}\n{agree} of {K} filters agree ({agree / max(K, 1):.0%})",
                 xlabel="argmax class in the MI matrix", ylabel="argmax class in the gate", cmap="Greens",
                 vmin=0, cbar_label="filters", annotate=C <= 12, fmt="{:.0f}", hide_zero=True)
    class_ticks(ax, "x", C, class_names)
    class_ticks(ax, "y", C, class_names)
    return save_figure(fig, path)
