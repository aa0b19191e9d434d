"""Training methods: STD (baseline), CSG (alternating, joint, fixed), ICNN and PICNN.

``build_method(cfg)`` picks one by ``cfg.method``; each implements
:class:`~csg.methods.base.TrainingMethod`.
"""
from __future__ import annotations

import importlib

from ..core.errors import CsgError
from .base import StepOutput, TrainingMethod
from .csg import CSGMethod, FixedCSGMethod

_REGISTRY = {
    "std": "csg.methods.base:TrainingMethod",
    "csg": "csg.methods.csg:CSGMethod",
    "csg-fixed": "csg.methods.csg:FixedCSGMethod",
    "icnn": "csg.methods.icnn:ICNNMethod",
    "picnn": "csg.methods.picnn:PICNNMethod",
}


def available_methods() -> list[str]:
    return list(_REGISTRY)


def build_method(cfg) -> TrainingMethod:
    try:
        target = _REGISTRY[cfg.method]
    except KeyError:
        raise CsgError(f"unknown --method {cfg.method!r}; choose one of {', '.join(_REGISTRY)}") from None
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)(cfg)


__all__ = ["TrainingMethod", "StepOutput", "CSGMethod", "FixedCSGMethod", "build_method", "available_methods"]
