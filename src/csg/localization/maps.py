"""Where a filter looks: GradMap, ActivMap and CAM, batched over images and filters.

A map method is one class with one function to write, ``compute(model, images, labels, filters=None)``,
returning per-filter maps ``N x K x H x W`` (``per_filter = True``) or one map per image ``N x H x W``,
at the input's size, plus a default :class:`~csg.localization.regions.RegionRule` (METHOD.md section 5):

* GradMap  ``g_k = d mean_hw(A_k) / d x`` -> L2 norm over colour channels -> divide by its root mean
  square over pixels -> Gaussian blur (sigma) -> region ``> threshold`` (1).
* ActivMap bilinear upsampling of ``A_k`` -> region ``>= filter k's top-q level over the evaluation set``.
* CAM      ``sum_k W[c, k] A_k`` with ``c`` the true class, upsampled -> region = the image's own top q.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import CsgError
from .regions import DatasetQuantile, FixedThreshold, ImageQuantile, RegionRule, gaussian_blur


def _filter_index(filters, num_filters: int, device) -> torch.Tensor | None:
    if filters is None:
        return None
    idx = torch.as_tensor(filters, dtype=torch.long, device=device).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_filters):
        raise CsgError(f"filter index out of range 0..{num_filters - 1}: {idx.tolist()}")
    return idx


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``N x K x h x w`` (or ``N x h x w``) maps to ``size`` (align_corners=False)."""
    squeeze = maps.dim() == 3
    x = maps[:, None] if squeeze else maps
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x[:, 0] if squeeze else x


class MapMethod:
    """Base class: subclass, set ``name`` / ``per_filter`` and write :meth:`compute`."""

    name = "map"
    per_filter = True
    #: the AP level (percent) that picks a filter's class (``c* = argmax_c AP_n``)
    select_ap = 30

    def compute(self, model, images: torch.Tensor, labels: torch.Tensor | None = None,
                filters=None) -> torch.Tensor:
        raise NotImplementedError

    def region_rule(self) -> RegionRule:
        return ImageQuantile(0.3)

    def describe(self) -> dict:
        return {"method": self.name}

    def __call__(self, model, images, labels=None, filters=None):
        return self.compute(model, images, labels, filters)


class ActivMap(MapMethod):
    """``M_k = upsample_bilinear(A_k)`` to the input size; region: top-q of filter k over the evaluation set."""

    name = "activmap"
    select_ap = 30

    def __init__(self, quantile: float = 0.3, bins: int = 4096):
        self.quantile = float(quantile)
        self.bins = int(bins)

    @torch.no_grad()
    def compute(self, model, images, labels=None, filters=None):
        a = model.feature_maps(images)
        idx = _filter_index(filters, a.shape[1], a.device)
        if idx is not None:
            a = a.index_select(1, idx)
        return upsample(a.float(), images.shape[-2:])

    def region_rule(self) -> RegionRule:
        return DatasetQuantile(self.quantile, self.bins)

    def describe(self) -> dict:
        return {"method": self.name, "quantile": self.quantile, "bins": self.bins}


class CAM(MapMethod):
    """``M = upsample_bilinear(sum_k W[c, k] A_k)``, ``c`` = the true class (the predicted one when no label
    is given); upsampling is linear, so it is done once after the sum. Region: the image's own top q."""

    name = "cam"
    per_filter = False
    select_ap = 30

    def __init__(self, quantile: float = 0.3):
        self.quantile = float(quantile)

    @torch.no_grad()
    def compute(self, model, images, labels=None, filters=None):
        a = model.feature_maps(images).float()
        weight = model.head.weight.float()  # C x K
        if labels is None:
            labels = model.head(a.mean(dim=(2, 3))).argmax(dim=1)
        w = weight.index_select(0, labels.to(weight.device))  # N x K
        cam = torch.einsum("nk,nkhw->nhw", w, a)
        return upsample(cam, images.shape[-2:])

    def region_rule(self) -> RegionRule:
        return ImageQuantile(self.quantile)

    def describe(self) -> dict:
        return {"method": self.name, "quantile": self.quantile}


def filter_input_gradients(model, images: torch.Tensor, filters=None, chunk: int = 256) -> torch.Tensor:
    """``G[n, j] = d mean_hw(A_{k_j}) / d x_n`` for every image and selected filter: ``N x J x C x H x W``.

    One forward pass, then batched backward passes (``torch.autograd.grad(..., is_grads_batched=True)``,
    i.e. vmap over the one-hot grad outputs), ``chunk`` image-filter pairs per pass so memory stays
    bounded. Images are independent in eval mode (no batch statistics), so the gradient of
    ``sum_n a[n, k]`` with respect to ``x_n`` is the gradient of ``a[n, k]`` alone.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        pooled = model.feature_maps(x).mean(dim=(2, 3))  # N x K
        n, k = pooled.shape
        idx = _filter_index(filters, k, pooled.device)
        if idx is None:
            idx = torch.arange(k, device=pooled.device)
        per_pass = max(1, chunk // max(n, 1))
        out = []
        for start in range(0, idx.numel(), per_pass):  # chunks of filters, each chunk one batched pass
            sel = idx[start:start + per_pass]
            onehot = torch.zeros(sel.numel(), n, k, device=pooled.device, dtype=pooled.dtype)
            onehot[torch.arange(sel.numel(), device=pooled.device), :, sel] = 1.0
            last = start + per_pass >= idx.numel()
            (g,) = torch.autograd.grad(pooled, x, grad_outputs=onehot, is_grads_batched=True,
                                       retain_graph=not last)
            out.append(g.transpose(0, 1))  # N x J x C x H x W
    return torch.cat(out, dim=1) if out else x.new_zeros((n, 0) + tuple(x.shape[1:]))


class GradMap(MapMethod):
    """``M_k = blur_sigma(||g_k||_2,colour / rms_pixels(||g_k||_2,colour))``, ``g_k = d mean_hw(A_k) / d x``.

    Region ``M_k > threshold`` (1: above the map's root mean square, before the blur). Paper: sigma 5 px;
    the reference code uses sigma 30 on 128 px (pass ``sigma=30``). A filter whose gradient is zero
    everywhere (a dead filter) gets a zero map and an empty region.
    """

    name = "gradmap"
    select_ap = 20

    def __init__(self, sigma: float = 5.0, threshold: float = 1.0, truncate: float = 4.0,
                 mode: str = "reflect", chunk: int = 256):
        self.sigma = float(sigma)
        self.threshold = float(threshold)
        self.truncate = float(truncate)
        self.mode = mode
        self.chunk = int(chunk)

    def compute(self, model, images, labels=None, filters=None):
        g = filter_input_gradients(model, images, filters, self.chunk).detach()
        mag = g.float().pow(2).sum(dim=2).sqrt()  # N x K x H x W, L2 over colour channels
        rms = mag.pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        mag = mag / torch.where(rms > 0, rms, torch.ones_like(rms))
        return gaussian_blur(mag, self.sigma, self.truncate, self.mode)

    def region_rule(self) -> RegionRule:
        return FixedThreshold(self.threshold)

    def describe(self) -> dict:
        return {"method": self.name, "sigma": self.sigma, "threshold": self.threshold,
                "truncate": self.truncate, "blur_mode": self.mode}


METHODS = {"gradmap": GradMap, "activmap": ActivMap, "cam": CAM}


def build_method(name: str, **options) -> MapMethod:
    """A map method by name with only the options it takes (``sigma``, ``threshold``, ``quantile``)."""
    if name not in METHODS:
        raise CsgError(f"unknown map method {name!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})
