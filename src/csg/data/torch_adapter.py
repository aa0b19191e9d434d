"""A user's torch data as csg's in-memory :class:`ImageDataset`.

    from csg.data.torch_adapter import as_image_dataset
    train = as_image_dataset(my_dataset, num_classes=10)   # a map-style Dataset of (image, label)
    test = as_image_dataset(my_loader, num_classes=10)     # or a DataLoader of (images, labels) batches

A csg dataset (``ImageDataset``, or a streaming set with a ``batches`` method)
is returned unchanged, so the built-in sets keep their fast path. Any other
object is read once, in index order (a DataLoader: batch by batch), into
uint8 tensors. Images are tensors or numpy arrays of shape (C, H, W) or (H, W):
uint8 as they are, floats in [0, 1] scaled by 255 and rounded (normalisation
happens inside the model, from the set's mean and std). Labels are integers
in ``0 .. num_classes - 1``; masks (``with_masks``) have the image's (H, W).
Every bad item is one :class:`CsgError` naming its index (or batch and position).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.errors import CsgError
from .dataset import ImageDataset

#: ``config.json``'s ``data_source`` of a run trained on data passed from Python (not loaded by name)
PYTHON_SOURCE = "python"


def is_csg_dataset(obj: Any) -> bool:
    """True for csg's own sets (in memory or streamed), which every entry point takes as they are."""
    return isinstance(obj, ImageDataset) or (hasattr(obj, "batches") and hasattr(obj, "num_classes")
                                             and hasattr(obj, "classes"))


def _as_tensor(x: Any, what: str, where: str) -> torch.Tensor:
    if torch.is_tensor(x):
        t = x.detach().cpu()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise CsgError(f"{where}: the {what} is a numpy array of dtype {x.dtype}, not numbers; give a numeric "
                           "tensor or array")
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise CsgError(f"{where}: the {what} is a {type(x).__name__}, not a tensor or numpy array; convert it "
                       "in the dataset (e.g. torch.as_tensor or a ToTensor transform)")
    if t.is_complex():
        raise CsgError(f"{where}: the {what} has dtype {t.dtype}; give real numbers")
    return t


def _image(x: Any, where: str) -> torch.Tensor:
    """One image as uint8 (C, H, W)."""
    t = _as_tensor(x, "image", where)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise CsgError(f"{where}: the image has shape {tuple(t.shape)}; give (C, H, W) or (H, W)")
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool:
        return t.to(torch.uint8) * 255
    if not t.is_floating_point():
        raise CsgError(f"{where}: the image has dtype {t.dtype}; give uint8 (0..255) or floats in [0, 1]")
    if not bool(torch.isfinite(t).all()):
        raise CsgError(f"{where}: the image has non-finite pixels (nan or inf); fix or drop this item")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise CsgError(f"{where}: float pixels span [{lo:.3g}, {hi:.3g}], outside [0, 1]; give unnormalised "
                       "images (csg normalises inside the model), e.g. drop Normalize from the transforms")
    return t.to(torch.float32).mul(255.0).round_().to(torch.uint8)


def _label(y: Any, where: str, num_classes: int | None) -> int:
    if isinstance(y, (bool, np.bool_)):
        raise CsgError(f"{where}: the label is a bool ({y}); give an integer class index")
    if isinstance(y, (int, np.integer)):
        value = int(y)
    elif (torch.is_tensor(y) and y.numel() == 1) or (isinstance(y, np.ndarray) and y.size == 1):
        t = _as_tensor(y, "label", where).reshape(())
        if t.is_floating_point() or t.dtype == torch.bool:
            raise CsgError(f"{where}: the label has dtype {t.dtype}; give an integer class index")
        value = int(t)
    else:
        raise CsgError(f"{where}: the label is {type(y).__name__} {y!r:.40}, not an integer class index")
    if value < 0 or (num_classes is not None and value >= num_classes):
        span = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        raise CsgError(f"{where}: label {value} is outside {span}; give class indices in {span}"
                       + ("" if num_classes is None else " (or pass the right num_classes)"))
    return value


def _mask(m: Any, where: str, size: tuple[int, int]) -> torch.Tensor:
    t = _as_tensor(m, "mask", where)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != size:
        raise CsgError(f"{where}: the mask has shape {tuple(t.shape)} but the image is {size}; give one (H, W) "
                       "mask per image")
    return t != 0


def _unpack(item: Any, where: str, with_masks: bool) -> tuple:
    want = 3 if with_masks else 2
    if not isinstance(item, (tuple, list)) or len(item) < want:
        shape = "(image, label, mask)" if with_masks else "(image, label)"
        raise CsgError(f"{where}: the item is a {type(item).__name__}"
                       f"{'' if not isinstance(item, (tuple, list)) else f' of {len(item)}'}, not {shape}")
    return tuple(item[:want])


