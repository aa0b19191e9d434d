"""A user's own network for the tests of ``csg train --model tests' custom_model:make_net``: a small CNN
built by a factory that takes keyword arguments (put tests/ on PYTHONPATH)."""
from __future__ import annotations

import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def make_net(width: int = 8, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The factory ``--model custom_model:make_net --model-kwargs '{"width": 8}'`` names."""
    return TinyNet(width=width, in_channels=in_channels, num_classes=num_classes)
