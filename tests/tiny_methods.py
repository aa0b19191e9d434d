"""A tiny gated model and bar images, shared by the tests of the training methods (ICNN, PICNN)."""
from __future__ import annotations

import torch
import torch.nn as nn

from csg.core.model import GatedClassifier


def tiny_model(num_classes=4, seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1, stride=2),
                             nn.ReLU())
    return GatedClassifier(backbone, "3", num_classes, num_filters=12)


def bar_data(n_per_class=16, num_classes=4, size=12, seed=0):
    """Class c is a bright bar in rows 3c..3c+1 over faint noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    images = torch.rand(labels.numel(), 1, size, size, generator=g) * 0.2
    for c in range(num_classes):
        images[labels == c, 0, 3 * c:3 * c + 2, 2:-2] = 0.9
    return images, labels


class TinySet:
    """The part of a csg dataset that the methods' evaluation uses: ``len``, ``num_classes``, ``batches``."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.num_classes = int(labels.max()) + 1

    def __len__(self):
        return self.labels.numel()

    def batches(self, batch_size, shuffle=False, generator=None, device="cpu", augment=None, **kw):
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size].to(device), self.labels[i:i + batch_size].to(device)
