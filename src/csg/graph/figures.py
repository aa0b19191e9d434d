"""Pictures of a mined graph: where the top nodes fire, one image with its nodes and links, the evaluation."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.plotting import pyplot, save_figure

LAYER_COLOURS = ("tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:red")


def _display(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """uint8 or float C x H x W -> an array imshow reads (grey 2-D or RGB) and its colour map."""
    x = image.detach().cpu().to(torch.float32)
    if image.dtype == torch.uint8:
        x = x / 255.0
    x = x.clamp(0, 1).numpy()
    return (x[0], "gray") if x.shape[0] == 1 else (np.transpose(x[:3], (1, 2, 0)), None)


def crop(image: torch.Tensor, centre: Sequence[float], side: int) -> torch.Tensor:
    """A ``side x side`` patch of ``image`` (C x H x W) centred on ``centre`` (row, column), zeros off the image."""
    half = side // 2
    padded = torch.nn.functional.pad(image, (half, half + 1, half, half + 1))
    r, c = int(round(float(centre[0]))), int(round(float(centre[1])))
    r = min(max(r, -half), image.shape[1] - 1 + half)
    c = min(max(c, -half), image.shape[2] - 1 + half)
    return padded[:, r:r + side, c:c + side]


def top_units(scores: torch.Tensor, count: int, top_images: int = 20,
              groups: torch.Tensor | None = None) -> torch.Tensor:
    """The ``count`` units with the highest mean score over their ``top_images`` best images; with
    ``groups`` (a unit's filter) at most one unit per group, so that a picture shows different filters."""
    t = max(1, min(top_images, scores.shape[1]))
    strength = torch.topk(scores, t, dim=1).values.mean(1)
    order = torch.argsort(strength, descending=True)
    if groups is not None:
        g = groups[order]
        first = torch.ones_like(g, dtype=torch.bool)
        sorted_g, pos = torch.sort(g, stable=True)
        first[pos[1:]] = sorted_g[1:] != sorted_g[:-1]
        order = order[first]
    return order[:count]


def patches_figure(path: str | Path, images: torch.Tensor, layers: Sequence[dict], *, nodes: int = 5,
                   patches: int = 6, cell: int = 36, title: str = "") -> Path:
    """For each layer (``{"name", "positions" n x N x 2 px, "scores" n x N, "filters" n, "side"}``) the best node
    of each of its ``nodes`` most responsive filters, one row each, with the patches (``side`` px, shown at
    ``cell`` px) of the ``patches`` images where the node scores highest; one mosaic, one image."""
    plt = pyplot()
    rows = [(lay, int(u)) for lay in layers for u in top_units(lay["scores"], nodes, groups=lay["filters"])]
    gap = 3
    height, width = len(rows) * (cell + gap), patches * (cell + gap)
    channels = int(images.shape[1])
    mosaic = np.ones((height, width, 3 if channels == 3 else 1), dtype=np.float32)
    labels = []
    for r, (lay, u) in enumerate(rows):  # a few dozen patches
        order = torch.argsort(lay["scores"][u], descending=True)[:patches]
        for j, i in enumerate(order.tolist()):
            patch = crop(images[i], lay["positions"][u, i], lay["side"]).to(torch.float32)
            if images.dtype == torch.uint8:
                patch = patch / 255.0
            patch = torch.nn.functional.interpolate(patch[None], size=(cell, cell), mode="nearest")[0]
            y0, x0 = r * (cell + gap), j * (cell + gap)
            mosaic[y0:y0 + cell, x0:x0 + cell] = patch.clamp(0, 1).permute(1, 2, 0).numpy()
            labels.append((x0 + 1, y0 + cell - 2, f"{float(lay['scores'][u, i]):.1f}"))
    disp = mosaic[..., 0] if channels != 3 else mosaic
    fig, ax = plt.subplots(figsize=(width / 40 + 1.6, height / 40 + 0.6))
    ax.imshow(disp, cmap="gray" if channels != 3 else None, vmin=0, vmax=1, interpolation="nearest")
    for x, y, text in labels:
        ax.text(x, y, text, fontsize=5, color="yellow")
    centre = cell // 2
    ax.plot([j * (cell + gap) + centre for j in range(patches) for _ in rows],
            [r * (cell + gap) + centre for _ in range(patches) for r in range(len(rows))], "+", color="red",
            markersize=4)
    ax.set_yticks([r * (cell + gap) + centre for r in range(len(rows))])
    ax.set_yticklabels([f"{lay['name']} node {u} (filter {int(lay['filters'][u])})" for lay, u in rows], fontsize=6)
    ax.set_xticks([j * (cell + gap) + centre for j in range(patches)])
    ax.set_xticklabels([f"#{j + 1}" for j in range(patches)], fontsize=6)
    ax.set_title(title or "per layer, the best node of each of the most responsive filters on its best images\n"
                          "(+ = inferred position; yellow = score S, mean 1 over nodes and images)", fontsize=7)
    return save_figure(fig, path)


def graph_overlay_figure(path: str | Path, image: torch.Tensor, layers: Sequence[dict], *, per_layer: int = 10,
                         links: int = 3, title: str = "") -> Path:
    """One image with, per layer, the ``per_layer`` nodes that score highest on it (dot size ~ score), each
    linked to its ``links`` best-scoring parents on this image. ``layers`` bottom to top, each
    ``{"name", "positions" n x 2 px, "scores" n, "parents" n x N or None}`` for this image. A linked parent
    outside its layer's top nodes is drawn as a small ring of its layer's colour, so every line ends at a node."""
    plt = pyplot()
    disp, cmap = _display(image)
    h, w = disp.shape[:2]
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    ax.imshow(disp, cmap=cmap, vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    chosen = [torch.topk(lay["scores"], min(per_layer, lay["scores"].numel())).indices for lay in layers]
    linked: list[set[int]] = [set() for _ in layers]  # parents a line ends at, per layer
    for li, lay in enumerate(layers):
        colour = LAYER_COLOURS[li % len(LAYER_COLOURS)]
        sel = chosen[li]
        pos = lay["positions"][sel]
        sc = lay["scores"][sel].clamp_min(0)
        if lay.get("parents") is not None and li + 1 < len(layers):
            up = layers[li + 1]
            par = lay["parents"][sel]  # v x N
            best = torch.topk(up["scores"][par], min(links, par.shape[1]), dim=1).indices
            for v in range(sel.numel()):  # a handful of lines
                for u in par[v, best[v]].tolist():
                    linked[li + 1].add(int(u))
                    p0, p1 = pos[v], up["positions"][u]
                    ax.plot([float(p0[1]), float(p1[1])], [float(p0[0]), float(p1[0])], "-", color=colour,
                            alpha=0.45, linewidth=0.8)
        ax.scatter(pos[:, 1].numpy(), pos[:, 0].numpy(), s=(12 + 60 * sc / sc.max().clamp_min(1e-9)).numpy(),
                   color=colour, edgecolors="white", linewidths=0.5, label=f"{lay['name']} (top {sel.numel()})",
                   zorder=3 + li)
    for li, lay in enumerate(layers):
        extra = sorted(linked[li] - set(chosen[li].tolist()))
        if extra:
            ring = lay["positions"][torch.as_tensor(extra)]
            ax.scatter(ring[:, 1].numpy(), ring[:, 0].numpy(), s=14, facecolors="none",
                       edgecolors=LAYER_COLOURS[li % len(LAYER_COLOURS)], linewidths=1.0, zorder=3 + li,
                       label=f"{lay['name']} (linked parents)")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="lower right", framealpha=0.8)
    ax.set_title(title or "inferred nodes and their links to parents", fontsize=8)
    return save_figure(fig, path)


def evaluation_figure(path: str | Path, evaluation: dict, title: str = "") -> Path:
    """Location instability per layer (nodes vs raw filters) and few-shot part localization error."""
    plt = pyplot()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    inst = evaluation.get("instability", {})
    names = list(inst.get("nodes", {}).get("per_layer", {}))
    x = np.arange(len(names))
    for off, key, label, colour in ((-0.2, "nodes", "graph nodes", "tab:blue"),
                                    (0.2, "raw_filters", "raw filters", "tab:gray")):
        vals = [inst.get(key, {}).get("per_layer", {}).get(n, np.nan) for n in names]
        a0.bar(x + off, vals, width=0.4, label=label, color=colour)
    a0.set_xticks(x)
    a0.set_xticklabels(names, fontsize=8)
    a0.set_ylabel("instability (std of distance / diagonal)", fontsize=8)
    a0.set_title("location instability of the top units (lower = steadier)", fontsize=9)
    a0.legend(fontsize=7)
    shots = [k for k in evaluation.get("few_shot", {})]
    x = np.arange(len(shots))
    for off, key, label, colour in ((-0.27, "nodes", "graph nodes", "tab:blue"),
                                    (0.0, "raw_filters", "raw filters", "tab:gray"),
                                    (0.27, "fixed", "fixed position", "tab:olive")):
        vals = [evaluation["few_shot"][k].get(key, np.nan) for k in shots]
        a1.bar(x + off, vals, width=0.27, label=label, color=colour)
    a1.set_xticks(x)
    a1.set_xticklabels([f"{k}-shot" for k in shots], fontsize=8)
    a1.set_ylabel("part error (distance / diagonal)", fontsize=8)
    a1.set_title("few-shot part localization (lower = better)", fontsize=9)
    a1.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
