"""Seeded random target classes for targeted attacks (METHOD.md section 6, Appendix I).

Appendix I gives each sample a target drawn from a random permutation of the
classes other than its own. Taking the first entry of a uniformly random
permutation of the other ``C - 1`` classes is the same as drawing one of them
uniformly, which is done here without a loop:

    t = (y + 1 + u) mod C,   u ~ U{0, ..., C - 2}

so ``t != y`` always and every other class is equally likely. The draw depends
only on the seed and the sample's position, not on batching.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import CsgError


def random_targets(labels: torch.Tensor | np.ndarray, num_classes: int, seed: int = 0) -> torch.Tensor:
    """One target per label, uniform over the other classes, reproducible from ``seed``."""
    if num_classes < 2:
        raise CsgError(f"a targeted attack needs at least 2 classes, got {num_classes}")
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise CsgError(f"labels must lie in [0, {num_classes}); got {int(y.min())}..{int(y.max())}")
    rng = np.random.default_rng(int(seed))
    offset = torch.as_tensor(rng.integers(0, num_classes - 1, size=y.shape), dtype=torch.long)
    return ((y.cpu() + 1 + offset) % num_classes).to(y.device)


__all__ = ["random_targets"]
