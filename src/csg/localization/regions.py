"""Turning maps into regions: Gaussian blur, fixed thresholds, top-q levels.

Three region rules (METHOD.md section 5):

* :class:`FixedThreshold`  ``S = {p : m(p) > t}`` (GradMap, ``t = 1``).
* :class:`ImageQuantile`   ``S = {p : m(p) >= Q_{1-q}(m)}``, the image's own top ``q`` (CAM, ``q = 0.3``).
* :class:`DatasetQuantile` ``S_k = {p : m_k(p) >= Q_{1-q}(all values of filter k over the evaluation set)}``
  (ActivMap); the level is found in one streaming pass by :class:`StreamingQuantile`.

All of them are batched over images and filters: maps are ``N x K x H x W`` (or ``N x H x W``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import CsgError

BLUR_MODES = ("reflect", "mirror", "nearest", "constant", "wrap")


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """The sampled Gaussian ``w(x) ~ exp(-x^2 / (2 sigma^2))``, ``|x| <= r``, ``r = int(truncate*sigma + 0.5)``,
    normalised to sum 1: the same kernel as ``scipy.ndimage.gaussian_filter`` (order 0)."""
    if sigma <= 0:
        raise CsgError(f"blur sigma must be positive, got {sigma}; use sigma=0 to switch the blur off")
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def _pad_index(n: int, radius: int, mode: str) -> np.ndarray:
    """Source index for every position of a 1-D signal of length ``n`` padded by ``radius`` on each side,
    following SciPy's boundary modes (``-1`` marks a constant-zero sample)."""
    i = np.arange(-radius, n + radius)
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if mode == "constant":
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "reflect":  # half-sample symmetric: d c b a | a b c d | d c b a  (numpy "symmetric")
        period = 2 * n
        j = np.mod(i, period)
        return np.where(j < n, j, period - 1 - j)
    if mode == "mirror":  # whole-sample symmetric: d c b | a b c d | c b a  (numpy/torch "reflect")
        if n == 1:
            return np.zeros_like(i)
        period = 2 * n - 2
        j = np.mod(i, period)
        return np.where(j < n, j, period - j)
    raise CsgError(f"unknown blur mode {mode!r}; choose one of {', '.join(BLUR_MODES)}")


def _pad_axis(x: torch.Tensor, dim: int, radius: int, mode: str) -> torch.Tensor:
    n = x.shape[dim]
    idx = _pad_index(n, radius, mode)
    if mode == "constant":
        idx = np.where(idx < 0, n, idx)
        zero_shape = list(x.shape)
        zero_shape[dim] = 1
        x = torch.cat([x, x.new_zeros(zero_shape)], dim=dim)  # index n picks this zero slice
    return x.index_select(dim, torch.as_tensor(idx, device=x.device))


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur over the last two axes of ``maps`` (any leading shape).

    Matches ``scipy.ndimage.gaussian_filter(m, sigma, mode=mode, truncate=truncate)`` applied to each
    ``H x W`` slice (SciPy mode names; the padding works for any radius, even one larger than the image).
    ``sigma <= 0`` returns the maps unchanged.
    """
    if sigma is None or sigma <= 0:
        return maps
    shape = maps.shape
    h, w = shape[-2], shape[-1]
    x = maps.reshape(-1, 1, h, w)
    kernel = gaussian_kernel1d(sigma, truncate, dtype=x.dtype, device=x.device)
    r = (kernel.numel() - 1) // 2
    # rows then columns; each is a 1-D convolution on the padded axis (the kernel is symmetric)
    x = F.conv2d(_pad_axis(x, 3, r, mode), kernel.view(1, 1, 1, -1))
    x = F.conv2d(_pad_axis(x, 2, r, mode), kernel.view(1, 1, -1, 1))
    return x.reshape(shape)


def image_quantile_level(maps: torch.Tensor, q: float) -> torch.Tensor:
    """Per map, the level ``Q_{1-q}`` of its own values (linear interpolation, as ``np.quantile``)."""
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1]).to(torch.float64)
    # torch.quantile refuses very large inputs, so go in row chunks
    step = max(1, (1 << 23) // flat.shape[1])
    levels = torch.cat([torch.quantile(flat[i:i + step], 1.0 - q, dim=1) for i in range(0, flat.shape[0], step)])
    return levels.reshape(maps.shape[:-2])


class RegionRule:
    """Maps -> boolean regions. ``needs_fit`` rules see every map once (``update``) before ``regions``."""

    needs_fit = False

    def reset(self) -> None:  # pragma: no cover - trivial
        pass

    def update(self, maps: torch.Tensor) -> None:  # pragma: no cover - trivial
        pass

    def end_pass(self) -> None:  # pragma: no cover - trivial
        pass

    def regions(self, maps: torch.Tensor, filters=None) -> torch.Tensor:
        """Boolean regions of ``maps``; ``filters`` names the filters of axis 1 when it is a subset."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"rule": type(self).__name__}


