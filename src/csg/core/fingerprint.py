"""Content hashes: of a model's weights, and of any mix of tensors, arrays and JSON values.

They name what a stored result was computed from, so that a later call can tell whether it still holds
(a black-box journal resumes; an earlier attack or localization is kept beside a new one).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch


def fingerprint(**parts: Any) -> str:
    """A sha256 over ``parts``: tensors and arrays by their bytes, dtype and shape, the rest as JSON."""
    digest = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        digest.update(key.encode())
        if torch.is_tensor(value):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
            digest.update(arr.tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A sha256 of a model's parameters and buffers (names, shapes and values)."""
    return fingerprint(**{name: t for name, t in model.state_dict().items() if torch.is_tensor(t)})
