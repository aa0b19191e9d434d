"""AlexNet (Krizhevsky et al. 2012, torchvision's single-tower layout) as a GAP classifier.

``features`` (indices as in torchvision, the final max-pool removed so the
feature layer ends at the last conv's ReLU, K = 256)::

    0 conv 11x11/4 (in -> 64)   1 relu   2 maxpool 3/2
    3 conv 5x5     (64 -> 192)  4 relu   5 maxpool 3/2
    6 conv 3x3     (192 -> 384) 7 relu
    8 conv 3x3     (384 -> 256) 9 relu
   10 conv 3x3     (256 -> 256) 11 relu          <- "features", K = 256
    avgpool (global) -> flatten -> classifier: Linear(256, C)

The 4096-wide fully connected layers and their dropout are gone: the CSG
wrapper needs the head to be one linear map of the pooled vector.

``small_input=True`` (28-32 px images; the default when ``small_input`` is None,
because the ImageNet stem cannot take a 28 px image at all: 28 -> 6 -> 2 -> 0)
replaces index 0 by a 3x3/1 conv and both max-pools by 2x2/2 pools, so a 32 px
image gives 8 x 8 maps and a 28 px image 7 x 7. Indices stay the same, so
``"features.10"`` names the same conv in both variants.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .resnet_cifar import _init_conv_bn


class AlexNet(nn.Module):
    """``features`` -> global average pool -> ``classifier`` (one ``nn.Linear(256, C)``)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, small_input: bool = True):
        super().__init__()
        self.small_input = bool(small_input)
        if self.small_input:
            stem = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)
            pool1, pool2 = nn.MaxPool2d(kernel_size=2, stride=2), nn.MaxPool2d(kernel_size=2, stride=2)
        else:
            stem = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
            pool1, pool2 = nn.MaxPool2d(kernel_size=3, stride=2), nn.MaxPool2d(kernel_size=3, stride=2)
        self.features = nn.Sequential(
            stem, nn.ReLU(inplace=True), pool1,
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), pool2,
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(256, num_classes)
        self.num_filters = 256
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def alexnet(num_classes: int, in_channels: int = 3, small_input: bool = True) -> AlexNet:
    return AlexNet(num_classes=num_classes, in_channels=in_channels, small_input=small_input)