class FixedThreshold(RegionRule):
    """``S = {p : m(p) > threshold}`` (GradMap after RMS normalisation: threshold 1 = above the RMS)."""

    def __init__(self, threshold: float = 1.0):
        self.threshold = float(threshold)

    def regions(self, maps: torch.Tensor, filters=None) -> torch.Tensor:
        return maps > self.threshold

    def describe(self) -> dict:
        return {"rule": "value > threshold", "threshold": self.threshold}


class ImageQuantile(RegionRule):
    """``S = {p : m(p) >= Q_{1-q}(m)}``: the image's own top ``q`` share of values (CAM)."""

    def __init__(self, q: float = 0.3):
        if not 0 < q < 1:
            raise CsgError(f"quantile must be in (0, 1), got {q}")
        self.q = float(q)

    def regions(self, maps: torch.Tensor, filters=None) -> torch.Tensor:
        level = image_quantile_level(maps, self.q).to(maps.dtype)
        return maps >= level[..., None, None]

    def describe(self) -> dict:
        return {"rule": "value >= the image's own top-q level", "quantile": self.q}


class StreamingQuantile:
    """Per-channel quantiles of a stream of ``N x K x ...`` batches in O(K * bins) memory.

    Each channel keeps a histogram of ``bins`` equal bins over ``[lo, lo + bins * width)``, with the
    smallest and largest value that fell in each bin. The range starts
    as the first batch's ``[min, max]`` and, when a later value falls outside, doubles (towards the side it
    fell on) as often as needed; doubling merges pairs of bins exactly, so no count is ever misplaced.
    The order statistics at ranks ``floor(r)`` and ``ceil(r)``, ``r = p * (n - 1)`` (the ones ``np.quantile``
    interpolates between), are read from the bins that hold them, spread evenly between the bin's
    smallest and largest value; the result is their linear interpolation, as in ``np.quantile``.

    Precision: the two order statistics are each placed inside their true bin (exactly when the bin holds
    one distinct value, e.g. the zeros after a ReLU), so the result is within one bin width of
    ``np.quantile`` over all values seen: ``|err| <= width_k`` (:meth:`bin_width`). The range only doubles when a value falls outside it, once
    per side that needs it, so it stays within 4x the channel's value range (2x when values grow on one
    side only, as ReLU maps do from a first batch that holds zeros): ``width_k <= 4 * (max_k - min_k) /
    (bins - 1)``; with the default 4096 bins, 0.1% of the channel's range at worst.
    """

    def __init__(self, num_channels: int, bins: int = 4096):
        if bins < 2 or bins % 2:
            raise CsgError(f"bins must be an even number >= 2, got {bins}")
        self.k = int(num_channels)
        self.bins = int(bins)
        self.counts = None  # K x bins, int64
        self.lo = None  # K, float64
        self.width = None  # K, float64

    def _grow(self, vmin: torch.Tensor, vmax: torch.Tensor) -> None:
        b = self.bins
        half = b // 2
        for _ in range(2100):  # each round doubles the range of the channels that still need it
            hi = self.lo + b * self.width
            up = vmax >= hi
            down = vmin < self.lo
            need = up | down
            if not bool(need.any()):
                return

            def merged(t, pair_reduce, empty):
                pairs = pair_reduce(t.view(self.k, half, 2))
                fill = torch.full_like(pairs, empty)
                grown_up = torch.cat([pairs, fill], dim=1)  # old range is the lower half
                grown_down = torch.cat([fill, pairs], dim=1)  # old range is the upper half
                return torch.where(up[:, None], grown_up, torch.where(down[:, None], grown_down, t))

            self.counts = merged(self.counts, lambda t: t.sum(-1), 0)
            self.bmin = merged(self.bmin, lambda t: t.amin(-1), float("inf"))
            self.bmax = merged(self.bmax, lambda t: t.amax(-1), float("-inf"))
            self.lo = torch.where(down & ~up, self.lo - b * self.width, self.lo)
            self.width = torch.where(need, self.width * 2, self.width)
        raise CsgError("streaming quantile: values out of any finite range (inf or nan in the maps?)")

    def update(self, values: torch.Tensor) -> None:
        """Add a batch ``N x K x ...`` (channel axis 1)."""
        if values.shape[1] != self.k:
            raise CsgError(f"expected {self.k} channels, got shape {tuple(values.shape)}")
        v = values.detach().transpose(0, 1).reshape(self.k, -1).to(torch.float64)
        if v.shape[1] == 0:
            return
        vmin, vmax = v.min(dim=1).values, v.max(dim=1).values
        if not bool(torch.isfinite(vmin).all() and torch.isfinite(vmax).all()):
            raise CsgError("maps contain inf or nan; check the model's weights")
        if self.counts is None:
            self.counts = torch.zeros(self.k, self.bins, dtype=torch.int64, device=v.device)
            self.bmin = torch.full((self.k, self.bins), float("inf"), dtype=torch.float64, device=v.device)
            self.bmax = torch.full((self.k, self.bins), float("-inf"), dtype=torch.float64, device=v.device)
            span = (vmax - vmin)
            # a degenerate first batch still needs a positive width; later growth fixes a bad guess
            width = torch.where(span > 0, span / (self.bins - 1), torch.clamp(vmax.abs(), min=1.0) * 1e-6)
            self.lo, self.width = vmin.clone(), width
        self._grow(vmin, vmax)
        idx = torch.floor((v - self.lo[:, None]) / self.width[:, None]).long().clamp_(0, self.bins - 1)
        idx += torch.arange(self.k, device=v.device)[:, None] * self.bins
        idx = idx.reshape(-1)
        v = v.reshape(-1)
        self.counts += torch.bincount(idx, minlength=self.k * self.bins).view(self.k, self.bins)
        self.bmin.view(-1).scatter_reduce_(0, idx, v, reduce="amin")
        self.bmax.view(-1).scatter_reduce_(0, idx, v, reduce="amax")

    def quantile(self, p: float) -> torch.Tensor:
        """The level ``Q_p`` per channel (``K`` float64)."""
        if self.counts is None:
            raise CsgError("streaming quantile: no values were added")
        cum = self.counts.cumsum(dim=1)
        n = cum[:, -1]
        rank = p * (n - 1).to(torch.float64)  # 0-based fractional rank, as np.quantile (linear)
        lower = torch.floor(rank)
        frac = rank - lower
        upper = torch.minimum(lower + 1, (n - 1).to(torch.float64))
        v_lo = self._value_at(cum, lower)
        v_hi = self._value_at(cum, upper)
        return v_lo + frac * (v_hi - v_lo)

    def _value_at(self, cum: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Estimate of the ``index``-th smallest value per channel: its bin's values are spread evenly
        between the bin's smallest and largest value seen (exact when they are all equal)."""
        j = torch.searchsorted(cum, index.long()[:, None], right=True).squeeze(1).clamp(max=self.bins - 1)
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(j))
        inside = self.counts.gather(1, j[:, None]).squeeze(1)
        lo = self.bmin.gather(1, j[:, None]).squeeze(1)
        hi = self.bmax.gather(1, j[:, None]).squeeze(1)
        frac = ((index - before.to(torch.float64)) / (inside - 1).clamp(min=1).to(torch.float64)).clamp(0, 1)
        return lo + frac * (hi - lo)

    def bin_width(self) -> torch.Tensor:
        return self.width.clone()