def _items(obj: Any, with_masks: bool):
    """(where, image, label, mask or None) of every item, in index order."""
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(obj, DataLoader):
        for b, batch in enumerate(obj):
            parts = _unpack(batch, f"batch {b}", with_masks)
            images = _as_tensor(parts[0], "image batch", f"batch {b}")
            labels = parts[1]
            if torch.is_tensor(labels) or isinstance(labels, np.ndarray):
                labels = list(_as_tensor(labels, "label batch", f"batch {b}").reshape(-1))
            elif not isinstance(labels, (list, tuple)):
                raise CsgError(f"batch {b}: the labels are a {type(labels).__name__}, not a tensor of class indices")
            masks = parts[2] if with_masks else None
            if len(labels) != images.shape[0] or (masks is not None and len(masks) != images.shape[0]):
                raise CsgError(f"batch {b}: {images.shape[0]} images but {len(labels)} labels"
                               + ("" if masks is None else f" and {len(masks)} masks") + "; give one per image")
            for p in range(images.shape[0]):
                yield f"batch {b}, position {p}", images[p], labels[p], None if masks is None else masks[p]
        return
    if isinstance(obj, IterableDataset) or not hasattr(obj, "__getitem__") or not hasattr(obj, "__len__"):
        raise CsgError(f"a {type(obj).__name__} is not a dataset csg can read; give a map-style "
                       "torch.utils.data.Dataset (with __len__ and __getitem__) or a DataLoader")
    for i in range(len(obj)):
        parts = _unpack(obj[i], f"item {i}", with_masks)
        yield f"item {i}", parts[0], parts[1], parts[2] if with_masks else None


def as_image_dataset(obj: Any, *, num_classes: int | None = None, classes: list[str] | None = None,
                     with_masks: bool = False, name: str | None = None, mean=None, std=None) -> ImageDataset:
    """csg's in-memory dataset of ``obj``: returned as it is when it is one, else read once into tensors.

    Args:
        obj: an :class:`ImageDataset` (or csg's streaming set), a map-style ``torch.utils.data.Dataset``
            whose items are ``(image, label)`` (``(image, label, mask)`` with ``with_masks``), or a
            ``DataLoader`` yielding such batches.
        num_classes: C; labels must lie in ``0 .. C - 1``. Default: ``len(classes)``, else the dataset's
            ``classes`` attribute, else the largest label + 1.
        classes: class names (default: the dataset's ``classes`` attribute, else ``"0" .. "C-1"``).
        with_masks: items carry an object mask (for localization); it must match the image's H x W.
        name: the dataset's name in messages and records (default: the object's class name).
        mean, std: per-channel [0, 1] statistics for the model's normalisation (default: from the images;
            pass the training set's for a test set).
    """
    if is_csg_dataset(obj):
        if with_masks and getattr(obj, "masks", None) is None:
            raise CsgError(f"{obj.name} has no object masks; localization needs a dataset with masks")
        return obj
    source = getattr(obj, "dataset", obj)  # a DataLoader's dataset carries the class names
    if classes is None and isinstance(getattr(source, "classes", None), (list, tuple)):
        classes = [str(c) for c in source.classes]
    if num_classes is None and classes is not None:
        num_classes = len(classes)
    name = name or type(source).__name__
    # reading must not move the seeded global generator (a DataLoader draws its base seed from it, random
    # transforms draw from it): the model built after it is the one the same seed builds from csg's own sets
    with torch.random.fork_rng(devices=[]):
        return _read(obj, num_classes=num_classes, classes=classes, with_masks=with_masks, name=name, mean=mean,
                     std=std)


def _read(obj, *, num_classes, classes, with_masks, name, mean, std) -> ImageDataset:
    images, labels, masks = [], [], []
    shape = None
    for where, x, y, m in _items(obj, with_masks):
        where = f"{name}: {where}"
        img = _image(x, where)
        if shape is None:
            shape = tuple(img.shape)
        elif tuple(img.shape) != shape:
            raise CsgError(f"{where}: the image has shape {tuple(img.shape)} but the first one has {shape}; give "
                           "images of one size (e.g. a Resize transform)")
        labels.append(_label(y, where, num_classes))
        images.append(img)
        if with_masks:
            masks.append(_mask(m, where, shape[1:]))
    if not images:
        raise CsgError(f"{name} is empty; give a dataset with at least one image")
    label_t = torch.tensor(labels, dtype=torch.int64)
    if num_classes is None:
        num_classes = int(label_t.max()) + 1
    if classes is None:
        classes = [str(c) for c in range(num_classes)]
    elif len(classes) != num_classes:
        raise CsgError(f"{name}: {len(classes)} class names for {num_classes} classes; give one name per class")
    return ImageDataset(name=name, images=torch.stack(images), labels=label_t, classes=list(classes),
                        masks=torch.stack(masks) if with_masks else None, mean=mean, std=std)


__all__ = ["as_image_dataset", "is_csg_dataset", "PYTHON_SOURCE"]
