"""Images in class folders: ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/...`` (or ``val``).

Every image is decoded with Pillow once, converted to RGB (or to L when every
training image is grayscale), resized to a common square size and held in
memory as uint8. Classes are the training split's folder names, sorted.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CsgError
from .dataset import ImageDataset, channel_stats, resolve_data_dir

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
DEFAULT_MIXED_SIZE = 32
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _split_folder(root: Path, split: str) -> Path:
    if split == "train":
        names = ("train",)
    elif split in ("test", "val"):
        names = (split, "val" if split == "test" else "test")
    else:
        raise CsgError(f"image-folder has splits train and test (or val), not {split!r}")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise CsgError(f"image-folder: no {' or '.join(names)} folder in {root}; lay the images out as "
                   f"{root}/{names[0]}/<class>/<image>.png and pass that parent folder as --data-dir")


def _list_images(folder: Path, classes: list[str] | None) -> tuple[list[str], list[Path], list[int]]:
    """(classes, files, labels) of a split folder; ``classes`` given: those of the training split."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        if not found:
            raise CsgError(f"image-folder: {folder} has no class folders; put each class's images in "
                           f"{folder}/<class>/")
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise CsgError(f"image-folder: {folder} has class folders {unknown} that the train split lacks; "
                           "use the same class folder names in both splits")
    index = {c: i for i, c in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        members = sorted(p for p in (folder / name).rglob("*")
                         if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith("."))
        if not members and folder.name == "train":
            raise CsgError(f"image-folder: class folder {folder / name} holds no images "
                           f"({', '.join(sorted(EXTENSIONS))}); add images or remove the folder")
        files.extend(members)
        labels.extend([index[name]] * len(members))
    if not files:
        raise CsgError(f"image-folder: no images under {folder}; expected {folder}/<class>/<image>.png")
    return classes, files, labels


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode != "P" else im.convert("RGBA" if "transparency" in im.info else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CsgError(f"image-folder: cannot decode {path} ({exc}); remove or replace the file") from exc


def _decode(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    im = _open(path)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F") and mode == "L":
        # 16-bit / float grayscale: scale to 0..255 rather than clip
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode in ("RGBA", "LA"):
        # composite on black: zero is also what the crop padding uses
        background = Image.new(im.mode, im.size, 0)
        im = Image.alpha_composite(background.convert("RGBA"), im.convert("RGBA"))
    im = im.convert(mode)
    if size is not None and im.size != size:
        im = im.resize(size, Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _probe(path: Path) -> tuple[tuple[int, int], bool]:
    """(size (W, H), grayscale?) from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            gray = im.mode in _GRAY_MODES or (im.mode == "P" and _palette_is_gray(im))
            return im.size, gray
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CsgError(f"image-folder: cannot decode {path} ({exc}); remove or replace the file") from exc


def _palette_is_gray(im) -> bool:
    palette = im.getpalette() or []
    rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(rgb.size) and bool((rgb == rgb[:, :1]).all())


def _map(fn, items: list, workers: int | None = None) -> list:
    # Pillow releases the GIL while decoding: threads give a real speed-up
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(items) < 64:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=32))


def _signature(files: list[Path]) -> tuple:
    out = []
    for p in files:
        st = p.stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


@lru_cache(maxsize=4)
def _load_train_cached(root: str, image_size: int | None, signature: tuple):
    """Decoded training split: (images uint8 N x C x H x W, labels, classes, mode, size, mean, std)."""
    del signature  # cache key only
    classes, files, labels = _list_images(_split_folder(Path(root), "train"), None)
    probes = _map(_probe, files)
    mode = "L" if all(g for _, g in probes) else "RGB"
    size = _common_size([s for s, _ in probes], image_size)
    images = _stack(files, mode, size)
    mean, std = channel_stats(images)
    return images, torch.tensor(labels, dtype=torch.int64), classes, mode, size, mean, std


def _common_size(sizes: list[tuple[int, int]], image_size: int | None) -> tuple[int, int]:
    if image_size is not None:
        if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
            raise CsgError(f"image-folder: image size must be a positive number of pixels, got {image_size}")
        return int(image_size), int(image_size)
    counts = Counter(sizes)
    if len(counts) == 1:
        return sizes[0]
    return DEFAULT_MIXED_SIZE, DEFAULT_MIXED_SIZE


def _stack(files: list[Path], mode: str, size: tuple[int, int]) -> torch.Tensor:
    arrays = _map(lambda p: _decode(p, mode, size), files)
    return torch.from_numpy(np.stack(arrays))


@lru_cache(maxsize=4)
def _load_eval_cached(signature: tuple, mode: str, size: tuple[int, int]) -> torch.Tensor:
    return _stack([Path(s[0]) for s in signature], mode, size)


def load_image_folder(split: str = "train", data_dir: str | Path | None = None, seed: int = 0,
                      image_size: int | None = None) -> ImageDataset:
    """Images from ``data_dir/{train,test|val}/<class>/``, decoded into memory as uint8.

    - classes: the train split's folder names, sorted; the test split uses them.
    - channels: 1 (L) when every training image is grayscale, else 3 (RGB);
      transparent images are composited on black.
    - size: ``image_size`` x ``image_size`` when given; else the training
      images' size when they all share one, else 32 x 32 (bilinear resize).
    - mean/std: per channel over the training images in [0, 1].

    ``data_dir`` defaults to ``$CSG_DATA_DIR``. ``seed`` is unused.
    """
    del seed
    if data_dir is None and not os.environ.get("CSG_DATA_DIR", "").strip():
        raise CsgError("image-folder needs a folder: pass --data-dir DIR (with DIR/train/<class>/ and "
                       "DIR/test/<class>/) or set CSG_DATA_DIR")
    root = resolve_data_dir(data_dir, ".")
    if not root.is_dir():
        raise CsgError(f"image-folder: {root} is not a folder; pass --data-dir DIR with DIR/train/<class>/")
    train_folder = _split_folder(root, "train")
    _, train_files, _ = _list_images(train_folder, None)
    images, labels, classes, mode, size, mean, std = _load_train_cached(
        str(root.resolve()), image_size, _signature(train_files))
    if split == "train":
        images, labels = images.clone(), labels.clone()
    else:
        test_folder = _split_folder(root, split)
        _, files, test_labels = _list_images(test_folder, classes)
        images = _load_eval_cached(_signature(files), mode, size).clone()
        labels = torch.tensor(test_labels, dtype=torch.int64)
    return ImageDataset(name="image-folder", images=images, labels=labels, classes=list(classes),
                        masks=None, mean=mean, std=std)
