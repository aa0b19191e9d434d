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

from ..core.errors import CsgError
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


def _saved_bytes_per_image(model, images: torch.Tensor) -> int:
    """Bytes autograd saves for one image's forward to the feature layer (measured on one image)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = images[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.feature_maps(x)
    return max(total, x.numel() * x.element_size())


def _pairs_per_pass(model, images, memory_budget: float | None) -> int:
    """Image-filter pairs one replicated pass may hold: ``budget / (2 x saved bytes per image)`` (the factor 2
    leaves room for the backward's gradients). Budget: half the free GPU memory, or 2 GiB on the CPU."""
    if memory_budget is None:
        if images.device.type == "cuda":
            memory_budget = 0.5 * torch.cuda.mem_get_info(images.device)[0]
        else:
            memory_budget = 2.0 * 2 ** 30
    return max(1, int(memory_budget // (2 * _saved_bytes_per_image(model, images))))


def filter_input_gradients(model, images: torch.Tensor, filters=None, chunk: int | None = None,
                           strategy: str = "auto", memory_budget: float | None = None) -> torch.Tensor:
    """``G[n, j] = d mean_hw(A_{k_j}) / d x_n`` for every image and selected filter: ``N x J x C x H x W``.

    Exact for a model in eval mode (no batch statistics, no dropout): images are then independent, so the
    gradient of a sum over images with respect to ``x_n`` is image ``n``'s own gradient. Two strategies:

    * ``"replicate"`` (default on CUDA): ``R`` filters per pass; the batch is copied ``R`` times into one
      ``R*N`` batch (copy ``j`` of image ``n`` stands for filter ``k_j``), one forward, and ONE ordinary
      backward of ``sum_j sum_n a[j*N + n, k_j]``: each copy's input gradient is exactly its filter's
      gradient. ``R = chunk // N`` (``chunk`` = image-filter pairs per pass), or from ``memory_budget``
      (bytes; default half the free GPU memory, 2 GiB on CPU) over the measured autograd bytes per image.
    * ``"shared"`` (default on CPU): one forward of the ``N`` images, then one backward per filter, each
      batched over all images (``retain_graph``). On a CPU the convolution backward is bound by memory
      traffic, so the small ``N``-image working set beats an ``R*N`` one, and the forward is done once
      (measured in ``benchmarks/bench_localization.py``).

    ``torch.autograd.grad(..., is_grads_batched=True)`` is not used: its vmap falls back to a per-sample
    loop for ``convolution_backward`` and ``native_batch_norm_backward`` and was slower than either.
    """
    if strategy == "auto":
        strategy = "replicate" if images.device.type == "cuda" else "shared"
    if strategy not in ("replicate", "shared"):
        raise CsgError(f"unknown GradMap strategy {strategy!r}; choose auto, replicate or shared")
    n = images.shape[0]
    k = model.num_filters
    idx = _filter_index(filters, k, images.device)
    if idx is None:
        idx = torch.arange(k, device=images.device)
    x = images.detach()
    if idx.numel() == 0 or n == 0:
        return x.new_zeros((n, idx.numel()) + tuple(x.shape[1:]))
    out = []
    with torch.enable_grad():
        if strategy == "shared":
            xx = x.clone().requires_grad_(True)
            pooled = model.feature_maps(xx).mean(dim=(2, 3))  # N x K
            for j, f in enumerate(idx.tolist()):  # one backward per filter, all images at once
                (g,) = torch.autograd.grad(pooled[:, f].sum(), xx, retain_graph=j + 1 < idx.numel())
                out.append(g)
            return torch.stack(out, dim=1)
        pairs = int(chunk) if chunk else _pairs_per_pass(model, x, memory_budget)
        per_pass = max(1, pairs // n)
        for start in range(0, idx.numel(), per_pass):
            sel = idx[start:start + per_pass]
            r = sel.numel()
            xx = x.repeat(r, *([1] * (x.dim() - 1))).requires_grad_(True)  # copy j = rows j*N .. j*N+N-1
            pooled = model.feature_maps(xx).mean(dim=(2, 3)).view(r, n, -1)
            diag = pooled[torch.arange(r, device=x.device), :, sel]  # r x N: copy j, its filter k_j
            (g,) = torch.autograd.grad(diag.sum(), xx)
            out.append(g.view(r, n, *x.shape[1:]).transpose(0, 1))
    return torch.cat(out, dim=1)


class GradMap(MapMethod):
    """``M_k = blur_sigma(||g_k||_2,colour / rms_pixels(||g_k||_2,colour))``, ``g_k = d mean_hw(A_k) / d x``.

    Region ``M_k > threshold`` (1: above the map's root mean square, before the blur). Paper: sigma 5 px;
    the reference code uses sigma 30 on 128 px (pass ``sigma=30``). A filter whose gradient is zero
    everywhere (a dead filter) gets a zero map and an empty region.
    """

    name = "gradmap"
    select_ap = 20

    def __init__(self, sigma: float = 5.0, threshold: float = 1.0, truncate: float = 4.0,
                 mode: str = "reflect", chunk: int | None = None, strategy: str = "auto",
                 memory_budget: float | None = None):
        self.sigma = float(sigma)
        self.threshold = float(threshold)
        self.truncate = float(truncate)
        self.mode = mode
        self.chunk = None if chunk is None else int(chunk)
        self.strategy = strategy
        self.memory_budget = memory_budget

    def compute(self, model, images, labels=None, filters=None):
        g = filter_input_gradients(model, images, filters, self.chunk, self.strategy, self.memory_budget).detach()
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


def check_method_names(names: Sequence[str]) -> None:
    """Every name is one of ``METHODS`` or ``captum:NAME`` (docs/integrations.md); else one line."""
    from .attributions import captum_names, check_captum_name, is_captum_name

    for name in names:
        if is_captum_name(name):
            check_captum_name(name)
        elif name not in METHODS:
            raise CsgError(f"unknown map method {name!r}; choose from {', '.join(list(METHODS) + captum_names())}")


def build_method(name: str, **options) -> MapMethod:
    """A map method by name with only the options it takes (``sigma``, ``threshold``, ``quantile``);
    ``captum:NAME`` is a Captum attribution (:mod:`csg.localization.attributions`)."""
    check_method_names([name])
    import inspect

    if name.startswith("captum:"):
        from .attributions import CaptumMap

        accepted = inspect.signature(CaptumMap.__init__).parameters
        return CaptumMap(name, **{k: v for k, v in options.items() if k in accepted and v is not None})
    cls = METHODS[name]

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})
