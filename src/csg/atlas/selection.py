"""Which images a filter's card shows: its top-k activating images of the evaluation split.

``top_k(k)`` of filter ``j`` = the ``k`` rows ``n`` with the largest pooled activation ``a[n, j]``
(``a = mean_hw A``, the values of ``features.npz``), largest first; equal values keep the lower image
index first, so the choice is deterministic.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import CsgError


def top_images(pooled, k: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Indices (``K x k``, int64) and values (``K x k``) of each filter's ``k`` largest pooled activations.

    ``k`` is capped at the number of images. One stable argsort over the image axis for all filters.
    """
    a = np.asarray(pooled)
    if a.ndim != 2:
        raise CsgError(f"pooled activations must be N x K, got shape {a.shape}")
    n = a.shape[0]
    if n == 0:
        raise CsgError("no images: the pooled activations are empty; re-run `csg evaluate`")
    if int(k) < 1:
        raise CsgError(f"--top-k must be at least 1, got {k}")
    k = min(int(k), n)
    # stable sort of -a: ties keep the lower index first
    order = np.argsort(-a.astype(np.float64, copy=False), axis=0, kind="stable")[:k]  # k x K
    idx = np.ascontiguousarray(order.T).astype(np.int64)
    values = np.take_along_axis(a.T, idx, axis=1)
    return idx, values
