"""The registered CNN backbones, each a full classifier ready for :class:`csg.core.model.GatedClassifier`.

Every backbone maps images to logits through::

    ... -> feature layer (after its final ReLU; N x K x H x W) -> global average pool
        -> flatten -> head = nn.Linear(K, C)

with nothing else between the pool and the head, so ``head(mean_hw(A))`` is
exactly the module's output and the CSG path ``head(mean_hw(A) * G[y])`` is the
same network with a gate. ``build_backbone`` returns the module together with
the dotted names of its feature layer and head (a :class:`BackboneSpec`).

=========================  ==============  =====  ======
name                       feature layer   K      head
=========================  ==============  =====  ======
resnet20/32/56/110         layer3          64     fc
resnet18/34                layer4          512    fc
resnet50/101/152           layer4          2048   fc
alexnet                    features        256    classifier
vgg11_bn, vgg16_bn         features        512    classifier
=========================  ==============  =====  ======
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch.nn as nn

from ..core.errors import CsgError
from ..core.gate import ClassSpecificGate
from ..core.model import GatedClassifier
from .alexnet import AlexNet, alexnet
from .resnet import IMAGENET_LAYERS, BasicBlock, Bottleneck, ResNet, imagenet_resnet
from .resnet_cifar import CIFAR_DEPTHS, CifarBasicBlock, CifarResNet, PadShortcut, cifar_resnet
from .vgg import CFGS, VGG, vgg

__all__ = [
    "BackboneSpec",
    "build_backbone",
    "build_model",
    "available_backbones",
    "CifarResNet",
    "CifarBasicBlock",
    "PadShortcut",
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "AlexNet",
    "VGG",
]


@dataclass
class BackboneSpec:
    """A classifier and the names the CSG wrapper needs.

    Attributes:
        module: the full classifier (its forward returns logits).
        feature_layer: dotted name of the layer whose output is ``A`` (N x K x H x W, after ReLU).
        head: dotted name of the final ``nn.Linear(K, C)``, applied to the pooled ``A``.
        num_filters: K.
        name: the registered name it was built from.
        small_input: whether the small-image stem was used (False where the family has none).
    """

    module: nn.Module
    feature_layer: str
    head: str
    num_filters: int
    name: str = ""
    small_input: bool = False


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., nn.Module]  # (num_classes, in_channels, small_input, **options) -> module
    feature_layer: str
    head: str
    num_filters: int
    options: tuple[str, ...]  # extra keyword options the builder accepts
    small_default: bool | None  # what small_input=None means; None = the family has no small stem


def _registry() -> dict[str, _Entry]:
    reg: dict[str, _Entry] = {}
    for name in CIFAR_DEPTHS:
        reg[name] = _Entry(
            lambda c, i, s, _n=name, **o: cifar_resnet(_n, c, i, **o),
            "layer3", "fc", 64, ("shortcut",), None)
    for name, (kind, _layers) in IMAGENET_LAYERS.items():
        reg[name] = _Entry(
            lambda c, i, s, _n=name, **o: imagenet_resnet(_n, c, i, small_input=s, **o),
            "layer4", "fc", 512 if kind == "basic" else 2048, ("zero_init_residual",), False)
    reg["alexnet"] = _Entry(lambda c, i, s, **o: alexnet(c, i, small_input=s), "features", "classifier",
                            256, (), True)
    for name in CFGS:
        reg[name] = _Entry(lambda c, i, s, _n=name, **o: vgg(_n, c, i, small_input=s),
                           "features", "classifier", 512, (), False)
    return reg


_REGISTRY = _registry()


def available_backbones() -> list[str]:
    """The registered names, in a stable order (CIFAR ResNets, ImageNet ResNets, AlexNet, VGG)."""
    return list(_REGISTRY)


def _canonical(name: str) -> str | None:
    """Accept ``ResNet-20``, ``resnet_20``, ``VGG16-BN``: compare lower-case with ``-``/``_`` dropped."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    for known in _REGISTRY:
        if known.replace("_", "") == key:
            return known
    return None


def build_backbone(name: str, num_classes: int, in_channels: int = 3, small_input: bool | None = None,
                   **options: Any) -> BackboneSpec:
    """Build the registered backbone ``name`` for ``num_classes`` classes and ``in_channels`` channels.

    Args:
        name: one of :func:`available_backbones` (case, ``-`` and ``_`` are ignored).
        num_classes: C, the head's outputs.
        in_channels: 1 (grey, e.g. Fashion-MNIST) or 3, or any other positive count.
        small_input: use the stem for 28-64 px images. ``None`` means the family's
            default: CIFAR ResNets ignore it (they are small-image nets), ImageNet
            ResNets and VGG default to False, AlexNet to True (its ImageNet stem
            collapses a 28 px image to nothing).
        options: family options: ``shortcut="A"|"B"`` for the CIFAR ResNets
            (``"A"``: zero-padding, the default; ``"B"``: 1x1 conv + BN),
            ``zero_init_residual=True`` for the ImageNet ResNets.

    Raises:
        CsgError: unknown name (with the closest names), bad counts or an option the family lacks.
    """
    known = _canonical(name)
    if known is None:
        names = available_backbones()
        close = difflib.get_close_matches(str(name).strip().lower(), names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CsgError(f"unknown backbone {name!r}; {hint}available: {', '.join(names)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise CsgError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise CsgError(f"in_channels must be a positive integer (1 for grey, 3 for RGB), got {in_channels!r}")
    entry = _REGISTRY[known]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) or "none"
        raise CsgError(f"backbone {known!r} has no option {', '.join(unknown)}; its options: {allowed}")
    if entry.small_default is None:
        small = False  # CIFAR ResNets: already a small-image net
    else:
        small = entry.small_default if small_input is None else bool(small_input)
    module = entry.build(num_classes, in_channels, small, **options)
    return BackboneSpec(module=module, feature_layer=entry.feature_layer, head=entry.head,
                        num_filters=entry.num_filters, name=known, small_input=small)


def build_model(arch: str, num_classes: int, in_channels: int, *, gate: ClassSpecificGate | None = None,
                input_mean: Sequence[float] | None = None, input_std: Sequence[float] | None = None,
                small_input: bool | None = None) -> GatedClassifier:
    """Build a registered backbone wrapped as a :class:`~csg.core.model.GatedClassifier`."""
    spec = build_backbone(arch, num_classes=num_classes, in_channels=in_channels, small_input=small_input)
    return GatedClassifier(spec.module, spec.feature_layer, num_classes, head=spec.head, gate=gate,
                           input_mean=input_mean, input_std=input_std)

