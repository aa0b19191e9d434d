"""Datasets held in memory as uint8 tensors, a registry by name, and batched augmentation.

    from csg.data import load_dataset
    train = load_dataset("fashion-mnist", "train", subset=6000, seed=0)
    for images, labels in train.batches(128, shuffle=True, generator=g, augment=Augment(2, True)):
        ...

Each loader is imported only when its dataset is asked for, so a dataset whose
module (or optional dependency) is missing does not break the others.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from ..core.errors import CsgError
from .augment import Augment, AugmentDraw
from .dataset import DATA_DIR_ENV, Batches, ImageDataset, channel_stats, resolve_data_dir
from .torch_adapter import PYTHON_SOURCE, as_image_dataset, is_csg_dataset

__all__ = ["load_dataset", "dataset_options", "available_datasets", "ImageDataset", "Augment", "AugmentDraw", "Batches",
           "resolve_data_dir", "channel_stats", "DATA_DIR_ENV", "as_image_dataset", "is_csg_dataset", "PYTHON_SOURCE"]

# name -> ("module:function", one-line description). Every loader is called as
# loader(split, data_dir, seed, **options) and returns an ImageDataset.
_REGISTRY: dict[str, tuple[str, str]] = {
    "fashion-mnist": ("csg.data.fashion_mnist:load_fashion_mnist",
                      "Fashion-MNIST, 1 x 28 x 28, 10 classes (IDX files)"),
    "cifar10": ("csg.data.cifar:load_cifar10", "CIFAR-10, 3 x 32 x 32, 10 classes (python pickle folder)"),
    "cifar100": ("csg.data.cifar:load_cifar100", "CIFAR-100, 3 x 32 x 32, 100 fine classes (python pickle folder)"),
    "image-folder": ("csg.data.image_folder:load_image_folder",
                     "your images in DIR/train/<class>/ and DIR/test/<class>/"),
    "image-folder-stream": ("csg.data.streaming:load_streaming_image_folder",
                            "an image folder too large for memory, decoded batch by batch in worker processes"),
    "fashion-mnist-clutter": ("csg.data.clutter:load_clutter",
                              "Fashion-MNIST objects on cluttered canvases, with object masks"),
    "voc-animals": ("csg.data.voc:load_voc_objects", "PASCAL VOC animal objects, square crops with masks"),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
            "imagefolder": "image-folder", "voc": "voc-animals"}


def available_datasets() -> list[str]:
    """The dataset names ``load_dataset`` accepts."""
    return list(_REGISTRY)


def describe_datasets() -> dict[str, str]:
    """Name -> one-line description, for ``--help`` texts."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise CsgError(f"unknown dataset {name!r}; choose one of {', '.join(_REGISTRY)}")
    return key


def _loader(name: str):
    target, _ = _REGISTRY[name]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise CsgError(f"dataset {name} is not available in this installation ({module_name} is missing); "
                           f"choose one of {', '.join(n for n in _REGISTRY if n != name)}") from exc
        raise CsgError(f"dataset {name} needs the Python package {exc.name!r}; install it with "
                       f"`pip install {exc.name}`") from exc
    return getattr(module, func_name)


def dataset_options(name: str, *, image_size: int | None = None, workers: int | None = None) -> dict:
    """The loader options of a run's ``--image-size`` / ``--workers`` that ``name`` takes.

    ``image_size`` is passed whenever it is set (a dataset without the option
    then refuses it); ``workers`` only to a loader that decodes in worker
    processes (``image-folder-stream``), since in-memory sets have nothing to decode.
    """
    options: dict = {}
    if image_size is not None:
        options["image_size"] = int(image_size)
    if workers is not None and "workers" in inspect.signature(_loader(_canonical(name))).parameters:
        options["workers"] = int(workers)
    return options


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, subset: int | None = None,
                 seed: int = 0, **options) -> ImageDataset:
    """Load dataset ``name`` (see ``available_datasets()``), split ``"train"`` or ``"test"``.

    ``data_dir`` overrides ``$CSG_DATA_DIR``, which overrides each dataset's
    default folder. ``subset=n`` keeps a stratified, seeded subset of n images
    (each class keeps its share; ``seed`` picks which). ``options`` go to the
    loader when it takes them (e.g. ``image_size`` for ``image-folder``).
    """
    key = _canonical(name)
    loader = _loader(key)
    if options:
        params = inspect.signature(loader).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [k for k in options if k not in params and not takes_any]
        if unknown:
            raise CsgError(f"dataset {key} takes no option {', '.join(unknown)}")
    dataset = loader(split, None if data_dir is None else str(data_dir), seed, **options)
    if not isinstance(dataset, ImageDataset) and type(dataset).__name__ != "StreamingImageFolder":
        raise CsgError(f"the {key} loader returned {type(dataset).__name__}, not an ImageDataset; "
                       "this is a bug in its module")
    if subset is not None:
        dataset = dataset.subset(subset, seed=seed)
    return dataset
