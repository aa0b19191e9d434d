"""Image folders too large for memory: decoded batch by batch in DataLoader worker processes.

    train = load_streaming_image_folder("train", "/data/imagenet", image_size=224, workers=8)
    for images, labels in train.batches(256, shuffle=True, generator=g, augment=Augment(0, True),
                                        device="cuda", rank=rank, world_size=world_size):
        ...

The layout, class order, colour mode, resize and the augmentation are those of
the in-memory ``image-folder`` (``csg.data.image_folder``): each file is
decoded with Pillow by the same function, and a batch goes through the same
``Augment.apply`` after reaching the device. The epoch's order and the
augmentation numbers are drawn in the main process from the caller's
generator exactly as ``ImageDataset.batches`` draws them (one
``randperm(N)``, padded by wrapping to a multiple of the world size and
sharded ``perm[rank::world_size]`` as ``DistributedSampler`` does, then one
draw per global batch), so for the same folder and seed the streaming and the
in-memory path yield identical batches. Workers only decode.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..core.errors import CsgError
from .dataset import channel_stats, resolve_data_dir, stratified_indices

#: Images whose headers are read to decide colour mode and size before the whole list is probed.
_PROBE_SAMPLE = 4096
#: Images decoded to estimate the per-channel mean and std of a large training split.
_STATS_SAMPLE = 2048


def default_workers() -> int:
    """Decoding processes per rank: ``$CSG_DATA_WORKERS``, else min(8, cores per local rank - 1)."""
    env = os.environ.get("CSG_DATA_WORKERS", "").strip()
    if env:
        try:
            return max(0, int(env))
        except ValueError:
            raise CsgError(f"$CSG_DATA_WORKERS={env!r} is not a number of processes") from None
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // local - 1))


class _Decode(torch.utils.data.Dataset):
    """Map-style dataset over *batches*: item i is the uint8 stack of the files at ``index_batches[i]``."""

    def __init__(self, files: Sequence[str], labels: torch.Tensor, mode: str, size: tuple[int, int],
                 index_batches: list[torch.Tensor]):
        self.files, self.labels, self.mode, self.size = files, labels, mode, size
        self.index_batches = index_batches

    def __len__(self) -> int:
        return len(self.index_batches)

    def __getitem__(self, i: int):
        from .image_folder import _decode

        idx = self.index_batches[i]
        arrays = [_decode(Path(self.files[j]), self.mode, self.size) for j in idx.tolist()]
        return torch.from_numpy(np.stack(arrays)), self.labels[idx]


class StreamingImageFolder:
    """An image folder read from disk batch by batch; the ``ImageDataset`` interface minus ``images``.

    Attributes: ``name``, ``files`` (paths), ``labels`` (int64 N), ``classes``,
    ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``,
    ``masks`` (None), ``workers`` (decoding processes; 0 decodes in the caller).
    """

    masks = None

    def __init__(self, name: str, files: Sequence[str], labels: torch.Tensor, classes: Sequence[str], mode: str,
                 size: tuple[int, int], mean: Sequence[float], std: Sequence[float], workers: int | None = None):
        self.name = name
        self.files = list(files)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.classes = [str(c) for c in classes]
        self.mode = mode
        self.size = (int(size[0]), int(size[1]))
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.workers = default_workers() if workers is None else int(workers)

    # ---- the ImageDataset surface -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.size[1], self.size[0]

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"StreamingImageFolder(n={len(self)}, channels={self.in_channels}, size={self.image_size}, "
                f"classes={self.num_classes}, workers={self.workers})")

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def select(self, indices) -> "StreamingImageFolder":
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return StreamingImageFolder(self.name, [self.files[i] for i in idx.tolist()], self.labels[idx], self.classes,
                                    self.mode, self.size, self.mean, self.std, self.workers)

    def subset(self, n: int, seed: int = 0) -> "StreamingImageFolder":
        """A seeded stratified subset of ``n`` images (the same files ``ImageDataset.subset`` keeps)."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise CsgError(f"{self.name}: subset size must be a positive number of images, got {n}")
        if n >= len(self):
            return self
        return self.select(stratified_indices(self.labels, int(n), self.num_classes, seed))

    def load(self) -> "ImageDataset":  # noqa: F821 - for small sets and the analyses that need .images
        """Decode every image into an in-memory ``ImageDataset`` (same images, same order)."""
        from .dataset import ImageDataset

        images = torch.cat([x for x, _ in self._loader([torch.arange(len(self))], pin=False)]) if len(self) else \
            torch.zeros((0, self.in_channels, *self.image_size), dtype=torch.uint8)
        return ImageDataset(name=self.name, images=images, labels=self.labels.clone(), classes=self.classes,
                            mean=self.mean, std=self.std)

    # ---- batches --------------------------------------------------------------------------------------
    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu", augment=None, drop_last: bool = False,
                start_batch: int = 0, rank: int = 0, world_size: int = 1) -> "StreamingBatches":
        """``(images float32 in [0, 1] on device, labels on device)``, as ``ImageDataset.batches``.

        Same order, sharding, ``start_batch`` and augmentation draws as the
        in-memory path; decoding runs in ``workers`` processes (each worker
        builds whole batches), with pinned memory and non-blocking copies to a GPU.
        """
        return StreamingBatches(self, batch_size, shuffle=shuffle, generator=generator, device=device,
                                augment=augment, drop_last=drop_last, start_batch=start_batch, rank=rank,
                                world_size=world_size)

    def _loader(self, index_batches: list[torch.Tensor], pin: bool):
        ds = _Decode(self.files, self.labels, self.mode, self.size, index_batches)
        workers = min(self.workers, len(index_batches))
        return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                           pin_memory=pin, prefetch_factor=4 if workers else None,
                                           persistent_workers=False)


