"""CIFAR-10 and CIFAR-100 from the standard "python version" pickle folders.

``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta``; ``cifar-100-python/``: ``train``, ``test``, ``meta``. Each
batch is a pickled dict with ``b'data'`` (N x 3072 uint8: the red, green and
blue 32 x 32 planes, each row-major) and ``b'labels'`` (CIFAR-10) or
``b'fine_labels'`` (CIFAR-100).

The pickles are read with a restricted unpickler that resolves only the few
numpy globals needed to rebuild arrays, so a crafted file cannot run code.
"""
from __future__ import annotations

import importlib
import io
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CsgError
from .dataset import ImageDataset, check_labels, resolve_data_dir

DEFAULT_DIR = "/usr/share/datasets"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: statistics of the 50000 training images' [0, 1] pixel values, per channel (R, G, B)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_DOWNLOAD_HINT = ("download the \"python version\" archive from https://www.cs.toronto.edu/~kriz/cifar.html, "
                  "extract it and pass --data-dir (the extracted folder or its parent)")

# (module, name) pairs a CIFAR pickle may reference: numpy's array and dtype
# reconstruction (old and new module paths) and the codec Python 3 uses for bytes
# under protocol 2. Nothing here can run arbitrary code.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise CsgError(f"{self.source}: refusing to unpickle {module}.{name}; a CIFAR file holds only numpy "
                           "arrays, bytes and lists, so this file is not one (it may be malicious): do not use it")
        if module.startswith("numpy.core.") or module.startswith("numpy._core."):
            # numpy 2 renamed numpy.core to numpy._core; import whichever exists, without deprecation noise
            tail = module.split(".", 2)[2]
            for base in ("numpy._core", "numpy.core"):
                try:
                    return getattr(importlib.import_module(f"{base}.{tail}"), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def safe_unpickle(path: Path):
    """Unpickle ``path`` allowing only numpy array reconstruction; CsgError naming the file otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CsgError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), str(path)).load()
    except CsgError:
        raise
    except Exception as exc:  # truncated or garbage pickles raise many different types
        raise CsgError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc}); "
                       "download and extract the archive again") from exc


def _field(batch, key: bytes, path: Path):
    if not isinstance(batch, dict):
        raise CsgError(f"{path}: expected a pickled dict, got {type(batch).__name__}; this is not a CIFAR batch file")
    for k in (key, key.decode()):
        if k in batch:
            return batch[k]
    raise CsgError(f"{path}: no {key!r} entry (it has {sorted(map(str, batch))[:6]}); this is not a CIFAR batch file")


def _decode_names(names, path: Path) -> list[str]:
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except (TypeError, UnicodeDecodeError) as exc:
        raise CsgError(f"{path}: class names are unreadable ({exc}); extract the archive again") from exc


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path)
    data = np.asarray(_field(batch, b"data", path))
    labels = np.asarray(_field(batch, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CsgError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 N x 3072; "
                       "this is not a CIFAR batch file")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise CsgError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images; "
                       "extract the archive again")
    if not np.issubdtype(labels.dtype, np.integer):
        raise CsgError(f"{path}: labels are {labels.dtype}, expected integers; this is not a CIFAR batch file")
    labels = labels.astype(np.int64)
    check_labels(torch.from_numpy(labels), num_classes, str(path))
    # each row is the R, G, B planes in turn, each 32 x 32 row-major: a plain reshape gives (N, 3, 32, 32)
    return data.reshape(-1, 3, 32, 32), labels


_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", names_key=b"label_names", label_key=b"labels",
                    num_classes=10, title="CIFAR-10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     names_key=b"fine_label_names", label_key=b"fine_labels", num_classes=100, title="CIFAR-100"),
}


def find_cifar(name: str, data_dir: str | Path | None) -> Path:
    """The extracted CIFAR folder: ``data_dir`` itself or its ``cifar-10-batches-py`` / ``cifar-100-python``."""
    layout = _LAYOUT[name]
    root = resolve_data_dir(data_dir, DEFAULT_DIR)
    probe = layout["test"][0]
    for folder in (root, root / layout["folder"], root / name / layout["folder"]):
        if (folder / probe).is_file():
            return folder
    raise CsgError(f"{layout['title']} not found in {root} (missing {layout['folder']}/{probe}); {_DOWNLOAD_HINT}")


def _stat_key(folder: Path, files: list[str]) -> tuple:
    key = []
    for f in files:
        p = folder / f
        try:
            st = p.stat()
        except OSError:
            raise CsgError(f"{p} is missing; the {folder.name} folder is incomplete, {_DOWNLOAD_HINT}") from None
        key.append((f, st.st_mtime_ns, st.st_size))
    return tuple(key)


@lru_cache(maxsize=4)
def _load_split_cached(name: str, folder: str, split: str, key: tuple) -> tuple[np.ndarray, np.ndarray, list[str]]:
    del key  # part of the cache key only: a changed file is read again
    layout = _LAYOUT[name]
    folder_p = Path(folder)
    meta_path = folder_p / layout["meta"]
    if meta_path.is_file():
        classes = _decode_names(_field(safe_unpickle(meta_path), layout["names_key"], meta_path), meta_path)
        if len(classes) != layout["num_classes"]:
            raise CsgError(f"{meta_path}: {len(classes)} class names, expected {layout['num_classes']}; "
                           "extract the archive again")
    elif name == "cifar10":
        classes = list(CIFAR10_CLASSES)
    else:
        raise CsgError(f"{meta_path} is missing (it names the 100 classes); extract the archive again")
    parts = [_read_batch(folder_p / f, layout["label_key"], layout["num_classes"]) for f in layout[split]]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    images = np.ascontiguousarray(images)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels, classes


def _load(name: str, split: str, data_dir, mean, std) -> ImageDataset:
    if split not in ("train", "test"):
        raise CsgError(f"{_LAYOUT[name]['title']} has splits train and test, not {split!r}")
    folder = find_cifar(name, data_dir)
    layout = _LAYOUT[name]
    key = _stat_key(folder, layout[split])
    images, labels, classes = _load_split_cached(name, str(folder.resolve()), split, key)
    return ImageDataset(name=name, images=torch.from_numpy(images.copy()), labels=torch.from_numpy(labels.copy()),
                        classes=list(classes), masks=None, mean=mean, std=std)


def load_cifar10(split: str = "train", data_dir: str | Path | None = None, seed: int = 0) -> ImageDataset:
    """CIFAR-10 ``split`` (train: 50000, test: 10000 images of 3 x 32 x 32, 10 classes).

    ``data_dir`` (else ``$CSG_DATA_DIR``, else ``/usr/share/datasets``) is the
    extracted ``cifar-10-batches-py`` folder or its parent. ``seed`` is unused.
    """
    del seed
    return _load("cifar10", split, data_dir, CIFAR10_MEAN, CIFAR10_STD)


def load_cifar100(split: str = "train", data_dir: str | Path | None = None, seed: int = 0) -> ImageDataset:
    """CIFAR-100 ``split`` with the 100 fine labels (train: 50000, test: 10000 images of 3 x 32 x 32).

    ``data_dir`` (else ``$CSG_DATA_DIR``, else ``/usr/share/datasets``) is the
    extracted ``cifar-100-python`` folder or its parent. ``seed`` is unused.
    """
    del seed
    return _load("cifar100", split, data_dir, CIFAR100_MEAN, CIFAR100_STD)
