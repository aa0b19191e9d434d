"""VGG-11 and VGG-16 with batch norm (Simonyan & Zisserman 2015) as GAP classifiers.

``features`` follows torchvision's ``vgg11_bn`` / ``vgg16_bn`` index for index
(conv, BatchNorm, ReLU per conv; one max-pool per ``"M"``) with the last
max-pool removed, so the feature layer ends at a ReLU (K = 512) and keeps twice
the resolution (14 x 14 for 224 px, 2 x 2 for 32 px). Then a global average pool
and ``classifier = nn.Linear(512, C)``; the 4096-wide layers and dropout are
gone, since the CSG wrapper needs the head to be one linear map of the pooled
vector.

``small_input=True`` also replaces the fourth max-pool by ``nn.Identity`` (the
index is kept, so ``features.N`` names the same layer in both variants): a
32 px image then gives 4 x 4 maps and a 28 px image 3 x 3 instead of 1 x 1.
Default (``None``) is False.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .resnet_cifar import _init_conv_bn

CFGS: dict[str, list[int | str]] = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def make_features(cfg: list[int | str], in_channels: int, small_input: bool) -> nn.Sequential:
    """Conv-BN-ReLU stacks; the last ``"M"`` is dropped, the fourth is an Identity when ``small_input``."""
    cfg = list(cfg)
    assert cfg[-1] == "M"
    cfg = cfg[:-1]
    layers: list[nn.Module] = []
    channels = in_channels
    pools = 0
    for v in cfg:
        if v == "M":
            pools += 1
            layers.append(nn.Identity() if (small_input and pools == 4) else nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.BatchNorm2d(int(v)),
                       nn.ReLU(inplace=True)]
            channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` -> global average pool -> ``classifier`` (one ``nn.Linear(512, C)``)."""

    def __init__(self, cfg: list[int | str], num_classes: int = 1000, in_channels: int = 3,
                 small_input: bool = False):
        super().__init__()
        self.small_input = bool(small_input)
        self.features = make_features(cfg, in_channels, self.small_input)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        self.num_filters = 512
        _init_conv_bn(self)
        # torchvision's VGG linear init.
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg(name: str, num_classes: int, in_channels: int = 3, small_input: bool = False) -> VGG:
    """Build ``vgg11_bn`` / ``vgg16_bn``."""
    return VGG(CFGS[name], num_classes=num_classes, in_channels=in_channels, small_input=small_input)
