"""Fashion-MNIST in clutter: objects on a larger canvas with known object masks.

Each Fashion-MNIST image is resized to a seeded random side (one of ``sizes``) and pasted at a seeded
random position on a black ``canvas x canvas`` image. Clutter is ``fragments`` small crops
(``fragment_size`` px) cut from OTHER images of the same split, dimmed by a random factor in ``dim``,
placed at random and removed wherever they would touch the object's mask, so the label stays the
object's. The mask is the object's own pixels: the nonzero pixels of the resized object.

Generation is batched with torch (one ``F.interpolate`` per size bucket, one ``scatter_reduce`` for all
fragments), deterministic for a seed and split, and cached as an uncompressed ``.npz`` (written
atomically) keyed by the parameters and a checksum of the source images, under ``$CSG_CACHE_DIR`` or
``~/.cache/csg``.

Each canvas also carries its layout (object side, top row, left column) and part landmarks: points
defined once per class in the 28 x 28 object frame (extremal points of the class's mean mask, see
``frame_landmarks``) and mapped exactly onto every canvas (``canvas_landmarks``), with a validity mask.
``clutter_negatives`` draws canvases of clutter alone, the negative images of the explanatory graph.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import CsgError
from ..core.io import atomic_write_with

NAME = "fashion-mnist-clutter"
CACHE_ENV = "CSG_CACHE_DIR"
FORMAT_VERSION = 1
DEFAULTS = dict(canvas=64, sizes=(24, 28, 32, 36, 40, 44), fragments=6, fragment_size=10, dim=(0.25, 0.55))


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "csg"


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Uncompressed ``np.savez`` streamed into an atomically renamed file (large arrays are not held
    twice in memory, as a bytes buffer would)."""
    return atomic_write_with(path, lambda fh: np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()}))


def _split_seed(seed: int, split: str) -> int:
    # object-free negative canvases (``clutter_negatives``) draw from streams of their own
    return int(seed) * 1_000_003 + {"train": 0, "test": 1, "train-negatives": 3, "test-negatives": 4}.get(split, 2)


def _draw_layout(n: int, g: torch.Generator, canvas: int, sizes: Sequence[int]):
    """The first draws of a canvas set: object side and top-left corner (``make_clutter`` and
    ``clutter_layout`` share them, so the layout can be rebuilt from the seed without the images)."""
    size_idx = torch.randint(len(sizes), (n,), generator=g)
    size = torch.tensor([int(s) for s in sizes])[size_idx]
    y = (torch.rand(n, generator=g) * (canvas - size + 1)).long()
    x = (torch.rand(n, generator=g) * (canvas - size + 1)).long()
    return size_idx, size, y, x


def clutter_layout(n: int, seed: int, *, canvas: int = 64, sizes: Sequence[int] = DEFAULTS["sizes"]) -> torch.Tensor:
    """``N x 3`` int64 (object side, top row, left column) of the canvases ``make_clutter(objects, seed)``
    builds from N objects: the same first draws of the same generator."""
    g = torch.Generator().manual_seed(int(seed))
    _, size, y, x = _draw_layout(int(n), g, int(canvas), sizes)
    return torch.stack([size, y, x], dim=1)


