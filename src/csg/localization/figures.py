"""Overlay figures: image, map, ground-truth mask and predicted region, one row per (class, filter, image)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.plotting import pyplot, save_figure


def to_display(image: np.ndarray) -> np.ndarray:
    """``C x H x W`` in [0, 1] -> ``H x W`` (grey) or ``H x W x 3`` for imshow."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 1:
        return image[0]
    if image.ndim == 3:
        return np.clip(np.transpose(image[:3], (1, 2, 0)), 0, 1)
    return image


def _show_image(ax, image: np.ndarray) -> None:
    disp = to_display(image)
    ax.imshow(disp, cmap="gray" if disp.ndim == 2 else None, vmin=0, vmax=1)


def overlay_grid(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Draw one row per entry of ``rows`` (keys ``image`` C x H x W in [0, 1], ``map`` H x W, ``mask`` and
    ``region`` H x W bool, ``label`` the row's caption, ``iou``) with four panels: the image, the map over
    it, the object mask, and the predicted region against the mask outline."""
    plt = pyplot()

    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 4, figsize=(8.4, 2.1 * n + 0.6), squeeze=False)
    heads = ("image", "map", "object mask", "predicted region")
    for r, row in enumerate(rows):
        ax = axes[r]
        _show_image(ax[0], row["image"])
        ax[0].set_ylabel(row.get("label", ""), fontsize=7)
        _show_image(ax[1], row["image"])
        ax[1].imshow(row["map"], cmap="jet", alpha=0.55)
        ax[2].imshow(row["mask"], cmap="gray", vmin=0, vmax=1)
        ax[3].imshow(row["region"], cmap="Blues", vmin=0, vmax=1)
        ax[3].contour(row["mask"].astype(float), levels=[0.5], colors="red", linewidths=0.8)
        if "iou" in row:
            ax[3].set_xlabel(f"IoU {row['iou']:.2f}", fontsize=7)
        for a, h in zip(ax, heads):
            a.set_xticks([])
            a.set_yticks([])
            if r == 0:
                a.set_title(h, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.text(0.5, 0.005, "red outline: object mask; blue: the method's region", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    return save_figure(fig, path, tight=False)
