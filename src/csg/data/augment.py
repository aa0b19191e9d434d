"""Batched data augmentation: random crop with zero padding and random horizontal flip.

Everything happens on the images' device in one gather, with no loop over
samples. The random numbers are drawn on the CPU from the caller's
``torch.Generator`` and then moved to the device, so a seed gives the same
crops and flips on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..core.errors import CsgError


class AugmentDraw(NamedTuple):
    """The random numbers of one batch (CPU tensors).

    ``offsets`` (n, 2) int64: row and column of the window's top-left corner in
    the padded image, each in ``0 .. 2p`` (None without cropping);
    ``flips`` (n,) bool: mirror left-right (None without flipping).
    """

    offsets: torch.Tensor | None
    flips: torch.Tensor | None


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding ``crop_padding`` and random horizontal flip.

    For a batch of n images (C, H, W) and padding p, the random numbers are
    drawn in this order from the generator:

    1. if ``p > 0``: ``offsets = torch.randint(0, 2p + 1, (n, 2))`` - column 0
       is the row offset dy, column 1 the column offset dx;
    2. if ``hflip``: ``flips = torch.randint(0, 2, (n,)) == 1``.

    Image i becomes ``pad(x_i, p)[:, dy:dy + H, dx:dx + W]``, then mirrored
    left-right when ``flips[i]`` (the window is taken first, then flipped).
    """

    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        p = self.crop_padding
        if isinstance(p, bool) or int(p) != p or p < 0:
            raise CsgError(f"crop padding must be a non-negative integer number of pixels, got {p}")
        object.__setattr__(self, "crop_padding", int(p))
        object.__setattr__(self, "hflip", bool(self.hflip))

    @property
    def active(self) -> bool:
        """False when the augmentation is the identity (no padding, no flip)."""
        return self.crop_padding > 0 or self.hflip

    def draw(self, n: int, generator: torch.Generator | None = None) -> AugmentDraw:
        """Draw the random numbers of a batch of ``n`` images on the CPU (order: see the class doc)."""
        p = self.crop_padding
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator) if p > 0 else None
        flips = (torch.randint(0, 2, (n,), generator=generator) == 1) if self.hflip else None
        return AugmentDraw(offsets, flips)

    def apply(self, images: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        """Crop and flip ``images`` (N, C, H, W), any dtype, as ``draw`` says (a new tensor).

        One advanced-index gather of per-sample windows from an ``unfold``
        view of the zero-padded batch (and, with flips, of its mirror image:
        the mirror of the window at column offset dx is the window at 2p - dx
        of the mirrored padded image).
        """
        if images.dim() != 4:
            raise CsgError(f"augmentation expects images (N, C, H, W), got shape {tuple(images.shape)}")
        if draw.offsets is None and draw.flips is None:
            return images
        n, c, h, w = images.shape
        device = images.device
        p = self.crop_padding
        arange = torch.arange(n, device=device)
        if draw.offsets is not None:
            dy, dx = draw.offsets[:, 0].to(device), draw.offsets[:, 1].to(device)
        else:
            dy = dx = torch.zeros(n, dtype=torch.int64, device=device)
        copies = 2 if draw.flips is not None else 1
        # the zero-padded batch, and with flips a mirrored copy of it behind: sample i mirrored is i + n
        padded = images.new_zeros((copies * n, c, h + 2 * p, w + 2 * p))
        padded[:n, :, p:p + h, p:p + w] = images
        source = arange
        if draw.flips is not None:
            padded[n:, :, p:p + h, p:p + w] = images.flip(3)
            flips = draw.flips.to(device)
            source = arange + n * flips
            # the window at dx of a mirrored image is the mirror of the window at 2p - dx
            dx = torch.where(flips, 2 * p - dx, dx)
        # every H x W window of every padded image is a view (2n, c, 2p+1, 2p+1, H, W); indexing it
        # with each sample's (copy, dy, dx) gathers exactly one window per sample
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)
        return windows[source, :, dy, dx]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch: ``apply(images, draw(len(images), generator))``."""
        if not self.active:
            return images
        return self.apply(images, self.draw(images.shape[0], generator))