def make_clutter(objects: torch.Tensor, seed: int = 0, *, canvas: int = 64,
                 sizes: Sequence[int] = DEFAULTS["sizes"], fragments: int = 6, fragment_size: int = 10,
                 dim: tuple[float, float] = (0.25, 0.55), chunk: int = 8192,
                 with_objects: bool = True) -> dict[str, torch.Tensor]:
    """Place ``objects`` (uint8 ``N x h x w``) on cluttered canvases.

    Returns ``images`` (uint8 ``N x canvas x canvas``), ``masks`` (bool, the object's nonzero pixels),
    and the layout: ``size``, ``y``, ``x`` (object side and top-left corner), ``src`` (the image each
    fragment was cut from, ``N x fragments``). The resized object is
    ``round(clamp(interpolate(object, (s, s), bilinear, antialias, align_corners=False), 0, 255))``.
    ``with_objects=False`` leaves the objects out: canvases of clutter alone (empty masks, and no
    object-shaped hole in the clutter), drawn with the same random numbers.
    """
    if objects.dim() == 4:
        objects = objects[:, 0]
    n, h, w = objects.shape
    sizes = [int(s) for s in sizes]
    if max(sizes) > canvas:
        raise CsgError(f"object size {max(sizes)} does not fit a {canvas} px canvas; lower sizes or raise canvas")
    f = int(fragment_size)
    if fragments and (f > min(h, w) or f > canvas):
        raise CsgError(f"fragment_size {f} is larger than the images ({h} x {w}) or the canvas")
    if fragments and n < 2:
        raise CsgError("clutter needs at least 2 images (fragments come from other images)")
    g = torch.Generator().manual_seed(int(seed))
    # every random number is drawn up front, in a fixed order: the result depends only on seed and N
    size_idx, size, y, x = _draw_layout(n, g, canvas, sizes)
    src = (torch.arange(n)[:, None] + torch.randint(1, max(n, 2), (n, fragments), generator=g)) % n
    margin_y = min(4, (h - f) // 2)
    margin_x = min(4, (w - f) // 2)
    oy = torch.randint(margin_y, h - f - margin_y + 1, (n, fragments), generator=g)
    ox = torch.randint(margin_x, w - f - margin_x + 1, (n, fragments), generator=g)
    py = torch.randint(0, canvas - f + 1, (n, fragments), generator=g)
    px = torch.randint(0, canvas - f + 1, (n, fragments), generator=g)
    factor = dim[0] + (dim[1] - dim[0]) * torch.rand(n, fragments, generator=g)

    # the object layer: one interpolate per size bucket, pasted with advanced indexing
    obj = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    for b, s in enumerate(sizes if with_objects else ()):  # a handful of buckets
        sel = (size_idx == b).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        ar = torch.arange(s)
        for start in range(0, sel.numel(), chunk):
            part = sel[start:start + chunk]
            resized = F.interpolate(objects[part].float()[:, None], size=(s, s), mode="bilinear",
                                    antialias=True, align_corners=False)[:, 0]
            resized = resized.clamp_(0, 255).round_().to(torch.uint8)
            rows = (y[part][:, None, None] + ar[None, :, None])
            cols = (x[part][:, None, None] + ar[None, None, :])
            obj[part[:, None, None], rows, cols] = resized
    masks = obj > 0

    # the clutter layer: crops of other images, dimmed, merged by max, removed from the mask
    images = obj.clone()
    if fragments:
        ar = torch.arange(f)
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            m = sl.stop - sl.start
            crops = objects[src[sl][..., None, None], oy[sl][..., None, None] + ar[:, None],
                            ox[sl][..., None, None] + ar[None, :]].float()  # m x F x f x f
            vals = (crops * factor[sl][..., None, None]).round_().clamp_(0, 255)
            flat = (torch.arange(m)[:, None, None, None] * canvas * canvas
                    + (py[sl][..., None, None] + ar[:, None]) * canvas + (px[sl][..., None, None] + ar[None, :]))
            clutter = torch.zeros(m * canvas * canvas)
            clutter.scatter_reduce_(0, flat.reshape(-1), vals.reshape(-1), reduce="amax", include_self=True)
            clutter = clutter.view(m, canvas, canvas).to(torch.uint8)
            clutter[masks[sl]] = 0  # clutter never touches the object
            images[sl] = torch.where(masks[sl], obj[sl], clutter)
    return {"images": images, "masks": masks, "size": size, "y": y, "x": x, "src": src}


#: landmark name -> direction (row, column) in which it is the extremal point of the class's mean mask
LANDMARK_DIRECTIONS = {"top": (-1.0, 0.0), "bottom-left": (1.0, -1.0), "bottom-right": (1.0, 1.0)}


def frame_landmarks(objects: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                    threshold: float = 0.5) -> torch.Tensor:
    """``C x P x 2`` landmarks (row, column) in the object's own frame, one set per class.

    The class's mean mask ``M_c = mean over its objects of 1[object > 0]`` is thresholded at
    ``threshold``; landmark p is the mask pixel extremal in direction ``u_p`` of
    ``LANDMARK_DIRECTIONS``, ``argmax_pixel u_p . (row, col)``, ties broken by the tied pixel nearest
    their mean. A class with no pixel over the threshold gets NaN landmarks.
    """
    if objects.dim() == 4:
        objects = objects[:, 0]
    _, h, w = objects.shape
    occupied = (objects > 0).to(torch.float32).reshape(objects.shape[0], -1)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(torch.float32)
    mean_mask = torch.zeros(num_classes, h * w).index_add_(0, labels, occupied) / counts[:, None]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    coords = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)  # HW x 2
    directions = torch.tensor(list(LANDMARK_DIRECTIONS.values()))  # P x 2
    inside = mean_mask >= threshold  # C x HW
    proj = (coords @ directions.T).T[None].expand(num_classes, -1, -1)  # C x P x HW
    proj = torch.where(inside[:, None], proj, torch.tensor(-float("inf")))
    best = proj.amax(dim=2, keepdim=True)
    tied = (proj == best) & inside[:, None]  # C x P x HW
    weight = tied.to(torch.float32)
    centre = (weight @ coords) / weight.sum(2, keepdim=True).clamp_min(1.0)  # C x P x 2
    dist = ((coords[None, None] - centre[:, :, None]) ** 2).sum(-1)
    nearest = torch.where(tied, dist, torch.tensor(float("inf"))).argmin(dim=2)  # C x P
    out = coords[nearest]
    return torch.where(inside.any(1)[:, None, None], out, torch.tensor(float("nan")))


def canvas_landmarks(frame: torch.Tensor, labels: torch.Tensor, layout: torch.Tensor, masks: torch.Tensor,
                     object_side: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Map the object-frame landmarks of each image's class onto its canvas.

    ``frame`` is ``C x P x 2`` (row, column in the ``object_side`` frame), ``layout`` is ``N x 3``
    (side s, top y, left x). Resizing ``object_side -> s`` with ``align_corners=False`` sends the pixel
    centre r to ``(r + 0.5) * s / object_side - 0.5``, so a landmark lands at
    ``(y, x) + (r + 0.5) * s / object_side - 0.5`` (pixel centres at integers). Returns ``landmarks``
    (``N x P x 2`` float32) and ``valid`` (``N x P`` bool): the object covers the landmark's pixel or one
    of its 8 neighbours (an object smaller than its class's mean mask may miss a tip).
    """
    size = layout[:, 0].to(torch.float32)[:, None, None]
    corner = layout[:, 1:3].to(torch.float32)[:, None, :]
    points = corner + (frame[labels] + 0.5) * size / float(object_side) - 0.5  # N x P x 2
    n, h, w = masks.shape
    near = F.max_pool2d(masks[:, None].to(torch.float32), 3, stride=1, padding=1)[:, 0] > 0
    finite = torch.isfinite(points).all(-1)
    r = points[..., 0].nan_to_num(0).round().long().clamp(0, h - 1)
    c = points[..., 1].nan_to_num(0).round().long().clamp(0, w - 1)
    on_object = near[torch.arange(n)[:, None], r, c]
    inside = (points[..., 0] > -0.5) & (points[..., 0] < h - 0.5) & (points[..., 1] > -0.5) & (points[..., 1] < w - 0.5)
    return points, finite & inside & on_object


def clutter_negatives(n: int, split: str = "test", data_dir=None, seed: int = 0, canvas: int = 64, *,
                      sizes: Sequence[int] = DEFAULTS["sizes"], fragments: int = 6, fragment_size: int = 10,
                      dim: tuple[float, float] = (0.25, 0.55)) -> torch.Tensor:
    """``n`` canvases of clutter without an object (uint8 ``n x 1 x canvas x canvas``), from the same
    generator as the split's canvases (fragments of the split's images, same counts, sizes and dimming)
    but a seeded stream of their own: the "negative images" of the explanatory graph's normalisation."""
    from . import load_dataset

    if n < 2:
        raise CsgError(f"need at least 2 negative canvases, got {n}")
    source = load_dataset("fashion-mnist", split=split, data_dir=data_dir)
    pick = torch.randperm(len(source), generator=torch.Generator().manual_seed(int(seed)))[:n]
    out = make_clutter(source.images[pick], _split_seed(seed, f"{split}-negatives"), canvas=canvas, sizes=sizes,
                       fragments=fragments, fragment_size=fragment_size, dim=dim, with_objects=False)
    return out["images"][:, None]


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    a = zlib.adler32(images.contiguous().numpy().tobytes())
    b = zlib.adler32(labels.contiguous().numpy().astype(np.int64).tobytes())
    return f"{images.shape[0]}-{a:08x}-{b:08x}"


def load_clutter(split: str, data_dir=None, seed: int = 0, canvas: int = 64, *,
                 sizes: Sequence[int] = DEFAULTS["sizes"], fragments: int = 6, fragment_size: int = 10,
                 dim: tuple[float, float] = (0.25, 0.55), cache: str | os.PathLike | None = None,
                 use_cache: bool = True):
    """The Fashion-MNIST clutter split as an :class:`~csg.data.dataset.ImageDataset` with masks.

    ``data_dir`` is the Fashion-MNIST folder; ``seed`` fixes the layout (train and test draw from
    different streams of it). Cached under ``cache`` (default ``$CSG_CACHE_DIR`` or ``~/.cache/csg``).
    ``mean``/``std`` are the statistics of the split itself (the trainer records the train split's).
    """
    from . import load_dataset
    from .dataset import ImageDataset

    if split not in ("train", "test"):
        raise CsgError(f"unknown split {split!r}; choose train or test")
    source = load_dataset("fashion-mnist", split=split, data_dir=data_dir)
    params = dict(v=FORMAT_VERSION, split=split, seed=int(seed), canvas=int(canvas), sizes=[int(s) for s in sizes],
                  fragments=int(fragments), fragment_size=int(fragment_size), dim=[float(d) for d in dim],
                  source=_fingerprint(source.images, source.labels))
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir(cache) / f"{NAME}-{split}-{key}.npz"
    data = None
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            images = torch.from_numpy(data["images"])
            n = images.shape[0]
            masks = torch.from_numpy(np.unpackbits(data["masks"], count=n * canvas * canvas)
                                     .reshape(n, canvas, canvas).astype(bool))
            mean, std = tuple(data["mean"].tolist()), tuple(data["std"].tolist())
        except Exception:  # a corrupt cache file is regenerated, never trusted
            data = None
    if data is None:
        out = make_clutter(source.images, _split_seed(seed, split), canvas=canvas, sizes=sizes,
                           fragments=fragments, fragment_size=fragment_size, dim=dim)
        images = out["images"][:, None]
        masks = out["masks"]
        from .dataset import channel_stats

        mean, std = channel_stats(images)
        if use_cache:
            try:
                atomic_savez(path, images=images.numpy(), masks=np.packbits(masks.numpy().reshape(-1)),
                             labels=source.labels.numpy(), mean=np.array(mean), std=np.array(std))
            except OSError:  # a read-only home still gets the data, just not cached
                pass
    # the layout is rebuilt from the seed (not cached: the cache format stays as it was), and the landmarks
    # of each class come from the split's own mean masks
    layout = clutter_layout(images.shape[0], _split_seed(seed, split), canvas=canvas, sizes=sizes)
    frame = frame_landmarks(source.images, source.labels, len(source.classes))
    landmarks, valid = canvas_landmarks(frame, source.labels, layout, masks, object_side=source.images.shape[-1])
    return ImageDataset(name=NAME, images=images, labels=source.labels.clone(), classes=list(source.classes),
                        masks=masks, mean=mean, std=std, layout=layout, landmarks=landmarks,
                        landmark_valid=valid, landmark_names=list(LANDMARK_DIRECTIONS))
