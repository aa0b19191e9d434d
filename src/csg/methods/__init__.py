"""Training methods: STD (baseline), CSG (alternating, joint, fixed), ICNN, PICNN and CSG+ (csg-plus).

``build_method(cfg, num_classes)`` picks one by ``cfg.method`` and gives it its
own resolved config; each implements :class:`~csg.methods.base.TrainingMethod`.
A new method is one module and one line of ``_REGISTRY``.
"""
from __future__ import annotations

import importlib

from ..core.errors import CsgError
from .base import MethodConfig, StepOutput, TrainingMethod
from .csg import CSGMethod, FixedCSGMethod, csg_loss

_REGISTRY = {
    "std": "csg.methods.base:TrainingMethod",
    "csg": "csg.methods.csg:CSGMethod",
    "csg-fixed": "csg.methods.csg:FixedCSGMethod",
    "icnn": "csg.methods.icnn:ICNNMethod",
    "picnn": "csg.methods.picnn:PICNNMethod",
    "csg-plus": "csg.methods.csg_plus:CSGPlusMethod",
}


def available_methods() -> list[str]:
    return list(_REGISTRY)


def method_class(name: str) -> type[TrainingMethod]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise CsgError(f"unknown --method {name!r}; choose one of {', '.join(_REGISTRY)}") from None
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def build_method(options, num_classes: int) -> TrainingMethod:
    """The method ``options.method`` with its config resolved for ``num_classes`` classes.

    ``options``: a flat run configuration (``TrainConfig`` or the ``config.json`` dict).
    """
    name = options["method"] if isinstance(options, dict) else options.method
    cls = method_class(name)
    return cls(cls.resolve(options, num_classes))


__all__ = ["TrainingMethod", "MethodConfig", "StepOutput", "CSGMethod", "FixedCSGMethod", "csg_loss",
           "build_method", "method_class", "available_methods"]
