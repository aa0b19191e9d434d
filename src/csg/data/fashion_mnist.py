"""Fashion-MNIST from its IDX files (gzipped or not).

IDX format (big-endian): a 4-byte magic number ``0x00 0x00 TYPE NDIM`` (TYPE
0x08 = unsigned byte), then NDIM 4-byte dimensions, then the raw values.
Images are ``0x00000803`` (N x 28 x 28), labels ``0x00000801`` (N).
"""
from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CsgError
from .dataset import ImageDataset, resolve_data_dir

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: statistics of the 60000 training images' [0, 1] pixel values
MEAN = (0.2860,)
STD = (0.3530,)
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_PREFIX = {"train": "train", "test": "t10k"}
# where the files may sit under the folder given: itself, a fashion-mnist/ folder, torchvision's layout
_SUBFOLDERS = (".", "fashion-mnist", "FashionMNIST/raw")
_INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CsgError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except EOFError as exc:
            raise CsgError(f"{path}: the gzip stream is truncated ({exc}); download the file again") from exc
        except (OSError, zlib.error) as exc:
            raise CsgError(f"{path}: not a valid gzip file ({exc}); download the file again") from exc
    return raw


def parse_idx(data: bytes, expected_magic: int, source: str) -> np.ndarray:
    """The uint8 array of an IDX file's bytes; CsgError naming ``source`` on any inconsistency."""
    if len(data) < 4:
        raise CsgError(f"{source}: file is truncated ({len(data)} bytes, shorter than the IDX header)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise CsgError(f"{source}: wrong magic number 0x{magic:08X}, expected 0x{expected_magic:08X} "
                       f"(an IDX {'image' if expected_magic == IMAGES_MAGIC else 'label'} file); "
                       "the file is corrupt or not an IDX file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CsgError(f"{source}: file is truncated ({len(data)} bytes, the header needs {header})")
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise CsgError(f"{source}: file is {what} ({len(data)} bytes, dimensions {'x'.join(map(str, dims))} "
                       f"need {expected}); download the file again")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    array.flags.writeable = False
    return array


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int, expected_magic: int) -> np.ndarray:
    # keyed by path, mtime and size: a rewritten file is decoded again
    p = Path(path)
    return parse_idx(_read_bytes(p), expected_magic, str(p))


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file (``.gz`` decompressed), cached per process; returns a read-only uint8 array."""
    path = Path(path)
    return _read_idx_cached(*_stat_key(path), expected_magic)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def find_fashion_mnist(data_dir: str | Path | None, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` under ``data_dir`` / ``$CSG_DATA_DIR`` / the default folder."""
    if split not in _PREFIX:
        raise CsgError(f"Fashion-MNIST has splits train and test, not {split!r}")
    root = resolve_data_dir(data_dir, DEFAULT_DIR)
    prefix = _PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for sub in _SUBFOLDERS:
        folder = root / sub
        found = [_find_file(folder, s) for s in stems]
        if any(found):  # this is the folder; report what it lacks
            for stem, path in zip(stems, found):
                if path is None:
                    raise CsgError(f"Fashion-MNIST not found in {folder} (missing {stem}[.gz]); {_INSTALL_HINT}")
            return found[0], found[1]
    nofolder = "" if root.is_dir() else ", no such folder"
    raise CsgError(f"Fashion-MNIST not found in {root} (missing {stems[0]}[.gz]{nofolder}); {_INSTALL_HINT}")


def load_fashion_mnist(split: str = "train", data_dir: str | Path | None = None, seed: int = 0) -> ImageDataset:
    """Fashion-MNIST ``split`` ("train": 60000, "test": 10000 images of 1 x 28 x 28, 10 classes).

    Looked for in ``data_dir``, else ``$CSG_DATA_DIR``, else
    ``/usr/share/datasets/fashion-mnist`` (and in a ``fashion-mnist/`` or
    ``FashionMNIST/raw/`` folder beneath). ``seed`` is unused (no randomness).
    """
    del seed
    images_path, labels_path = find_fashion_mnist(data_dir, split)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise CsgError(f"{images_path}: expected 3 dimensions (N x H x W), got {images.ndim}")
    if labels.ndim != 1:
        raise CsgError(f"{labels_path}: expected 1 dimension (N), got {labels.ndim}")
    if labels.shape[0] != images.shape[0]:
        raise CsgError(f"{labels_path}: {labels.shape[0]} labels but {images_path.name} has {images.shape[0]} "
                       "images; the two files are from different sets, download them again")
    if labels.size and int(labels.max()) >= len(CLASSES):
        first = int(np.argmax(labels >= len(CLASSES)))
        raise CsgError(f"{labels_path}: label {int(labels[first])} at index {first} is outside 0..{len(CLASSES) - 1}; "
                       "the file is corrupt or not Fashion-MNIST")
    # copies: the cached arrays stay untouched whatever a caller does to the tensors
    return ImageDataset(name="fashion-mnist", images=torch.from_numpy(images[:, None].copy()),
                        labels=torch.from_numpy(labels.astype(np.int64)), classes=list(CLASSES),
                        masks=None, mean=MEAN, std=STD)
