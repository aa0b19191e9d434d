"""From a model and images to what the graph is mined on: layer maps, their normalisation, the evidence.

    x~ = max(x / sigma_neg(h, w, c), 0)        sigma_neg: the unit's standard deviation over negative images
    evidence = x~ * G(evidence_sigma * H)      an isotropic Gaussian of that many cells, truncated at 3 sd

Layers are named as in the wrapped backbone (``"layer1"``, ``"features.28"``); for a
:class:`~csg.core.model.GatedClassifier` the names are looked up in its backbone first. Images go through the
model in batches; only the per-layer evidence (half precision by default) and each filter's raw maximum and
its position (the raw-filter baseline) are kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import CsgError
from ..core.hooks import capture_outputs, resolve_module


def _root(model: nn.Module, names: Sequence[str]) -> tuple[nn.Module, list[str]]:
    """(module to hook, names in it): a wrapped model's backbone when it has every name, else the model."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        modules = dict(backbone.named_modules())
        stripped = [n[len("backbone."):] if n.startswith("backbone.") else n for n in names]
        if all(n in modules for n in stripped):
            return backbone, stripped
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            resolve_module(backbone if isinstance(backbone, nn.Module) else model, n)  # raises, naming close ones
    return model, list(names)


def check_layers(model: nn.Module, names: Sequence[str]) -> None:
    """Raise :class:`CsgError` naming the closest layers when a name does not exist."""
    _root(model, names)


def capture_layers(model: nn.Module, images: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
    """The outputs of the named layers on one batch (images float in [0, 1]), as float32 copies.

    A wrapped model normalises its input itself; any other module gets the images as they are.
    """
    root, keys = _root(model, names)
    with torch.no_grad(), capture_outputs(root, keys) as out:
        model(images)
    maps = []
    for name, key in zip(names, keys):
        value = out.get(key)
        if not torch.is_tensor(value) or value.dim() != 4:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise CsgError(f"layer {name!r} gives {got}, not N x K x H x W feature maps; "
                           "name convolutional layers or blocks")
        maps.append(value.detach().to(torch.float32).clone())
    return maps


def default_layers(model: nn.Module, image: torch.Tensor, count: int = 3) -> list[str]:
    """The layers mined when none are named, in the order the forward pass calls them, up to the feature layer:
    the backbone's last ``count`` top-level blocks that give 4-D maps (ResNet-20: ``layer1, layer2, layer3``;
    ResNet-18: ``layer2, layer3, layer4``), or, when it has fewer than two (VGG's single ``features``
    Sequential), its last ``count`` ReLUs (VGG-16: ``conv5_1..conv5_3``)."""
    root = getattr(model, "backbone", model)
    feature = getattr(model, "feature_layer", None) or None
    calls: list[tuple[str, bool]] = []  # (name, is a ReLU) of every module giving 4-D maps, in call order
    handles = []
    for name, module in root.named_modules():
        if not name:
            continue

        def hook(_m, _i, output, _name=name, _relu=isinstance(module, nn.ReLU)):
            if torch.is_tensor(output) and output.dim() == 4 and min(output.shape[2:]) >= 2:
                calls.append((_name, _relu))
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(image[:1])
    finally:
        for h in handles:
            h.remove()
    names = [n for n, _ in calls]
    if feature in names:
        calls = calls[: len(names) - names[::-1].index(feature)]  # up to the feature layer's (last) call
    top: list[str] = []
    for name, _ in calls:
        if "." not in name and name not in top:
            top.append(name)
    if len(top) >= 2:
        return top[-count:]
    relus = [n for n, relu in calls if relu]
    relus = list(dict.fromkeys(relus))
    if len(relus) < 2:
        raise CsgError("could not find two convolutional blocks to mine; name them with --layers")
    return relus[-count:]


def _batches(images: torch.Tensor, batch_size: int, device):
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        yield x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)


