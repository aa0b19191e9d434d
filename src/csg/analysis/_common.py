"""Small array helpers shared by the analyses (class means, one-hot, confusion)."""
from __future__ import annotations

import numpy as np

from ..core.errors import CsgError

def as_labels(labels, num_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Labels as int64 and the class count (``max + 1`` when not given)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise CsgError(f"labels must lie in [0, {num_classes}); got values from {y.min()} to {y.max()}")
    return y, int(num_classes)

def check_pooled(pooled, labels) -> np.ndarray:
    a = np.asarray(pooled, dtype=np.float64)
    if a.ndim != 2:
        raise CsgError(f"pooled features must be N x K, got shape {a.shape}")
    if a.shape[0] != np.asarray(labels).shape[0]:
        raise CsgError(f"pooled features have {a.shape[0]} rows but there are {np.asarray(labels).shape[0]} labels")
    return a

def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``N x C`` float matrix with ``out[n, labels[n]] = 1``."""
    out = np.zeros((labels.shape[0], num_classes))
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out

def class_means(pooled, labels, num_classes: int | None = None, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """``mu[c] = mean of pooled[n]`` over samples of class c (restricted to ``mask``).

    Returns ``(mu, counts)``; rows of classes without samples are NaN.
    """
    y, C = as_labels(labels, num_classes)
    a = check_pooled(pooled, y)
    onehot = one_hot(y, C)
    if mask is not None:
        onehot = onehot * np.asarray(mask, dtype=bool)[:, None]
    counts = onehot.sum(axis=0)
    sums = onehot.T @ a  # one matrix product, no loop over classes
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = sums / counts[:, None]
    mu[counts == 0] = np.nan
    return mu, counts.astype(np.int64)

def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``M[t, p]`` = number of samples of true class t predicted as p (counts, int64)."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(predictions, dtype=np.int64).ravel()
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)

def per_class_recall(confusion: np.ndarray) -> np.ndarray:
    """Diagonal over row sums (NaN for classes without samples)."""
    rows = confusion.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / rows
