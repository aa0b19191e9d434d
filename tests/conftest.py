"""Shared fixtures: a tiny Fashion-MNIST-like IDX folder and tiny trained runs.

The tiny set draws each class as a bright bar at its own position plus noise,
so a few steps of training separate the classes; files use the real IDX format.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("CSG_TEST_THREADS", "2")))

os.environ.setdefault("MPLBACKEND", "Agg")


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> Path:
    """Write ``array`` (uint8) in IDX format: magic 0x000008NN, big-endian dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz") if not path.name.endswith(".gz") else path
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def make_bar_images(n_per_class: int, num_classes: int = 10, size: int = 28, seed: int = 0):
    """Images where class c is a bright horizontal bar in row band c (plus noise)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(labels.size, size, size)).astype(np.uint8)
    band = size // num_classes
    rows = (labels * band)[:, None] + np.arange(max(band, 2))[None, :]
    rows = np.clip(rows, 0, size - 1)
    idx = np.arange(labels.size)[:, None]
    images[idx, rows, 4:size - 4] = 230
    return images, labels.astype(np.uint8)


def write_tiny_fashion_mnist(folder: Path, n_train_per_class: int = 30, n_test_per_class: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = make_bar_images(n_train_per_class, seed=1)
    xte, yte = make_bar_images(n_test_per_class, seed=2)
    write_idx(folder / "train-images-idx3-ubyte", xtr)
    write_idx(folder / "train-labels-idx1-ubyte", ytr)
    write_idx(folder / "t10k-images-idx3-ubyte", xte)
    write_idx(folder / "t10k-labels-idx1-ubyte", yte)
    return folder


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory) -> Path:
    """A Fashion-MNIST-like IDX folder: 300 train and 100 test images of 28 x 28, 10 classes."""
    return write_tiny_fashion_mnist(tmp_path_factory.mktemp("tiny-fmnist"))


def _train_tiny(tmp_path_factory, tiny_idx_dir: Path, method: str) -> Path:
    from csg.cli import main

    out = tmp_path_factory.mktemp(f"run-{method}") / "run"
    code = main(["train", "--data", "fashion-mnist", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                 "--method", method, "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--out", str(out),
                 "--no-progress", "--seed", "0"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_csg_run(tmp_path_factory, tiny_idx_dir) -> Path:
    """A trained and evaluated CSG run (3 epochs, resnet20) on the tiny set."""
    return _train_tiny(tmp_path_factory, tiny_idx_dir, "csg")


@pytest.fixture(scope="session")
def tiny_std_run(tmp_path_factory, tiny_idx_dir) -> Path:
    """A trained and evaluated STD run (3 epochs, resnet20) on the tiny set."""
    return _train_tiny(tmp_path_factory, tiny_idx_dir, "std")