class ExactQuantile:
    """Per-channel quantiles of a stream of ``N x K x ...`` batches, exactly, in a few passes.

    The result equals ``np.quantile(values_k, p)`` for every channel k (linear interpolation between the
    order statistics at ranks ``floor(r)`` and ``floor(r) + 1``, ``r = p (n - 1)``), without holding the
    values:

    1. pass 1 builds a :class:`StreamingQuantile` histogram (``bins`` bins per channel, with each bin's
       smallest and largest value) and finds the bin of each wanted rank. Binning is monotone in the
       value, so that bin's values are exactly the values in ``[bmin, bmax]``;
    2. a rank whose interval holds one distinct value (``bmin == bmax``, e.g. the zeros of a sparse ReLU
       map when they are more than ``1 - p`` of its cells) is exact at once;
    3. every later pass counts the values below each open interval exactly and, inside it, gathers the
       values (at most ``gather`` per search) and reads the rank off the sorted values, or histograms
       the interval into ``bins`` finer bins and goes on with the one holding the rank.

    Call :meth:`update` on every batch of a pass, then :meth:`end_pass`; repeat while :attr:`done` is
    False (two passes in practice; every pass must see the same values).
    """

    MAX_PASSES = 16

    def __init__(self, num_channels: int, p: float, bins: int = 4096, gather: int = 1 << 18,
                 chunk: int = 16):
        if not 0.0 <= p <= 1.0:
            raise CsgError(f"quantile level must be in [0, 1], got {p}")
        self.k, self.p, self.bins, self.gather, self.chunk = int(num_channels), float(p), int(bins), int(gather), chunk
        self.first = StreamingQuantile(self.k, self.bins)
        self.passes = 0
        self.done = False
        self.n = None
        self.values = None          # K x 2 float64: the order statistics at the two ranks
        self.open = None            # the searches still open (dict of 1-D tensors)

    def update(self, values: torch.Tensor) -> None:
        if self.done:
            raise CsgError("exact quantile: every pass is done")
        if self.passes == 0:
            self.first.update(values)
            return
        o = self.open
        v = values.detach().transpose(0, 1).reshape(self.k, -1).to(torch.float64)
        for start in range(0, o["ch"].numel(), self.chunk):  # chunks of searches bound the memory
            sl = slice(start, start + self.chunk)
            rows = v[o["ch"][sl]]                                        # S x M
            a, b = o["a"][sl, None], o["b"][sl, None]
            o["less"][sl] += (rows < a).sum(dim=1).cpu()
            inside = (rows >= a) & (rows <= b)
            gathering = o["gathering"][sl]
            for s in torch.nonzero(gathering).squeeze(1).tolist():
                self._gathered[start + s].append(rows[s][inside[s]].cpu())
            h = torch.nonzero(~gathering).squeeze(1)
            if h.numel():
                span = (b[h] - a[h]).clamp(min=torch.finfo(torch.float64).tiny)
                idx = torch.floor((rows[h] - a[h]) / span * self.bins).clamp(0, self.bins - 1).long()
                ok = inside[h]
                slot = o["slot"][sl][h].to(idx.device)
                flat = (idx + slot[:, None] * self.bins)[ok].cpu()
                vals = rows[h][ok].cpu()
                self._counts.view(-1).index_add_(0, flat, torch.ones_like(flat))
                self._bmin.view(-1).scatter_reduce_(0, flat, vals, reduce="amin")
                self._bmax.view(-1).scatter_reduce_(0, flat, vals, reduce="amax")

    def _ranks(self) -> torch.Tensor:
        r = self.p * (self.n - 1).to(torch.float64)
        lower = torch.floor(r)
        return torch.stack([lower, torch.minimum(lower + 1, (self.n - 1).to(torch.float64))], dim=1).long()

    def end_pass(self) -> bool:
        """Close a pass; returns :attr:`done`."""
        if self.passes == 0:
            sq = self.first
            if sq.counts is None:
                raise CsgError("exact quantile: no values were added")
            cum = sq.counts.cumsum(dim=1).cpu()
            self.n = cum[:, -1]
            ranks = self._ranks()                                        # K x 2
            j = torch.searchsorted(cum, ranks, right=True).clamp(max=self.bins - 1)
            self.values = torch.full((self.k, 2), float("nan"), dtype=torch.float64)
            ch = torch.arange(self.k)[:, None].expand(-1, 2).reshape(-1)
            which = torch.arange(2).repeat(self.k)
            self._settle(ch, which, ranks.reshape(-1), sq.bmin.cpu().gather(1, j).reshape(-1),
                         sq.bmax.cpu().gather(1, j).reshape(-1), sq.counts.cpu().gather(1, j).reshape(-1))
        else:
            o = self.open
            rank_in = o["rank"] - o["less"]                              # 0-based rank inside the interval
            for s in torch.nonzero(o["gathering"]).squeeze(1).tolist():
                mine = torch.sort(torch.cat(self._gathered[s])).values
                self.values[o["ch"][s], o["which"][s]] = mine[int(rank_in[s].clamp(0, mine.numel() - 1))]
            h = torch.nonzero(~o["gathering"]).squeeze(1)
            if h.numel():
                slots = o["slot"][h]
                counts = self._counts[slots]
                cum = counts.cumsum(dim=1)
                j = torch.searchsorted(cum, rank_in[h][:, None], right=True).clamp(max=self.bins - 1)
                # the next pass counts below the new interval from scratch, so only its bounds carry over
                self._settle(o["ch"][h], o["which"][h], o["rank"][h], self._bmin[slots].gather(1, j).squeeze(1),
                             self._bmax[slots].gather(1, j).squeeze(1), counts.gather(1, j).squeeze(1))
            else:
                self.open = None
        self.passes += 1
        if self.open is not None and self.passes >= self.MAX_PASSES:  # pragma: no cover - cannot happen in float64
            raise CsgError("exact quantile: the search did not converge; the maps may hold inf or nan")
        self.done = self.open is None
        return self.done

    def _settle(self, ch, which, rank, lo, hi, inside) -> None:
        """Intervals with one distinct value are exact; the others become the next pass's searches."""
        single = lo == hi
        self.values[ch[single], which[single]] = lo[single]
        keep = ~single
        if not keep.any():
            self.open = None
            return
        gathering = inside[keep] <= self.gather
        m = int((~gathering).sum())
        slot = torch.full((int(keep.sum()),), -1, dtype=torch.long)
        slot[~gathering] = torch.arange(m)
        self.open = {"ch": ch[keep], "which": which[keep], "rank": rank[keep], "a": lo[keep], "b": hi[keep],
                     "less": torch.zeros(int(keep.sum()), dtype=torch.long), "gathering": gathering, "slot": slot}
        self._gathered = [[] for _ in range(int(keep.sum()))]
        self._counts = torch.zeros(m, self.bins, dtype=torch.long)
        self._bmin = torch.full((m, self.bins), float("inf"), dtype=torch.float64)
        self._bmax = torch.full((m, self.bins), float("-inf"), dtype=torch.float64)

    def minimum(self) -> torch.Tensor:
        """``K`` float64: each channel's smallest value seen (read off the first pass's histogram)."""
        if self.first.counts is None:
            raise CsgError("exact quantile: no values were added")
        return self.first.bmin.min(dim=1).values.cpu()

    def quantile(self) -> torch.Tensor:
        """``K`` float64 levels (after the last pass)."""
        if not self.done:
            raise CsgError("exact quantile: passes are still pending")
        r = self.p * (self.n - 1).to(torch.float64)
        frac = r - torch.floor(r)
        v_lo, v_hi = self.values[:, 0], self.values[:, 1]
        return v_lo + frac * (v_hi - v_lo)


