"""A classifier with a STD path and a CSG path around any ``nn.Module``.

The network is a backbone whose *feature layer* (named by its dotted path)
yields maps ``A`` of shape ``N x K x H x W``; global average pooling gives
``a = mean_hw(A)`` and a linear head gives the logits::

    STD path:  logits     = W a + b
    CSG path:  csg_logits = W (a * G[y]) + b      (== W mean_hw(A * G[y]) + b)

Pooling is linear, so gating the pooled vector equals gating the maps; it costs
one gather of the label rows of ``G``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from .errors import CsgError
from .gate import ClassSpecificGate
from .hooks import resolve_module


@dataclass
class ModelOutput:
    """What one forward pass yields; ``csg_logits`` only when labels were given to a gated model."""

    logits: torch.Tensor
    pooled: torch.Tensor
    maps: torch.Tensor
    csg_logits: torch.Tensor | None = None


class _FeatureReached(Exception):
    """Raised by the feature-layer hook to skip the layers after it."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output


class GatedClassifier(nn.Module):
    """Turn ``backbone`` plus the dotted name of its feature layer into a CSG model.

    Args:
        backbone: any module mapping images to something that passes through
            ``feature_layer``; the layers after it are skipped.
        feature_layer: dotted name (``"layer4"``, ``"features.28"``) of the module
            whose output is the feature maps; ``""`` means the backbone itself.
        num_classes: C.
        head: dotted name of an ``nn.Linear`` inside ``backbone`` to reuse as the
            head (its weights are kept), or ``None`` to create a new one.
        num_filters: K; read from the head when it is reused.
        gate: a :class:`ClassSpecificGate`, or ``None`` for a STD-only model.
        input_mean, input_std: per-channel normalisation applied inside the model,
            so every input (and every adversarial image) lives in [0, 1].
    """

    def __init__(self, backbone: nn.Module, feature_layer: str, num_classes: int, *,
                 head: str | None = None, num_filters: int | None = None,
                 gate: ClassSpecificGate | None = None,
                 input_mean: Sequence[float] | None = None, input_std: Sequence[float] | None = None):
        super().__init__()
        self.backbone = backbone
        self.feature_layer = feature_layer
        # kept out of the module registry: it is already registered inside the backbone
        self.__dict__["_feature_module"] = resolve_module(backbone, feature_layer) if feature_layer else None
        self.head_name = head
        if head is not None:
            head_module = resolve_module(backbone, head)
            if not isinstance(head_module, nn.Linear):
                raise CsgError(f"head {head!r} is a {type(head_module).__name__}, not nn.Linear; "
                               "name the final linear layer or pass head=None")
            if head_module.out_features != num_classes:
                raise CsgError(f"head {head!r} has {head_module.out_features} outputs but the data has "
                               f"{num_classes} classes; rebuild the model with num_classes={num_classes}")
            num_filters = head_module.in_features
            self.new_head = None
        else:
            if num_filters is None:
                raise CsgError("num_filters is needed when no head layer is named (the feature layer's channel count)")
            self.new_head = nn.Linear(num_filters, num_classes)
        self.num_classes = int(num_classes)
        self.num_filters = int(num_filters)
        if gate is not None and (gate.num_classes, gate.num_filters) != (num_classes, num_filters):
            raise CsgError(f"gate is {gate.num_classes} x {gate.num_filters} but the model has "
                           f"{num_classes} classes and {num_filters} filters")
        self.gate = gate
        n_in = len(input_mean) if input_mean is not None else 1
        mean = torch.tensor(list(input_mean) if input_mean is not None else [0.0] * n_in).view(1, -1, 1, 1)
        std = torch.tensor(list(input_std) if input_std is not None else [1.0] * n_in).view(1, -1, 1, 1)
        self.register_buffer("input_mean", mean.float())
        self.register_buffer("input_std", std.float())

    @property
    def head(self) -> nn.Linear:
        if self.head_name is not None:
            return resolve_module(self.backbone, self.head_name)
        return self.new_head

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.input_mean) / self.input_std

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``A``: the feature layer's output (N, K, H, W) for images in [0, 1]."""
        x = self.normalize(images)
        if self._feature_module is None:
            return self.backbone(x)

        def stop(_m, _inp, output):
            raise _FeatureReached(output)

        handle = self._feature_module.register_forward_hook(stop)
        try:
            self.backbone(x)
        except _FeatureReached as reached:
            return reached.output
        finally:
            handle.remove()
        raise CsgError(f"feature layer {self.feature_layer!r} was not called in the backbone's forward pass")

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        maps = self.feature_maps(images)
        if maps.dim() != 4 or maps.shape[1] != self.num_filters:
            raise CsgError(f"feature layer {self.feature_layer!r} gives shape {tuple(maps.shape)}, "
                           f"expected (N, {self.num_filters}, H, W)")
        pooled = maps.mean(dim=(2, 3))
        head = self.head
        logits = head(pooled)
        csg_logits = None
        if labels is not None and self.gate is not None:
            csg_logits = head(self.gate(pooled, labels))
        return ModelOutput(logits=logits, pooled=pooled, maps=maps, csg_logits=csg_logits)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The STD path's logits alone (what evaluation and attacks use)."""
        return self.forward(images).logits


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (``.module``) and/or ``torch.compile``
    (``._orig_mod``) wrapper, however they are nested; any other module is returned as it is."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or (
                type(model).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module")):
            model = model.module
        else:
            return model
