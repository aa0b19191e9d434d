"""Which torch device a command runs on."""
from __future__ import annotations

import torch

from .errors import CsgError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CsgError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CsgError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    return device
