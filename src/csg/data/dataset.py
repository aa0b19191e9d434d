"""The in-memory image dataset every loader returns, and its batch iterator.

Images stay uint8 (N, C, H, W) in memory, 4x smaller than float32; a batch is
gathered from them by index, moved to the device as uint8 and only there
converted to float32 in [0, 1]. Normalisation by ``mean``/``std`` happens
inside the model, not here.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..core.errors import CsgError

#: Environment variable naming the data folder when ``data_dir`` is not given.
DATA_DIR_ENV = "CSG_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike | None, default: str | os.PathLike) -> Path:
    """The folder to look in: ``data_dir`` if given, else ``$CSG_DATA_DIR`` if set, else ``default``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(default)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1].

    ``mean_c = sum(x) / n``, ``std_c = sqrt(sum(x^2) / n - mean_c^2)`` (population
    std), with x = pixel / 255 over every image and position of channel c.
    Sums are taken in float64 over chunks so a large set needs no float copy.
    """
    if images.numel() == 0:
        raise CsgError("cannot compute mean/std of an empty image set; the dataset has no images")
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64).transpose(0, 1).reshape(c, -1)
        s1 += x.sum(1)
        s2 += x.pow(2).sum(1)
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s1 / n / 255.0
    var = (s2 / n / 255.0**2 - mean.pow(2)).clamp_min(0.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in var.sqrt())


def check_labels(labels: torch.Tensor, num_classes: int, source: str) -> None:
    """Raise a CsgError naming ``source`` and the first label outside ``0 .. num_classes - 1``."""
    if labels.numel() == 0:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise CsgError(f"{source}: label {int(labels[first])} at index {first} is outside 0..{num_classes - 1} "
                       f"({int(bad.sum())} bad labels); the file is corrupt or not from this dataset")


def stratified_indices(labels: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of a seeded subset of ``n`` items in which each class keeps its share.

    Class c gets ``floor(n * N_c / N)`` items; the items left over go to the
    classes with the largest remainders ``n * N_c / N - floor(.)`` (ties: lower
    class index first), so quotas sum to n exactly. Within a class the items are
    the first ones of one seeded permutation. Returned sorted (original order).
    """
    total = labels.numel()
    counts = torch.bincount(labels, minlength=num_classes).to(torch.int64)
    exact = counts.to(torch.float64) * n / total
    quota = exact.floor().to(torch.int64)
    left = n - int(quota.sum())
    if left > 0:
        remainder = exact - quota.to(torch.float64)
        # stable sort on -remainder: ties keep class order
        order = torch.sort(-remainder, stable=True).indices
        quota[order[:left]] += 1
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(total, generator=generator)
    permuted_labels = labels[perm]
    # rank of each permuted item within its class: stable sort by label, then position - class start
    by_class = torch.sort(permuted_labels, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(total, dtype=torch.int64)
    rank[by_class] = torch.arange(total) - starts[permuted_labels[by_class]]
    keep = rank < quota[permuted_labels]
    return torch.sort(perm[keep]).values


def _describe(x) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__


@dataclass(eq=False)
class ImageDataset:
    """Images held in memory as uint8, with labels, class names and optional masks.

    Attributes:
        name: the dataset's registry name (e.g. ``"fashion-mnist"``).
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,), values in ``0 .. num_classes - 1``.
        classes: class names; ``labels`` index into it.
        masks: bool tensor (N, H, W) of object pixels, or None.
        mean, std: per-channel statistics of the *training* set's [0, 1] pixel
            values (fixed per dataset; given to the model for normalisation).
            When omitted they are computed from ``images``.
        layout: optional int64 (N, 3) placement of the object on the image
            (side, top row, left column), for sets that paste objects.
        landmarks: optional float32 (N, P, 2) part positions (row, column; pixel
            centres at integers), with ``landmark_valid`` (N, P) bool and
            ``landmark_names`` (P names).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    masks: torch.Tensor | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: torch.Tensor | None = None
    landmarks: torch.Tensor | None = None
    landmark_valid: torch.Tensor | None = None
    landmark_names: list[str] | None = None

    #: per-image tensors carried along by ``select`` and ``to``
    PER_IMAGE = ("masks", "layout", "landmarks", "landmark_valid")

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.images) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            got = _describe(self.images)
            raise CsgError(f"{self.name}: images must be a uint8 tensor (N, C, H, W), got {got}")
        if not torch.is_tensor(self.labels):
            self.labels = torch.as_tensor(self.labels)
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.to(torch.int64)
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise CsgError(f"{self.name}: {tuple(self.labels.shape)} labels for {self.images.shape[0]} images; "
                           "give one label per image")
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise CsgError(f"{self.name}: no class names; give one name per class")
        check_labels(self.labels, len(self.classes), self.name)
        if self.masks is not None:
            n, _, h, w = self.images.shape
            if not torch.is_tensor(self.masks) or tuple(self.masks.shape) != (n, h, w):
                raise CsgError(f"{self.name}: masks must be a bool tensor ({n}, {h}, {w}), got {_describe(self.masks)}")
            if self.masks.dtype != torch.bool:
                self.masks = self.masks.bool()
        n = self.images.shape[0]
        if self.layout is not None and (not torch.is_tensor(self.layout) or tuple(self.layout.shape) != (n, 3)):
            raise CsgError(f"{self.name}: layout must be a tensor ({n}, 3), got {_describe(self.layout)}")
        if self.landmarks is not None:
            lm, valid = self.landmarks, self.landmark_valid
            if not torch.is_tensor(lm) or lm.dim() != 3 or lm.shape[0] != n or lm.shape[2] != 2:
                raise CsgError(f"{self.name}: landmarks must be a tensor ({n}, P, 2), got {_describe(lm)}")
            if valid is None:
                valid = torch.isfinite(lm).all(-1)
            if not torch.is_tensor(valid) or tuple(valid.shape) != tuple(lm.shape[:2]):
                raise CsgError(f"{self.name}: landmark_valid must be a tensor {tuple(lm.shape[:2])}, "
                               f"got {_describe(valid)}")
            self.landmark_valid = valid.bool()
            names = self.landmark_names or [f"part{p}" for p in range(lm.shape[1])]
            if len(names) != lm.shape[1]:
                raise CsgError(f"{self.name}: {len(names)} landmark names for {lm.shape[1]} landmarks")
            self.landmark_names = [str(x) for x in names]
        if self.mean is None or self.std is None:
            mean, std = channel_stats(self.images)
            self.mean = tuple(self.mean) if self.mean is not None else mean
            self.std = tuple(self.std) if self.std is not None else std
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise CsgError(f"{self.name}: mean/std have {len(self.mean)}/{len(self.std)} values for "
                           f"{self.in_channels} channels; give one per channel")

    # ---- shape -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, channels={self.in_channels}, "
                f"size={self.image_size}, classes={self.num_classes}, masks={self.masks is not None})")

    def class_counts(self) -> torch.Tensor:
        """Number of images per class (length ``num_classes``)."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    # ---- derived sets ------------------------------------------------------
    def select(self, indices: torch.Tensor | Sequence[int]) -> "ImageDataset":
        """The images at ``indices`` (same classes, mean and std)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        extra = {k: None if getattr(self, k) is None else getattr(self, k)[idx.to(getattr(self, k).device)]
                 for k in self.PER_IMAGE}
        return replace(self, images=self.images[idx.to(self.images.device)],
                       labels=self.labels[idx.to(self.labels.device)], **extra)

    def subset(self, n: int, seed: int = 0) -> "ImageDataset":
        """A seeded subset of ``n`` images, stratified so each class keeps its share.

        Quotas are ``n * N_c / N`` rounded by largest remainder (they sum to n);
        the same ``(n, seed)`` always gives the same images, kept in their
        original order. ``n >= len(self)`` returns ``self``.
        """
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise CsgError(f"{self.name}: subset size must be a positive number of images, got {n}")
        n = int(n)
        if n >= len(self):
            return self
        return self.select(stratified_indices(self.labels.cpu(), n, self.num_classes, seed))

    def to(self, device: str | torch.device) -> "ImageDataset":
        """A copy held on ``device`` (still uint8): batches are then gathered there, with no transfer."""
        device = torch.device(device)
        extra = {k: None if getattr(self, k) is None else getattr(self, k).to(device) for k in self.PER_IMAGE}
        return replace(self, images=self.images.to(device), labels=self.labels.to(device), **extra)

    # ---- batches -----------------------------------------------------------
    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu", augment=None, drop_last: bool = False,
                start_batch: int = 0, rank: int = 0, world_size: int = 1) -> "Batches":
        """Iterate over ``(images float32 in [0, 1] on device, labels int64 on device)``.

        The order is drawn now, at the call: with ``shuffle`` one
        ``torch.randperm(N, generator=generator)`` per call (= per epoch),
        otherwise 0..N-1. With ``world_size > 1`` the order is padded by
        wrapping to a multiple of ``world_size`` and this ``rank`` takes every
        ``world_size``-th index from ``rank`` (as ``DistributedSampler``), so each
        rank sees ``ceil(N / world_size)`` images. ``augment`` (an ``Augment``)
        draws its random numbers from the same generator, batch after batch.
        ``start_batch=k`` skips the first k batches of this order and advances
        the generator past their augmentation draws, so batches k, k+1, ... are
        exactly those of the uninterrupted epoch (resume mid-epoch).
        """
        return Batches(self, batch_size, shuffle=shuffle, generator=generator, device=device, augment=augment,
                       drop_last=drop_last, start_batch=start_batch, rank=rank, world_size=world_size)


def _as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CsgError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from exc


class Batches:
    """The batches of one epoch (see ``ImageDataset.batches``); ``len()`` is the number still to come."""

    def __init__(self, dataset: ImageDataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                 device, augment, drop_last: bool, start_batch: int, rank: int, world_size: int):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise CsgError(f"batch size must be a positive integer, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise CsgError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
        if start_batch < 0:
            raise CsgError(f"start_batch must be >= 0, got {start_batch}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.device = _as_device(device)
        self.augment = augment if augment is not None and getattr(augment, "active", True) else None
        self.generator = generator
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if world_size > 1:
            per_rank = math.ceil(n / world_size)
            pad = per_rank * world_size - n
            if pad:
                order = torch.cat([order, order.repeat(math.ceil(pad / max(n, 1)))[:pad]])
            order = order[rank::world_size]
        self.order = order
        self.rank, self.world_size = int(rank), int(world_size)
        m = order.numel()
        self.num_batches = m // self.batch_size if drop_last else math.ceil(m / self.batch_size)
        self.start_batch = min(int(start_batch), self.num_batches)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def _size(self, b: int) -> int:
        return min(self.batch_size, self.order.numel() - b * self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds, device, bs = self.dataset, self.device, self.batch_size
        if self.augment is not None:
            # keep the generator where the uninterrupted epoch would have it
            for b in range(self.start_batch):
                self._draw(b)
        pin = device.type == "cuda" and ds.images.device.type == "cpu"
        for b in range(self.start_batch, self.num_batches):
            idx = self.order[b * bs:(b + 1) * bs]
            x = ds.images.index_select(0, idx.to(ds.images.device))
            y = ds.labels.index_select(0, idx.to(ds.labels.device))
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            x = x.to(device, non_blocking=pin)
            y = y.to(device, non_blocking=pin)
            if self.augment is not None:
                # crops and flips only move pixels: applying them to uint8 is exact and cheaper
                x = self.augment.apply(x, self._draw(b))
            yield x.to(torch.float32).div_(255.0), y

    def _draw(self, b: int):
        """Augmentation numbers of batch ``b``, drawn for the global batch of all ranks, then sharded.

        The W ranks' batch b together are positions ``b*B*W .. (b+1)*B*W - 1`` of the
        padded order; the draw is made for all of them (as one process with batch
        ``B*W`` draws it) and this rank keeps rows ``rank, rank + W, ...``, so the
        crops and flips do not depend on the number of processes.
        """
        draw = self.augment.draw(self._size(b) * self.world_size, self.generator)
        if self.world_size == 1:
            return draw
        r, w = self.rank, self.world_size
        return type(draw)(*(None if t is None else t[r::w] for t in draw))
