"""The two passes over images that the atlas needs beyond ``features.npz``.

1. :func:`fit_levels` — one pass over the evaluation split: each layer's ActivMap level
   ``level_k = Q_{1-q}`` of filter k's upsampled map values over the split (METHOD.md section 5, the
   :class:`~csg.localization.DatasetQuantile` rule ``csg localize`` uses), plus the pooled activations
   of layers other than the feature layer (whose pooled values ``features.npz`` already holds).
2. :func:`pair_feature_maps` + :func:`pair_maps` — one batched pass over (image, filter) pairs, the top
   images of each filter (each distinct image run once): the ActivMap ``upsample(A_k(x))`` and, optionally, the GradMap of the pair (gradient of
   ``mean_hw A_k`` with respect to ``x``, L2 over colour, divided by its RMS, blurred: exactly
   :class:`~csg.localization.GradMap`, computed for pairs rather than for every image x filter).

A layer is named by its dotted path inside the backbone; the feature layer is ``model.feature_layer``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.errors import CsgError
from ..core.hooks import capture_outputs
from ..localization.maps import upsample
from ..localization.regions import DatasetQuantile, gaussian_blur

#: map values held at once (images x filters x H x W), as in ``csg localize``
ELEMENT_BUDGET = 1 << 25


def layer_maps(model, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The output maps (``N x K_l x h x w``) of each named layer for images in [0, 1], in one forward.

    The forward stops at the feature layer, so a layer must run at or before it.
    """
    feature = model.feature_layer
    others = [name for name in layers if name != feature]
    with capture_outputs(model.backbone, others) as store:
        fmap = model.feature_maps(images)
    out = {}
    for name in layers:
        a = fmap if name == feature else store.get(name)
        if a is None:
            raise CsgError(f"layer {name!r} did not run before the feature layer {feature!r}; "
                           "the atlas shows the feature layer and layers before it")
        if not torch.is_tensor(a) or a.dim() != 4:
            shape = tuple(a.shape) if torch.is_tensor(a) else type(a).__name__
            raise CsgError(f"layer {name!r} gives {shape}, not N x K x H x W maps; name a convolutional block")
        out[name] = a
    return out