class StreamingBatches:
    """One epoch of a :class:`StreamingImageFolder`; ``len()`` is the number of batches still to come."""

    def __init__(self, dataset: StreamingImageFolder, batch_size: int, *, shuffle, generator, device, augment,
                 drop_last, start_batch, rank, world_size):
        # the in-memory iterator does the order, sharding, draws and argument checks; only decoding differs
        from .dataset import Batches

        self._plan = Batches(_OrderOnly(len(dataset)), batch_size, shuffle=shuffle, generator=generator,
                             device=device, augment=augment, drop_last=drop_last, start_batch=start_batch,
                             rank=rank, world_size=world_size)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self._plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self._plan
        if plan.augment is not None:
            for b in range(plan.start_batch):  # keep the generator where the uninterrupted epoch has it
                plan._draw(b)
        bs = plan.batch_size
        index_batches = [plan.order[b * bs:(b + 1) * bs] for b in range(plan.start_batch, plan.num_batches)]
        if not index_batches:
            return
        device = plan.device
        pin = device.type == "cuda"
        for b, (x, y) in enumerate(self.dataset._loader(index_batches, pin), start=plan.start_batch):
            x = x.to(device, non_blocking=pin)
            y = y.to(device, non_blocking=pin)
            if plan.augment is not None:
                x = plan.augment.apply(x, plan._draw(b))
            yield x.to(torch.float32).div_(255.0), y


class _OrderOnly:
    """What ``Batches.__init__`` reads from a dataset: its length."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


# ---- loading ------------------------------------------------------------------------------------------
def load_streaming_image_folder(split: str = "train", data_dir: str | Path | None = None, seed: int = 0,
                                image_size: int | None = None, workers: int | None = None) -> StreamingImageFolder:
    """``DIR/{train,test|val}/<class>/`` as a :class:`StreamingImageFolder` (nothing decoded up front).

    Classes, colour mode (L only when every training image is grayscale), size
    (``image_size`` square, else the training images' common size, else 32)
    follow ``image-folder``. Mode and size come from the headers of up to 4096
    training images (all of them where that sample is all grayscale or has
    mixed sizes); ``mean``/``std`` from up to 2048 training images (a seeded
    sample; exact for smaller sets). ``seed`` picks those samples.
    """
    from .image_folder import DEFAULT_MIXED_SIZE, _common_size, _list_images, _map, _probe, _split_folder, _stack

    if data_dir is None and not os.environ.get("CSG_DATA_DIR", "").strip():
        raise CsgError("image-folder-stream needs a folder: pass --data-dir DIR (with DIR/train/<class>/ and "
                       "DIR/test/<class>/) or set CSG_DATA_DIR")
    root = resolve_data_dir(data_dir, ".")
    if not root.is_dir():
        raise CsgError(f"image-folder-stream: {root} is not a folder; pass --data-dir DIR with DIR/train/<class>/")
    classes, train_files, train_labels = _list_images(_split_folder(root, "train"), None)
    rng = np.random.default_rng(seed)
    sample = train_files if len(train_files) <= _PROBE_SAMPLE else \
        [train_files[i] for i in rng.choice(len(train_files), _PROBE_SAMPLE, replace=False)]
    probes = _map(_probe, sample)
    gray = all(g for _, g in probes)
    sizes = [s for s, _ in probes]
    if len(sample) < len(train_files) and (gray or (image_size is None and len(set(sizes)) == 1)):
        probes = _map(_probe, train_files)  # a sample cannot prove "every image"
        gray = all(g for _, g in probes)
        sizes = [s for s, _ in probes]
    mode = "L" if gray else "RGB"
    size = _common_size(sizes, image_size) if sizes else (DEFAULT_MIXED_SIZE, DEFAULT_MIXED_SIZE)
    stats_files = train_files if len(train_files) <= _STATS_SAMPLE else \
        [train_files[i] for i in sorted(rng.choice(len(train_files), _STATS_SAMPLE, replace=False))]
    mean, std = channel_stats(_stack(stats_files, mode, size))
    if split == "train":
        files, labels = train_files, train_labels
    else:
        _, files, labels = _list_images(_split_folder(root, split), classes)
    return StreamingImageFolder("image-folder-stream", [str(f) for f in files],
                                torch.tensor(labels, dtype=torch.int64), classes, mode, size, mean, std, workers)
