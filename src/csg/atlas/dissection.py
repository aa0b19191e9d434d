"""Dissection IoU of a filter's ActivMap region with the object, and with the clutter around it.

For one image with region ``S`` (ActivMap ``>= `` the filter's dataset top-q level, METHOD.md section 5),
object mask ``M`` and canvas ``X``:

* object IoU   ``|S and M| / |S or M|``
* clutter IoU  ``|S and B| / |S or B|`` with ``B = {p : X(p) != 0 in some channel} and not M``: the
  nonzero canvas pixels outside the object (the pasted fragments on fashion-mnist-clutter, the
  background of a VOC crop; the zero padding of a crop is neither).

A filter's score is the mean of the per-image IoU over its top-k images (the images its card shows),
the per-image IoU being the one of METHOD.md section 5 (0 when both sets are empty). It answers "when this
filter fires most, does it fire on the object or on the clutter?".
"""
from __future__ import annotations

import numpy as np
import torch

from ..localization.scoring import iou


def clutter_masks(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``B = (any channel != 0) and not M`` for images ``N x C x H x W`` and masks ``N x H x W``."""
    return (images != 0).any(dim=1) & ~masks.bool().to(images.device)


def pair_iou(regions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-pair IoU: regions ``P x H x W`` against masks ``P x H x W`` (float64, ``P``)."""
    return iou(regions, masks)


def dissection_iou(pair_ious) -> np.ndarray:
    """A filter's score: the mean per-image IoU over its top images (``K x k`` -> ``K``)."""
    return np.asarray(pair_ious, dtype=np.float64).mean(axis=1)