class DatasetQuantile(RegionRule):
    """``S_k = {p : m_k(p) >= level_k}``, ``level_k = Q_{1-q}`` of filter k's map values over the whole
    evaluation set (ActivMap, ``q = 0.3``), equal to ``np.quantile`` of all of filter k's cells
    (:class:`ExactQuantile`: one histogram pass, then passes over the values near the level).

    When a sparse filter's zeros are more than ``1 - q`` of its cells the level is exactly 0 and the
    rule's region is every cell (``m >= 0``): that is what the rule says, and it scores such a filter
    as covering the whole image, i.e. IoU = the mask's share of the image whatever the filter does.
    :attr:`whole_image` marks those filters (level <= the filter's smallest value) and :meth:`describe`
    counts them, so that a table can say how much of a method's score is this floor.
    """

    needs_fit = True

    def __init__(self, q: float = 0.3, bins: int = 4096, gather: int = 1 << 18):
        if not 0 < q < 1:
            raise CsgError(f"quantile must be in (0, 1), got {q}")
        self.q = float(q)
        self.bins = int(bins)
        self.gather = int(gather)
        self.reset()

    def reset(self) -> None:
        self._exact = None
        self.levels = None
        self.whole_image = None
        self.needs_fit = True

    def update(self, maps: torch.Tensor) -> None:
        if self._exact is None:
            self._exact = ExactQuantile(maps.shape[1], 1.0 - self.q, self.bins, self.gather)
        self._exact.update(maps)

    def end_pass(self) -> None:
        if self._exact.end_pass():
            self.levels = self._exact.quantile()
            self.whole_image = self.levels <= self._exact.minimum()
            self.needs_fit = False

    def finish(self) -> torch.Tensor:
        if self.levels is None:
            raise CsgError("ActivMap levels are not fitted; run update() over every evaluation batch, then "
                           "end_pass(), while needs_fit")
        return self.levels

    def regions(self, maps: torch.Tensor, filters=None) -> torch.Tensor:
        levels = self.finish().to(device=maps.device, dtype=maps.dtype)
        if filters is not None:
            levels = levels[torch.as_tensor(filters, dtype=torch.long, device=maps.device).reshape(-1)]
        return maps >= levels.view(1, -1, 1, 1)

    def describe(self) -> dict:
        d = {"rule": "value >= filter's top-q level over the evaluation set (exact)", "quantile": self.q}
        if self._exact is not None:
            d["level_passes"] = self._exact.passes
        if self.whole_image is not None:
            d["whole_image_filters"] = torch.nonzero(self.whole_image).squeeze(1).tolist()
        return d
