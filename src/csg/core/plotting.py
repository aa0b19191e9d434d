"""The drawing primitives every layer shares: matplotlib on Agg, the one figure writer, heatmaps,
confusion pairs, curves.

Every figure is titled and labelled so it reads on its own, and is saved as PNG
at dpi 110 by :func:`save_figure` (atomically, through :mod:`csg.core.io`):
there is no other ``savefig`` in csg.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import atomic_write_bytes

DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); the one place the backend is chosen."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = DPI, *, tight: bool = True) -> Path:
    """Save ``fig`` as PNG atomically (temporary file, fsync, rename) and close it.

    ``tight=False`` keeps the figure's own layout (for figures laid out with ``tight_layout``).
    """
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def filter_order(class_filter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order filters by their argmax class, strongest first within a class.

    ``class_filter`` is C x K (a gate, or the transposed MI matrix). Returns
    ``(order, owner)`` with ``owner[k]`` the argmax class of filter k.
    """
    M = np.nan_to_num(np.asarray(class_filter, dtype=np.float64), nan=-np.inf)
    owner = M.argmax(axis=0)
    strength = M.max(axis=0)
    return np.lexsort((-strength, owner)), owner


def class_labels(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(c) for c in range(num_classes)]


def class_ticks(ax, axis: str, num_classes: int, names: Sequence[str] | None = None) -> None:
    if num_classes > 40:
        return  # matplotlib's own ticks; 1000 labels do not read
    labels = class_labels(num_classes, names)
    if axis == "x":
        ax.set_xticks(range(num_classes))
        ax.set_xticklabels(labels, rotation=90 if max(map(len, labels)) > 3 else 0, fontsize=8)
    else:
        ax.set_yticks(range(num_classes))
        ax.set_yticklabels(labels, fontsize=8)


def draw_heatmap(fig, ax, matrix, *, title: str, xlabel: str, ylabel: str, cmap: str = "viridis",
                 vmin=None, vmax=None, cbar_label: str | None = None, annotate: bool = False,
                 fmt: str = "{:.2f}", colorbar: bool = True, hide_zero: bool = False):
    """Draw ``matrix`` on ``ax`` with a colour bar; NaN cells are grey."""
    import matplotlib

    M = np.asarray(matrix, dtype=np.float64)
    cm = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(M), aspect="auto", interpolation="nearest", cmap=cm, vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        if cbar_label:
            cb.set_label(cbar_label)
    if annotate and M.size <= 400:
        for (i, j), v in np.ndenumerate(M):
            if np.isfinite(v) and not (hide_zero and v == 0):
                r, g, b, _ = cm(im.norm(v))  # white text on dark cells, black on light ones
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    return im


def class_filter_heatmap(path, matrix, *, title: str, cbar_label: str, order: np.ndarray | None = None,
                         class_names=None, cmap: str = "viridis", vmin=None, vmax=None) -> Path:
    """A C x K class-filter matrix (gate, MI^T) with filters in ``order`` (default: by argmax class)."""
    plt = pyplot()
    M = np.asarray(matrix, dtype=np.float64)
    C, K = M.shape
    if order is None:
        order, _ = filter_order(M)
    fig, ax = plt.subplots(figsize=(min(10, 5 + K / 32), min(7, 2.2 + C * 0.25)))
    draw_heatmap(fig, ax, M[:, order], title=title, xlabel="filter (sorted by argmax class)", ylabel="class",
                 cmap=cmap, vmin=vmin, vmax=vmax, cbar_label=cbar_label)
    class_ticks(ax, "y", C, class_names)
    return save_figure(fig, path)


def row_normalise(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without samples stay 0)."""
    rows = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = confusion / rows
    return np.nan_to_num(out)


def confusion_pair(path, before, after, *, title: str, subtitles=("before", "after"), class_names=None,
                   highlight: Sequence[int] = ()) -> Path:
    """Two row-normalised confusion matrices side by side (rows: true class, columns: predicted)."""
    plt = pyplot()
    C = before.shape[0]
    size = min(7, 2.5 + C * 0.35)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.0, size), gridspec_kw={"wspace": 0.25})
    for i, (ax, conf, sub) in enumerate(zip(axes, (before, after), subtitles)):
        draw_heatmap(fig, ax, row_normalise(conf), title=sub, xlabel="predicted class", ylabel="true class",
                     cmap="Blues", vmin=0, vmax=1, cbar_label="share of the true class", annotate=C <= 12,
                     colorbar=i == 1, hide_zero=True)
        class_ticks(ax, "x", C, class_names)
        class_ticks(ax, "y", C, class_names)
        if C <= 40:
            for c in highlight:
                ax.get_yticklabels()[c].set_color("crimson")
                ax.get_yticklabels()[c].set_fontweight("bold")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def matrix_pair(path, left, right, *, title: str, subtitles: Sequence[str], xlabel: str, ylabel: str,
                cmap: str = "RdBu_r", vmin=-1, vmax=1, cbar_label: str = "", show_class_ticks: bool = True,
                annotate: bool = True, class_names=None) -> Path:
    plt = pyplot()
    C = np.asarray(left).shape[0]
    size = min(7, 2.5 + C * 0.35)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.0, size), gridspec_kw={"wspace": 0.25})
    for i, (ax, M, sub) in enumerate(zip(axes, (left, right), subtitles)):
        draw_heatmap(fig, ax, M, title=sub, xlabel=xlabel, ylabel=ylabel, cmap=cmap, vmin=vmin, vmax=vmax,
                     cbar_label=cbar_label, annotate=annotate and C <= 12, colorbar=i == 1)
        if show_class_ticks:
            class_ticks(ax, "x", np.asarray(M).shape[1], class_names)
            class_ticks(ax, "y", C, class_names)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def bar_with_errors(path, labels: Sequence[str], means, stds, *, title: str, ylabel: str,
                    reference: dict[str, float] | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels) + 2), 3.5))
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=np.nan_to_num(stds), capsize=4, color="#4c72b0")
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    for name, value in (reference or {}).items():
        ax.axhline(value, ls="--", color="grey", lw=1)
        ax.text(len(labels) - 0.5, value, f" {name}", va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def curves(path, series: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str, xlabel: str, ylabel: str,
           logy: bool = False) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label)
    if logy:
        ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