def negative_spread(model: nn.Module, negatives: torch.Tensor, names: Sequence[str], *, batch_size: int = 64,
                    device="cpu") -> list[torch.Tensor]:
    """Per unit (channel, row, column) standard deviation of each layer's output over ``negatives``,
    ``sqrt(E[x^2] - E[x]^2)`` in float64, floored at 1% of the channel's mean over positions (and of the
    layer's mean) so that a unit silent on every negative does not divide by zero."""
    if negatives.shape[0] < 2:
        raise CsgError(f"need at least 2 negative images for the normalisation, got {negatives.shape[0]}")
    s1 = s2 = None
    for x in _batches(negatives, batch_size, device):
        maps = capture_layers(model, x, names)
        b1 = [m.to(torch.float64).sum(0) for m in maps]
        b2 = [m.to(torch.float64).pow(2).sum(0) for m in maps]
        s1 = b1 if s1 is None else [a + b for a, b in zip(s1, b1)]
        s2 = b2 if s2 is None else [a + b for a, b in zip(s2, b2)]
    n = float(negatives.shape[0])
    out = []
    for a, b in zip(s1, s2):
        sd = (b / n - (a / n) ** 2).clamp_min(0).sqrt()
        floor = torch.maximum(0.01 * sd.mean(dim=(1, 2), keepdim=True), 0.01 * sd.mean()).clamp_min(1e-8)
        out.append(torch.maximum(sd, floor).to(torch.float32))
    return out


def gaussian_blur(maps: torch.Tensor, sd: float) -> torch.Tensor:
    """Convolve ``maps`` (N x K x H x W) with ``exp(-r^2 / (2 sd^2))`` (sampled at integer offsets, truncated
    at ``ceil(3 sd)``, normalised to sum 1), zero outside the map; separable, two 1-D convolutions."""
    if sd <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sd)))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sd) ** 2)
    kernel = kernel / kernel.sum()
    n, k, h, w = maps.shape
    x = maps.reshape(n * k, 1, h, w)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return x.reshape(n, k, h, w)


@dataclass
class LayerData:
    """What the graph needs of one layer over the mined images."""

    name: str
    evidence: torch.Tensor  # N x K x H x W, normalised and blurred (stored in ``dtype``)
    stride: tuple[float, float]  # input pixels per cell
    raw_scores: torch.Tensor  # K x N: max over the map of x~ (the raw-filter baseline's score)
    raw_positions: torch.Tensor  # K x N x 2: its argmax cell

    @property
    def map_size(self) -> tuple[int, int]:
        return int(self.evidence.shape[2]), int(self.evidence.shape[3])


def prepare_layers(model: nn.Module, images: torch.Tensor, names: Sequence[str], sigma_neg: Sequence[torch.Tensor],
                   *, evidence_sigma: float = 0.025, batch_size: int = 64, device="cpu",
                   dtype: torch.dtype = torch.float16) -> list[LayerData]:
    """Run ``images`` through the model once; per layer the evidence maps and the raw filters' peaks."""
    ev: list[list[torch.Tensor]] = [[] for _ in names]
    rs: list[list[torch.Tensor]] = [[] for _ in names]
    rp: list[list[torch.Tensor]] = [[] for _ in names]
    shapes = None
    for x in _batches(images, batch_size, device):
        maps = capture_layers(model, x, names)
        shapes = [m.shape for m in maps]
        for i, (m, sd) in enumerate(zip(maps, sigma_neg)):
            if tuple(sd.shape) != tuple(m.shape[1:]):
                raise CsgError(f"layer {names[i]!r}: negatives give maps {tuple(sd.shape)} but the images give "
                               f"{tuple(m.shape[1:])}; use negatives of the images' size")
            xn = (m / sd.to(m.device)).clamp_min(0)
            h, w = m.shape[2:]
            peak, idx = xn.flatten(2).max(dim=2)  # B x K
            rs[i].append(peak.T.cpu())
            rp[i].append(torch.stack([idx // w, idx % w], dim=-1).transpose(0, 1).to(torch.float32).cpu())
            ev[i].append(gaussian_blur(xn, evidence_sigma * min(h, w)).to(dtype).cpu())
    size = images.shape[2:]
    out = []
    for i, name in enumerate(names):
        h, w = shapes[i][2:]
        out.append(LayerData(name=name, evidence=torch.cat(ev[i]), stride=(size[0] / h, size[1] / w),
                             raw_scores=torch.cat(rs[i], 1), raw_positions=torch.cat(rp[i], 1)))
    return out