def _batch_size(values_per_image: int, requested: int) -> int:
    return int(max(1, min(requested, ELEMENT_BUDGET // max(values_per_image, 1))))


@torch.no_grad()
def fit_levels(model, images: torch.Tensor, layers: Sequence[str], *, quantile: float = 0.3,
               level_index: torch.Tensor | None = None, pooled_layers: Sequence[str] = (),
               batch_size: int = 64, device="cpu", bins: int = 4096, progress: bool = False) -> dict:
    """One pass over ``images`` (uint8 ``N x C x H x W``).

    Returns ``{"levels": {layer: K float64}, "pooled": {layer: N x K float32}, "precision": {layer: float}}``:
    the ActivMap level of every filter, fitted on the images of ``level_index`` (all when None), and
    the pooled activations of ``pooled_layers`` over all images. Only the images needed are visited.
    """
    n = images.shape[0]
    want = torch.zeros(n, dtype=torch.bool)
    want[torch.arange(n) if level_index is None else level_index] = True
    visit = torch.arange(n) if pooled_layers else torch.nonzero(want).squeeze(1)
    size = tuple(images.shape[-2:])
    probe = layer_maps(model, images[:1].to(device=device, dtype=torch.float32) / 255.0, layers)
    per_image = sum(int(a.shape[1]) for a in probe.values()) * size[0] * size[1]
    bs = _batch_size(per_image, batch_size)
    rules = {name: DatasetQuantile(quantile, bins) for name in layers}
    pooled = {name: torch.zeros(n, probe[name].shape[1]) for name in pooled_layers}
    first = True
    while first or any(rule.needs_fit for rule in rules.values()):
        # pass 1 also fills the pooled activations; later passes (the exact level's values near it) visit
        # only the level images and the layers whose level is still open
        order = visit if first else torch.nonzero(want).squeeze(1)
        open_layers = [name for name, rule in rules.items() if rule.needs_fit]
        starts = range(0, order.numel(), bs)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="atlas levels" if first else "atlas levels (exact)", leave=False)
        for s in starts:
            idx = order[s:s + bs]
            x = images[idx].to(device=device, dtype=torch.float32) / 255.0
            maps = layer_maps(model, x, layers if first else open_layers)
            keep = want[idx].to(device)
            for name, a in maps.items():
                if first and name in pooled:
                    pooled[name][idx] = a.float().mean(dim=(2, 3)).cpu()
                if name in open_layers and bool(keep.any()):
                    rules[name].update(upsample(a[keep].float(), size))
        for name in open_layers:
            rules[name].end_pass()
        first = False
    out = {"levels": {}, "pooled": {k: v.numpy() for k, v in pooled.items()}, "precision": {}}
    for name, rule in rules.items():
        out["levels"][name] = rule.finish().cpu().numpy()
        out["precision"][name] = 0.0  # exact: np.quantile over every cell of the level images
    return out


def gradmap_from_gradients(g: torch.Tensor, sigma: float = 5.0, truncate: float = 4.0,
                           mode: str = "reflect") -> torch.Tensor:
    """GradMap of input gradients ``P x C x H x W``: ``blur_sigma(||g||_colour / rms_pixels(||g||_colour))``
    (the formula of :class:`csg.localization.GradMap`; a zero gradient gives a zero map)."""
    mag = g.float().pow(2).sum(dim=1).sqrt()  # P x H x W
    rms = mag.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    mag = mag / torch.where(rms > 0, rms, torch.ones_like(rms))
    return gaussian_blur(mag, sigma, truncate, mode)


def pair_gradients(model, layer: str, images: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``d mean_hw(A_{f_p}(x_p)) / d x_p`` for each pair ``p`` (images ``P x C x H x W`` float, filters ``P``).

    One forward of the ``P`` images and ONE backward of ``sum_p a[p, f_p]``: in eval mode images are
    independent, so row p of the input gradient is exactly pair p's own gradient.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        a = layer_maps(model, x, [layer])[layer].mean(dim=(2, 3))  # P x K
        picked = a[torch.arange(x.shape[0], device=x.device), filters.to(x.device)]
        (g,) = torch.autograd.grad(picked.sum(), x)
    return g


@torch.no_grad()
def pair_feature_maps(model, layer: str, images: torch.Tensor, image_index: torch.Tensor, filters: torch.Tensor,
                      *, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """``A_{f_p}(x_p)`` at the layer's resolution for every pair (``P x h x w``, CPU): each distinct image is
    run once, however many filters have it among their top images, and only the pairs' channels are kept."""
    uniq, inverse = torch.unique(image_index, return_inverse=True)
    order = torch.argsort(inverse, stable=True)  # pairs grouped by image, so each batch gathers a slice
    out = None
    done = 0
    for s in range(0, uniq.numel(), batch_size):
        x = images[uniq[s:s + batch_size]].to(device=device, dtype=torch.float32) / 255.0
        a = layer_maps(model, x, [layer])[layer]
        out = torch.zeros((image_index.numel(),) + tuple(a.shape[2:])) if out is None else out
        n_pairs = int((inverse[order[done:]] < s + a.shape[0]).sum())
        sel = order[done:done + n_pairs]
        rows = (inverse[sel] - s).to(a.device)
        out[sel] = a[rows, filters[sel].to(a.device)].float().cpu()
        done += n_pairs
    return out if out is not None else torch.zeros((0, 1, 1))


def pair_maps(model, layer: str, images: torch.Tensor, image_index: torch.Tensor, filters: torch.Tensor,
              levels: torch.Tensor, *, gradmap: bool = True, sigma: float = 5.0, threshold: float = 1.0,
              batch_size: int = 64, device="cpu", low: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """ActivMap (and GradMap) of each pair ``(image_index[p], filters[p])`` at the input size.

    Returns ``activ`` (``P x H x W`` float32), ``activ_region`` (``activ >= levels[f_p]``) and, with
    ``gradmap``, ``grad`` and ``grad_region`` (``grad > threshold``), all on the CPU. ``low``: the pairs'
    maps at the layer's resolution when already computed (:func:`pair_feature_maps`, which runs each
    distinct image once); the GradMaps take one forward-backward per pair.
    """
    p = image_index.numel()
    h, w = images.shape[-2:]
    out = {"activ": torch.zeros(p, h, w), "activ_region": torch.zeros(p, h, w, dtype=torch.bool)}
    if gradmap:
        out["grad"] = torch.zeros(p, h, w)
        out["grad_region"] = torch.zeros(p, h, w, dtype=torch.bool)
    if p == 0:
        return out
    if low is None:
        low = pair_feature_maps(model, layer, images, image_index, filters, batch_size=batch_size, device=device)
    # compared in the maps' dtype, as DatasetQuantile.regions does in `csg localize`
    levels = torch.as_tensor(levels).float()
    step = _batch_size(h * w, 4096)
    for s in range(0, p, step):
        m = upsample(low[s:s + step], (h, w))
        out["activ"][s:s + step] = m
        out["activ_region"][s:s + step] = m >= levels[filters[s:s + step]][:, None, None]
    if gradmap:
        for s in range(0, p, batch_size):
            x = images[image_index[s:s + batch_size]].to(device=device, dtype=torch.float32) / 255.0
            g = pair_gradients(model, layer, x, filters[s:s + batch_size])
            m = gradmap_from_gradients(g, sigma).cpu()
            out["grad"][s:s + m.shape[0]] = m
            out["grad_region"][s:s + m.shape[0]] = m > threshold
    return out
