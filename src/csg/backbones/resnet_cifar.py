"""CIFAR-style ResNets (He et al. 2016, sec. 4.2): ResNet-20/32/56/110.

Layout for depth ``6n + 2``::

    conv1 3x3, 16 -> bn1 -> relu                       (32 x 32 for CIFAR)
    layer1: n BasicBlocks, 16 channels, stride 1       (32 x 32)
    layer2: n BasicBlocks, 32 channels, first stride 2 (16 x 16)
    layer3: n BasicBlocks, 64 channels, first stride 2 ( 8 x  8)   <- feature layer, K = 64
    avgpool (global) -> flatten -> fc: Linear(64, C)

The shortcut of a block that changes shape is either

* option ``"A"`` (the default, the paper's CIFAR choice and the one the CSG
  reference ResNet-20 uses): parameter-free; subsample ``x[:, :, ::2, ::2]``
  and zero-pad the channel axis with ``planes // 4`` zero channels on each side
  (16 -> 32 -> 64, so the identity lands in the middle channels), or
* option ``"B"``: ``1x1 conv (stride 2) + BatchNorm``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import CsgError

CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}


class PadShortcut(nn.Module):
    """Option-A shortcut: ``pad_c(x[:, :, ::s, ::s])`` with ``pad`` zero channels before and after."""

    def __init__(self, stride: int, pad: int):
        super().__init__()
        self.stride = stride
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's tuple runs from the last axis backwards: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class CifarBasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, two 3x3 convs."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            # The CIFAR nets only ever double the width, so (planes - in_planes) / 2 == planes // 4.
            if planes - in_planes != 2 * (planes // 4):
                raise CsgError(f"option-A shortcut needs planes == 2 * in_planes, got {in_planes} -> {planes}; "
                               "use shortcut='B'")
            self.shortcut = PadShortcut(stride, planes // 4)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2`` with widths 16/32/64; ``layer3`` is the feature layer (K = 64)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A",
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise CsgError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        shortcut = str(shortcut).upper()
        if shortcut not in ("A", "B"):
            raise CsgError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 conv), got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.shortcut_option = shortcut
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_filters = in_planes
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_conv_bn(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU gain, as torchvision), BN weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(name: str, num_classes: int, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """Build ``resnet20`` / ``resnet32`` / ``resnet56`` / ``resnet110``."""
    return CifarResNet(CIFAR_DEPTHS[name], num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)
