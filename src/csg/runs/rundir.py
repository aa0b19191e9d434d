"""The run directory: the unit every command reads and writes (file names: :mod:`csg.core.run_files`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import CsgError
from ..core.io import atomic_save_npy, atomic_save_npz, atomic_write_json, read_json, read_jsonl
from ..core.lock import RunLock
from ..core.run_files import CHECKPOINT, CONFIG, FEATURES, FIGURES, GATE, LOG, METRICS, MI_MATRIX


class RunDir:
    """Typed access to a run directory; every write is atomic."""

    def __init__(self, path: str | Path, *, must_exist: bool = True):
        self.path = Path(path)
        if must_exist and not (self.path / CONFIG).is_file():
            raise CsgError(f"{self.path} is not a run directory (no {CONFIG}); train one with "
                           f"`csg train --out {self.path}`")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    # ---- reading -------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_json(self, name: str) -> dict[str, Any]:
        return read_json(self.path / name)

    @property
    def config(self) -> dict[str, Any]:
        return self.read_json(CONFIG)

    def metrics(self) -> dict[str, Any]:
        return self.read_json(METRICS) if self.has(METRICS) else {}

    def log(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / LOG) if self.has(LOG) else []

    def gate(self) -> np.ndarray | None:
        return np.load(self.path / GATE, allow_pickle=False) if self.has(GATE) else None

    def features(self) -> dict[str, np.ndarray]:
        """The captured test-split features: ``pooled`` (N x K), ``labels``, ``predictions``, ``logits``."""
        path = self.path / FEATURES
        if not path.is_file():
            raise CsgError(f"{path} is missing; run `csg evaluate {self.path}` first")
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except Exception as exc:  # zip or format errors: say which file and how to fix it
            raise CsgError(f"{path} is corrupt ({type(exc).__name__}); re-run `csg evaluate {self.path}`") from None

    def mi_matrix(self) -> np.ndarray:
        path = self.path / MI_MATRIX
        if not path.is_file():
            raise CsgError(f"{path} is missing; run `csg evaluate {self.path}` first")
        return np.load(path, allow_pickle=False)

    def load_model(self, device: str = "cpu"):
        """Rebuild the trained model from ``config.json`` and the checkpoint (eval mode)."""
        from .rebuild import load_model_from_run

        return load_model_from_run(self, device=device)

    def load_dataset(self, split: str = "test", **overrides):
        """The dataset this run was trained on (``split`` = ``"train"`` or ``"test"``)."""
        from ..data import PYTHON_SOURCE, dataset_options, load_dataset

        cfg = self.config
        if cfg.get("data_source") == PYTHON_SOURCE:
            raise CsgError(f"{self.path} was trained on your own data from Python (config.json: data_source = "
                           f"python), which csg cannot reload by name; pass it from Python, e.g. "
                           f"csg.evaluate_run(csg.RunDir({str(self.path)!r}), dataset=my_test_set)")
        kwargs = dict(data_dir=cfg.get("data_dir"))
        kwargs.update(dataset_options(cfg["data"], image_size=cfg.get("resize"), workers=cfg.get("workers")))
        kwargs.update(overrides)
        return load_dataset(cfg["data"], split=split, **kwargs)

    def dataset(self, given=None, split: str = "test", *, with_masks: bool = False, **overrides):
        """``given`` (a csg dataset, a torch ``Dataset`` of ``(image, label[, mask])`` or a ``DataLoader``) as
        csg's in-memory set checked against this run's classes and channels; None: :meth:`load_dataset`."""
        if given is None:
            return self.load_dataset(split, **overrides)
        from ..data import as_image_dataset

        cfg = self.config
        classes = cfg.get("classes")
        num_classes = cfg.get("num_classes")
        mean, std = cfg.get("input_mean"), cfg.get("input_std")
        ds = as_image_dataset(given, num_classes=num_classes,
                              classes=classes if isinstance(classes, list) and len(classes) == num_classes else None,
                              with_masks=with_masks, name=f"the {split} dataset", mean=mean, std=std)
        channels = cfg.get("in_channels")
        if channels is not None and ds.in_channels != int(channels):
            raise CsgError(f"{ds.name} has {ds.in_channels}-channel images but {self.path} was trained on "
                           f"{channels}-channel images; give images of the training data's shape")
        if num_classes is not None and ds.num_classes != int(num_classes):
            raise CsgError(f"{ds.name} has {ds.num_classes} classes but {self.path} was trained on {num_classes}")
        return ds

    # ---- writing -------------------------------------------------------
    @property
    def figures_dir(self) -> Path:
        folder = self.path / FIGURES
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.path / name, obj)

    def write_npy(self, name: str, array: np.ndarray) -> Path:
        return atomic_save_npy(self.path / name, array)

    def write_npz(self, name: str, **arrays: np.ndarray) -> Path:
        return atomic_save_npz(self.path / name, **arrays)

    def lock(self, what: str = "writing") -> RunLock:
        """``with run.lock(): ...``: refuse a second writer while this process writes the run."""
        return RunLock(self.path, what=what)

    def update_metrics(self, values: dict[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into ``metrics.json`` (atomically) and return the result."""
        merged = self.metrics()
        merged.update(values)
        self.write_json(METRICS, merged)
        return merged
