"""Mining the explanatory graph (Zhang, Wu, Zhu, AAAI 2018) from feature maps: E/M per layer, top-down links.

Input, per layer (bottom to top): the *evidence* maps of N images, ``N x K x H x W``, i.e. each unit's
activation normalised by its spread on negative images, ``x~ = max(x / sigma_neg, 0)``, convolved with an
isotropic Gaussian of standard deviation ``evidence_sigma * H`` cells (see :mod:`csg.graph.features`).
Positions are map cells (rows, columns; cell centres at integers); a layer's ``stride`` turns them into
input pixels, ``pixel = (cell + 0.5) * stride - 0.5``.

Each filter owns ``n_f`` nodes (patterns). Node V has a mean position ``mu_V`` and a spread ``sigma_V``.
For image I its prior position is ``c = mu_V + m_V^I`` with spread ``delta_V^I`` and weight
``lambda_V^I`` given by its parents in the layer above (the top layer and the first iteration of every
layer: ``m = 0, delta = init_spread * H, lambda = 1``). The E-step, for candidate offsets ``d`` on a
``P x P`` grid over ``[-R, R]^2`` with ``R = round(min(search * H, search_sigmas * sigma_V))``::

    q(d)  = c + d                                       candidate position
    g(d)  = lambda N(d_h; 0, delta) N(d_w; 0, delta)    geometric term
    e(d)  = evidence(q(d))                              bilinear read of the evidence map
    D(q)  = sum over the filter's nodes U of g_U at q   (each U inside its own window)
    r(d)  = g(d) / (D(q(d)) + tau),  tau = tau_share * mean_V sum_d g_V     (competition)
    S_V^I = sum_d g e,   p_V^I = q(argmax_d g e)        score and inferred position

The M-step moves ``mu_V`` by ``delta_min^2 * sum_{I,d} w d / delta^2 / sum_{I,d} w`` with ``w = r e`` and
``delta_min = min_{V,I} delta / iteration^0.25``, and sets ``sigma_V`` to the ``g e``-weighted root mean
square of ``|d|``, clamped to ``[0.1, 1] * sqrt(H W / n_f)`` cells. Every computation is one tensor
operation over (filters, nodes, images, candidates); images go in chunks, so memory is bounded by the
chunk. Links, the parent priors and the choices where the reference code is ambiguous are documented
on :func:`link_parents`, :func:`parent_priors` and in docs/graph.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import CsgError

#: nodes per filter as a share of the map's cells, by number of layers (METHOD.md section 9: VGG-16
#: conv4_2..conv5_3 .05/.05/.1/.1, ResNets' three stages .05/.1/.2)
DEFAULT_RHO = {1: (0.1,), 2: (0.1, 0.2), 3: (0.05, 0.1, 0.2), 4: (0.05, 0.05, 0.1, 0.1)}
#: elements of one parent-affinity block (child nodes x candidate parents x images)
LINK_BUDGET = 1 << 22


@dataclass
class MiningSettings:
    """The reference code's settings (``getNetParameters.m``), named; METHOD.md section 9."""

    iterations: int = 20  # M-steps per layer (a final E-step gives the records)
    candidates: int = 6  # P: candidate offsets per axis (positionCandNum), at most the map side
    search: float = 0.15  # window half-width <= search * H (maxRange / 2)
    search_sigmas: float = 3.0  # window half-width <= search_sigmas * sigma_V (deform_ratio)
    init_spread: float = 0.15  # sigma_V at the start and delta without parents, * H (init_delta)
    evidence_sigma: float = 0.025  # evidence Gaussian, * H (map_delta)
    tau: float = 0.1  # competition floor, share of the mean geometric mass (validTau)
    compete: bool = True  # False: r = g / (g + tau), each node as if its filter had no other, for comparison
    parents: int = 15  # N: parents per node (topN)
    parent_candidates: int = 600  # M: candidate parents kept by total score (topM)
    stable_share: float = 0.5  # share of upper nodes whose position varies least, never parents (minVarRate)
    border: float = 0.1  # upper nodes whose mean position is nearer the border than border * H (edgeCutRate)
    relink_every: int = 1  # re-choose the parents every this many iterations (the reference: every one)
    chunk: int = 32  # images per E-step block
    seed: int = 0  # initial node positions

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GraphLayer:
    """One layer of a mined graph. Node arrays are filter-major: node ``f * n_f + j`` is filter f's j-th."""

    name: str
    map_size: tuple[int, int]
    stride: tuple[float, float]  # input pixels per map cell (rows, columns)
    nodes_per_filter: int
    mu: torch.Tensor  # n x 2, cells
    sigma: torch.Tensor  # n, cells
    parents: torch.Tensor | None = None  # n x N, indices into the next layer's nodes (None: top layer)
    mean_position: torch.Tensor | None = None  # n x 2, cells: mean inferred position over the mined images
    score_scale: float = 1.0  # the raw scores' mean over nodes and mined images (scores are divided by it)
    scores: torch.Tensor | None = None  # n x N, normalised scores S (mean 1 over the mined images)
    positions: torch.Tensor | None = None  # n x N x 2, cells
    peaks: torch.Tensor | None = None  # n x N, g e at the inferred position (raw, for the links)

    @property
    def num_filters(self) -> int:
        return int(self.mu.shape[0]) // int(self.nodes_per_filter)

    @property
    def num_nodes(self) -> int:
        return int(self.mu.shape[0])

    @property
    def filter(self) -> torch.Tensor:
        return torch.arange(self.num_nodes, device=self.mu.device) // int(self.nodes_per_filter)

    @property
    def rho(self) -> float:
        return self.nodes_per_filter / float(self.map_size[0] * self.map_size[1])

    def to_pixels(self, cells: torch.Tensor) -> torch.Tensor:
        """Map cells ``(..., 2)`` to input pixels: ``(cell + 0.5) * stride - 0.5`` per axis."""
        stride = torch.tensor(self.stride, dtype=cells.dtype, device=cells.device)
        return (cells + 0.5) * stride - 0.5

    def positions_px(self) -> torch.Tensor:
        return self.to_pixels(self.positions)


@dataclass
class ExplanatoryGraph:
    """The mined graph: layers bottom to top, the settings and what the mining cost."""

    layers: list[GraphLayer]
    image_size: tuple[int, int]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    num_images: int = 0

    def layer(self, name: str) -> GraphLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise CsgError(f"the graph has no layer {name!r}; layers: {', '.join(x.name for x in self.layers)}")


# ------------------------------------------------------------------------------------------------
# small pieces with formulas
# ------------------------------------------------------------------------------------------------
def filter_node_count(map_size: Sequence[int], rho: float) -> int:
    """``ceil(H * W * rho)`` (``initializeModel.m``), at least 1."""
    if not rho > 0:
        raise CsgError(f"rho (nodes per map cell) must be positive, got {rho}")
    return max(1, int(math.ceil(int(map_size[0]) * int(map_size[1]) * float(rho) - 1e-9)))


def normal_pdf(x: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """``N(x; 0, sd) = exp(-x^2 / (2 sd^2)) / (sqrt(2 pi) sd)``."""
    return torch.exp(-0.5 * (x / sd) ** 2) / (math.sqrt(2 * math.pi) * sd)


def search_radius(sigma: torch.Tensor, side: int, settings: MiningSettings) -> torch.Tensor:
    """Window half-width ``R = round(min(search * H, search_sigmas * sigma))`` in cells."""
    limit = torch.full_like(sigma, settings.search * side)
    return torch.round(torch.minimum(limit, settings.search_sigmas * sigma))


def candidate_offsets(radius: torch.Tensor, count: int) -> torch.Tensor:
    """``(..., P)`` offsets: the centres of P equal bins of ``[-R, R]``, ``-R + (2k + 1) R / P``."""
    k = torch.arange(count, dtype=radius.dtype, device=radius.device)
    return radius[..., None] * ((2 * k + 1) / count - 1)


def spread_limits(map_size: Sequence[int], npf: int) -> tuple[float, float]:
    """``sigma_V`` lies in ``[0.1, 1] * sqrt(H W / n_f)`` cells (``max_delta = 1 / sqrt(rho H^2)`` of H)."""
    spacing = math.sqrt(map_size[0] * map_size[1] / npf)
    return 0.1 * spacing, spacing


def initial_nodes(num_filters: int, npf: int, map_size: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """``K * n_f x 2`` initial positions: for each filter, ``n_f`` distinct random cells (n_f > H W repeats)."""
    h, w = int(map_size[0]), int(map_size[1])
    order = torch.rand(num_filters, h * w, generator=generator).argsort(dim=1)
    cells = order[:, torch.arange(npf) % (h * w)]
    return torch.stack([cells // w, cells % w], dim=-1).reshape(-1, 2).to(torch.float32)


def _sample(maps: torch.Tensor, qh: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """Bilinear read of ``maps`` (B x K x C x H x W) at the candidate grid ``(qh[..., i], qw[..., j])``
    (B x K x n_f x P each, cells), zero off the map. Returns B x C x K x n_f x P x P: all C maps are read
    with one grid."""
    b, k, c, h, w = maps.shape
    _, _, nf, p = qh.shape
    # grid_sample's (x, y) in [-1, 1] with align_corners=True: cell 0 -> -1, cell H-1 -> 1
    y = qh * (2.0 / max(h - 1, 1)) - 1.0
    x = qw * (2.0 / max(w - 1, 1)) - 1.0
    grid = torch.stack([x[..., None, :].expand(b, k, nf, p, p), y[..., :, None].expand(b, k, nf, p, p)], dim=-1)
    out = F.grid_sample(maps.reshape(b * k, c, h, w), grid.reshape(b * k, nf * p * p, 1, 2),
                        mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(b, k, c, nf, p, p).transpose(1, 2)


def _window_pdf(centre: torch.Tensor, spread: torch.Tensor, radius: torch.Tensor, size: int,
                pad: int) -> torch.Tensor:
    """``exp(-(t - c)^2 / (2 delta^2))`` over the cells t = -pad..size+pad-1, zero where ``|t - c| > R`` or t
    is off the map (``pad >= R + 1``).

    ``centre``, ``spread``: B x K x n_f; ``radius``: K x n_f. Returns B x K x n_f x (size + 2 pad), no
    normaliser. Only the ``2 pad`` cells around each centre are computed and scattered into zeros.
    """
    b, k, nf = centre.shape
    span = torch.arange(2 * pad, device=centre.device)
    base = torch.floor(centre).long() - (pad - 1)  # first cell of each window
    cells = base[..., None] + span  # B x K x nf x 2pad
    diff = cells.to(centre.dtype) - centre[..., None]
    vals = diff.square().mul_((-0.5 / spread.square())[..., None]).exp_()
    off = (diff.abs_() > radius[..., None]) | (cells < 0) | (cells >= size)
    vals.masked_fill_(off, 0.0)
    out = torch.zeros(b, k, nf, size + 2 * pad, dtype=centre.dtype, device=centre.device)
    # cells off the padded range carry zeros; clamping sends them to the padding, which is never read
    return out.scatter_(-1, (cells + pad).clamp_(0, size + 2 * pad - 1), vals)


# ------------------------------------------------------------------------------------------------
# the E-step
# ------------------------------------------------------------------------------------------------
@dataclass
class EStep:
    """What one E-step over a chunk of B images gives; node arrays are ``K x n_f``."""

    scores: torch.Tensor  # K x n_f x B: S = sum_d g e (raw)
    positions: torch.Tensor  # K x n_f x B x 2: q at argmax_d g e
    peaks: torch.Tensor  # K x n_f x B: max_d g e
    sum_w: torch.Tensor  # K x n_f: sum over images and d of w = r e
    sum_wd: torch.Tensor  # K x n_f x 2: sum of w d / delta^2
    sum_ge: torch.Tensor  # K x n_f: sum of g e
    sum_ge_d2: torch.Tensor  # K x n_f: sum of g e |d|^2
    min_spread: float  # min over nodes and images of delta


def e_step(evidence: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, shift: torch.Tensor | None,
           spread: torch.Tensor | float, weight: torch.Tensor | float, settings: MiningSettings) -> EStep:
    """One E-step of every node on a chunk of images (see the module docstring for the formulas).

    ``evidence`` B x K x H x W; ``mu`` K x n_f x 2 and ``sigma`` K x n_f (cells); ``shift`` K x n_f x B x 2
    (the parents' displacement m, or None for 0), ``spread`` (delta) and ``weight`` (lambda) K x n_f x B
    tensors or scalars. The geometric term is separable, ``g = lambda gh(d_h) gh(d_w)``, so every sum over
    the P x P candidates that does not involve the evidence is taken axis by axis.
    """
    b, k, h, w = evidence.shape
    _, nf, _ = mu.shape
    side = min(h, w)
    p = max(1, min(int(settings.candidates), h, w))
    dev, dt = evidence.device, evidence.dtype
    # B x K x n_f layout throughout, the layout grid_sample reads and writes
    spread = torch.as_tensor(spread, dtype=dt, device=dev).expand(k, nf, b).permute(2, 0, 1)
    weight = torch.as_tensor(weight, dtype=dt, device=dev).expand(k, nf, b).permute(2, 0, 1)
    radius = search_radius(sigma, side, settings)  # K x nf
    offs = candidate_offsets(radius, p)  # K x nf x P
    centre = mu[None].expand(b, k, nf, 2)
    if shift is not None:
        centre = centre + shift.permute(2, 0, 1, 3)
    qh = centre[..., 0, None] + offs  # B x K x nf x P
    qw = centre[..., 1, None] + offs
    gh = normal_pdf(offs, spread[..., None])  # B x K x nf x P, the same pdf on both axes
    gl = gh * weight[..., None]
    g = gl[..., :, None] * gh[..., None, :]  # B x K x nf x P x P
    if settings.compete:
        # D: each node's geometric term drawn over its own window, summed over the filter's nodes, on the map
        # padded by `pad` cells; the evidence is padded alike (zeros, as off the map) so one grid reads both
        pad = int(radius.max()) + 1
        norm = weight / (2 * math.pi * spread.square())
        ah = _window_pdf(centre[..., 0], spread, radius, h, pad)
        aw = _window_pdf(centre[..., 1], spread, radius, w, pad).mul_(norm[..., None])
        maps = evidence.new_zeros(b, k, 2, h + 2 * pad, w + 2 * pad)
        maps[:, :, 0, pad:pad + h, pad:pad + w] = evidence
        maps[:, :, 1] = torch.einsum("bkvh,bkvw->bkhw", ah, aw)
        both = _sample(maps, qh + pad, qw + pad)
        e, den = both[:, 0], both[:, 1]
        ge = g.mul_(e)
        tau = settings.tau * (gl.sum(-1) * gh.sum(-1)).mean(dim=(1, 2))  # per image: tau_share * mean_V sum_d g
        wgt = ge / den.add_(tau[:, None, None, None, None]).clamp_min_(1e-12)  # w = r e = g e / (D + tau)
    else:  # each node as if alone: D is its own g
        e = _sample(evidence[:, :, None], qh, qw)[:, 0]
        tau = settings.tau * (gl.sum(-1) * gh.sum(-1)).mean(dim=(1, 2))
        ge = g * e
        wgt = ge / g.add_(tau[:, None, None, None, None]).clamp_min_(1e-12)
    peaks, best = ge.reshape(b, k, nf, p * p).max(dim=-1)
    positions = torch.stack([qh.gather(-1, (best // p)[..., None])[..., 0],
                             qw.gather(-1, (best % p)[..., None])[..., 0]], dim=-1)
    ge_h, ge_w = ge.sum(-1), ge.sum(-2)  # B x K x nf x P: marginals over the other axis
    w_h, w_w = wgt.sum(-1), wgt.sum(-2)
    inv_var = spread.square().reciprocal()
    sum_wd = torch.stack([((w_h * offs).sum(-1) * inv_var).sum(0), ((w_w * offs).sum(-1) * inv_var).sum(0)], -1)
    scores = ge_h.sum(-1)  # B x K x nf
    sum_ge_d2 = ((ge_h * offs.square()).sum(-1) + (ge_w * offs.square()).sum(-1)).sum(0)
    return EStep(scores=scores.permute(1, 2, 0), positions=positions.permute(1, 2, 0, 3),
                 peaks=peaks.permute(1, 2, 0), sum_w=w_h.sum(dim=(0, 3)), sum_wd=sum_wd, sum_ge=scores.sum(0),
                 sum_ge_d2=sum_ge_d2, min_spread=float(spread.min()))


# ------------------------------------------------------------------------------------------------
# parents
# ------------------------------------------------------------------------------------------------
def parent_candidates(upper: GraphLayer, settings: MiningSettings) -> torch.Tensor:
    """Indices of the upper nodes that may be parents (``getCurDistribution.m``): not among the
    ``stable_share`` whose inferred position varies least over the images, not with a mean position
    nearer the map border than ``border * H``, then the ``parent_candidates`` highest total scores."""
    pos = upper.positions  # m x N x 2
    m = pos.shape[0]
    variance = pos.var(dim=1, unbiased=True).sum(-1) if pos.shape[1] > 1 else torch.zeros(m, device=pos.device)
    keep = torch.ones(m, dtype=torch.bool, device=pos.device)
    n_stable = int(math.ceil(m * settings.stable_share))
    if n_stable:
        keep[torch.argsort(variance, stable=True)[:n_stable]] = False
    h, w = upper.map_size
    mean = pos.mean(dim=1)
    to_border = torch.minimum(torch.minimum(mean[:, 0] + 0.5, h - 0.5 - mean[:, 0]),
                              torch.minimum(mean[:, 1] + 0.5, w - 0.5 - mean[:, 1]))
    keep &= to_border >= settings.border * min(h, w)
    total = upper.scores.sum(dim=1)
    total = torch.where(keep, total, torch.tensor(-float("inf"), device=total.device))
    order = torch.argsort(total, descending=True, stable=True)
    order = order[keep[order]]
    if order.numel() == 0:  # every node filtered out (tiny maps): fall back on the total score alone
        order = torch.argsort(upper.scores.sum(dim=1), descending=True, stable=True)
    return order[: int(settings.parent_candidates)]


def link_parents(child_dp: torch.Tensor, child_peaks: torch.Tensor, upper_dp: torch.Tensor, candidates: torch.Tensor,
                 num_parents: int) -> torch.Tensor:
    """Each child node's parents: the ``num_parents`` candidates U maximising
    ``sum_I peak_V^I exp(-||dp_V^I - dp_U^I||^2 / (2 mean_{U,I} ||dp_V^I - dp_U^I||^2))``.

    ``child_dp`` n x N x 2 and ``upper_dp`` m x N x 2 are displacements from the mean over the images, in
    input pixels; ``child_peaks`` n x N the child's ``g e`` at its inferred position; ``candidates``
    indices into the m upper nodes. Returns n x num_parents indices into the upper nodes, best first.
    """
    n, num_images, _ = child_dp.shape
    cand = upper_dp[candidates]  # M x N x 2
    m = cand.shape[0]
    keep = min(int(num_parents), m)
    out = torch.empty(n, keep, dtype=torch.int64, device=child_dp.device)
    # ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b, and its mean over (U, I) in closed form per child (the scale s)
    cand_h, cand_w = cand[..., 0].contiguous(), cand[..., 1].contiguous()  # M x N
    cand_sq = cand.square().sum(-1)  # M x N
    child_sq = child_dp.square().sum(-1)  # n x N
    scale = 2.0 * (child_sq.mean(1) + cand_sq.mean() - 2.0 * (child_dp * cand.mean(0)).sum(-1).mean(1))
    inv = scale.clamp_min(1e-12).reciprocal()  # n
    a2 = child_dp * (2.0 * inv)[:, None, None]  # n x N x 2
    a_sq = child_sq * inv[:, None]  # n x N: |a|^2 / s
    step = max(1, LINK_BUDGET // max(m * num_images, 1))
    for start in range(0, n, step):  # blocks of child nodes bound the c x M x N tensor (and keep it in cache)
        sl = slice(start, min(n, start + step))
        expo = a2[sl, None, :, 0] * cand_h  # c x M x N
        expo.addcmul_(a2[sl, None, :, 1].expand_as(expo), cand_w.expand_as(expo))
        expo.addcmul_(cand_sq.expand_as(expo), (-inv[sl])[:, None, None].expand_as(expo))
        expo.sub_(a_sq[sl, None, :]).clamp_max_(0.0).exp_()  # -||a - b||^2 / s <= 0 (clamp: rounding)
        affinity = torch.einsum("cmn,cn->cm", expo, child_peaks[sl])
        out[sl] = candidates[torch.topk(affinity, keep, dim=1).indices]
    return out


def parent_priors(parent_dp: torch.Tensor, parent_sigma: torch.Tensor, parents: torch.Tensor,
                  child_stride: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prior a node's parents give it on each image: ``(m, delta, lambda)``.

    With parents U (displacements ``dp_U^I`` from their mean position and spreads ``sigma_U``, both in
    input pixels)::

        m      = sum_U sigma_U^-2 dp_U / sum_U sigma_U^-2
        delta  = (mean_U sigma_U^-2)^(-1/2)
        lambda = delta * geomean_U(1 / sigma_U) * exp(-mean_U ||m - dp_U||^2 / (2 sigma_U^2))

    ``m`` and ``delta`` are returned in the child's cells (pixels / ``child_stride``), so a parent that
    moves by d input pixels moves its child's prior by d input pixels whatever the two layers' strides
    (the reference code adds the upper layer's cells unscaled). ``lambda`` is 1 when the parents agree
    and have equal spreads (the reference code multiplies the N factors ``1 / sigma_U`` instead of
    taking their geometric mean, which ties lambda's scale to N and the units).

    ``parent_dp`` m x B x 2, ``parent_sigma`` m, ``parents`` n x N. Returns n x B x 2, n x B, n x B.
    """
    dp = parent_dp[parents]  # n x N x B x 2
    sig = parent_sigma[parents]  # n x N
    prec = sig.pow(-2)[..., None]  # n x N x 1
    shift = (prec[..., None] * dp).sum(1) / prec.sum(1)[..., None]  # n x B x 2
    spread = prec.mean(1).rsqrt()  # n x 1
    disagreement = (((shift[:, None] - dp) ** 2).sum(-1) / (2 * sig[..., None] ** 2)).mean(1)  # n x B
    weight = spread * torch.exp(-torch.log(sig).mean(1, keepdim=True)) * torch.exp(-disagreement)
    stride = torch.tensor([float(s) for s in child_stride], dtype=dp.dtype, device=dp.device)
    mean_stride = float(math.sqrt(float(child_stride[0]) * float(child_stride[1])))
    return shift / stride, (spread / mean_stride).expand_as(weight).contiguous(), weight


# ------------------------------------------------------------------------------------------------
# one layer
# ------------------------------------------------------------------------------------------------
class _Chunks:
    """Image blocks of one layer's evidence, converted to float32 on the compute device one at a time."""

    def __init__(self, evidence: torch.Tensor, chunk: int, device):
        self.evidence, self.chunk, self.device = evidence, max(1, int(chunk)), torch.device(device)

    def __len__(self) -> int:
        return (self.evidence.shape[0] + self.chunk - 1) // self.chunk

    def __iter__(self):
        for start in range(0, self.evidence.shape[0], self.chunk):
            sl = slice(start, min(self.evidence.shape[0], start + self.chunk))
            yield sl, self.evidence[sl].to(self.device, torch.float32)


def _upper_context(upper: GraphLayer | None):
    if upper is None:
        return None
    dp = upper.to_pixels(upper.positions) - upper.to_pixels(upper.mean_position)[:, None]  # m x N x 2 px
    sigma_px = upper.sigma * float(math.sqrt(upper.stride[0] * upper.stride[1]))
    return dp, sigma_px


def infer_layer(layer: GraphLayer, evidence: torch.Tensor, upper: GraphLayer | None, settings: MiningSettings,
                *, device="cpu", tick: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Scores, positions and peaks of a layer's fixed nodes on images (no M-step).

    ``upper`` carries its positions on the same images (``upper.positions``) when the layer has parents.
    Returns ``{"scores" (raw), "positions", "peaks"}``, node-major (n x N ...).
    """
    k, nf = layer.num_filters, layer.nodes_per_filter
    mu = layer.mu.to(device).reshape(k, nf, 2)
    sigma = layer.sigma.to(device).reshape(k, nf)
    ctx = _upper_context(upper) if layer.parents is not None else None
    outs = []
    for sl, ev in _Chunks(evidence, settings.chunk, device):
        prior = _prior(layer, ctx, sl, settings, ev.shape[2:], device)
        outs.append(e_step(ev, mu, sigma, *prior, settings))
        if tick is not None:
            tick()
    n = k * nf
    return {"scores": torch.cat([o.scores.reshape(n, -1) for o in outs], 1),
            "positions": torch.cat([o.positions.reshape(n, -1, 2) for o in outs], 1),
            "peaks": torch.cat([o.peaks.reshape(n, -1) for o in outs], 1)}


def _prior(layer: GraphLayer, ctx, sl: slice, settings: MiningSettings, map_size, device):
    """(shift, spread, weight) for a chunk: from the parents, or the default prior."""
    k, nf = layer.num_filters, layer.nodes_per_filter
    if ctx is None or layer.parents is None:
        return None, settings.init_spread * min(map_size), 1.0
    dp, sigma_px = ctx
    shift, spread, weight = parent_priors(dp[:, sl].to(device), sigma_px.to(device), layer.parents.to(device),
                                          layer.stride)
    b = shift.shape[1]
    return (shift.reshape(k, nf, b, 2), spread.reshape(k, nf, b), weight.reshape(k, nf, b))


def mine_layer(name: str, evidence: torch.Tensor, npf: int, stride: Sequence[float], settings: MiningSettings, *,
               upper: GraphLayer | None = None, init_mu: torch.Tensor | None = None, device="cpu",
               generator: torch.Generator | None = None, tick: Callable[[], None] | None = None) -> GraphLayer:
    """Mine one layer's nodes on ``evidence`` (N x K x H x W) with the layer above (``upper``, already
    mined on the same images) fixed; ``settings.iterations`` E/M rounds, then a final E-step for the
    records. ``init_mu`` (K * n_f x 2 cells) overrides the seeded random distinct cells."""
    num_images, k, h, w = evidence.shape
    if generator is None:
        generator = torch.Generator().manual_seed(int(settings.seed))
    mu = (init_mu.to(torch.float32).clone() if init_mu is not None
          else initial_nodes(k, npf, (h, w), generator)).to(device)
    if mu.shape != (k * npf, 2):
        raise CsgError(f"init_mu must be {k * npf} x 2 (filters x nodes per filter), got {tuple(mu.shape)}")
    lo, hi = spread_limits((h, w), npf)
    layer = GraphLayer(name=name, map_size=(h, w), stride=(float(stride[0]), float(stride[1])), nodes_per_filter=npf,
                       mu=mu, sigma=torch.full((k * npf,), settings.init_spread * min(h, w), device=device))
    ctx = _upper_context(upper)
    last = None  # the previous E-step's positions and peaks, for linking
    chunks = _Chunks(evidence, settings.chunk, device)
    for it in range(1, int(settings.iterations) + 2):
        final = it == settings.iterations + 1
        if ctx is not None and it > 1:
            if layer.parents is None or (it - 2) % max(1, int(settings.relink_every)) == 0:
                child_dp = layer.to_pixels(last["positions"]) - layer.to_pixels(last["positions"].mean(1))[:, None]
                layer.parents = link_parents(child_dp, last["peaks"], ctx[0].to(device),
                                             parent_candidates(upper, settings).to(device), settings.parents)
        use_parents = ctx is not None and it > 1
        mu3, sigma2 = layer.mu.reshape(k, npf, 2), layer.sigma.reshape(k, npf)
        acc = None
        rec = {"scores": [], "positions": [], "peaks": []}
        min_spread = math.inf
        for sl, ev in chunks:
            prior = _prior(layer, ctx if use_parents else None, sl, settings, (h, w), device)
            out = e_step(ev, mu3, sigma2, *prior, settings)
            min_spread = min(min_spread, out.min_spread)
            part = (out.sum_w, out.sum_wd, out.sum_ge, out.sum_ge_d2)
            acc = part if acc is None else tuple(a + b for a, b in zip(acc, part))
            rec["scores"].append(out.scores.reshape(k * npf, -1))
            rec["positions"].append(out.positions.reshape(k * npf, -1, 2))
            rec["peaks"].append(out.peaks.reshape(k * npf, -1))
            if tick is not None:
                tick()
        last = {key: torch.cat(v, 1) for key, v in rec.items()}
        if final:
            break
        sum_w, sum_wd, sum_ge, sum_ge_d2 = (a.reshape(k * npf, *a.shape[2:]) for a in acc)
        step = (min_spread / it ** 0.25) ** 2
        layer.mu = layer.mu + step * sum_wd / sum_w.clamp_min(1e-12)[:, None]
        layer.mu = torch.stack([layer.mu[:, 0].clamp(0, h - 1), layer.mu[:, 1].clamp(0, w - 1)], dim=1)
        rms = torch.sqrt(sum_ge_d2 / sum_ge.clamp_min(1e-12))
        layer.sigma = torch.where(sum_ge > 0, rms, layer.sigma).clamp(lo, hi)
    scale = float(last["scores"].mean())
    layer.score_scale = scale if scale > 0 else 1.0
    layer.scores = last["scores"] / layer.score_scale
    layer.positions = last["positions"]
    layer.peaks = last["peaks"]
    layer.mean_position = layer.positions.mean(1)
    return layer


# ------------------------------------------------------------------------------------------------
# the whole graph
# ------------------------------------------------------------------------------------------------
def mine_graph(evidence: Sequence[torch.Tensor], strides: Sequence[Sequence[float]], *,
               names: Sequence[str] | None = None, rho: Sequence[float] | None = None,
               nodes_per_filter: Sequence[int] | int | None = None, image_size: Sequence[int] | None = None,
               settings: MiningSettings | None = None, device="cpu", progress: bool = False,
               max_seconds: float | None = None, on_estimate: Callable[[float], None] | None = None
               ) -> ExplanatoryGraph:
    """Mine the explanatory graph over layers given bottom to top, from the top layer down.

    ``evidence[L]`` is N x K_L x H_L x W_L (see :func:`csg.graph.features.prepare_layers`), ``strides[L]``
    the input pixels per cell. Nodes per filter: ``nodes_per_filter`` (one number or one per layer), else
    ``ceil(H W rho_L)`` with ``rho`` (default :data:`DEFAULT_RHO`). One chunk of every layer is timed
    first; ``on_estimate(seconds)`` hears the estimate, and an estimate above ``max_seconds`` raises
    :class:`CsgError` before the long work starts.
    """
    settings = settings or MiningSettings()
    layers_n = len(evidence)
    if layers_n < 1:
        raise CsgError("no layers to mine; give at least one layer's maps")
    if len(strides) != layers_n:
        raise CsgError(f"{len(strides)} strides for {layers_n} layers; give one per layer")
    if settings.iterations < 1 or settings.chunk < 1 or settings.candidates < 1:
        raise CsgError("iterations, chunk and candidates must be at least 1")
    num_images = int(evidence[0].shape[0])
    if any(int(e.shape[0]) != num_images for e in evidence):
        raise CsgError("every layer's maps must cover the same images")
    names = list(names) if names is not None else [f"layer{i}" for i in range(layers_n)]
    if nodes_per_filter is not None:
        npfs = [int(nodes_per_filter)] * layers_n if isinstance(nodes_per_filter, int) else [int(x) for x in
                                                                                           nodes_per_filter]
    else:
        rho = list(rho) if rho is not None else list(DEFAULT_RHO.get(layers_n, (0.1,) * layers_n))
        if len(rho) != layers_n:
            raise CsgError(f"{len(rho)} rho values for {layers_n} layers; give one per layer")
        npfs = [filter_node_count(e.shape[2:], r) for e, r in zip(evidence, rho)]
    if len(npfs) != layers_n or min(npfs) < 1:
        raise CsgError(f"nodes per filter must be one positive number per layer, got {npfs}")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(int(settings.seed))
    chunks_per_layer = (num_images + settings.chunk - 1) // settings.chunk

    # one timed chunk per layer with fresh nodes, and one timed block of links: the estimate before the long work
    estimate = 0.0
    for li, (e, npf) in enumerate(zip(evidence, npfs)):
        _, k, h, w = e.shape
        mu = initial_nodes(k, npf, (h, w), torch.Generator().manual_seed(0)).to(device).reshape(k, npf, 2)
        sig = torch.full((k, npf), settings.init_spread * min(h, w), device=device)
        ev = e[: settings.chunk].to(device, torch.float32)
        t0 = time.perf_counter()
        e_step(ev, mu, sig, None, settings.init_spread * min(h, w), 1.0, settings)
        estimate += (time.perf_counter() - t0) * num_images / ev.shape[0] * (settings.iterations + 1)
        if li + 1 < layers_n:  # the layer below this one links to it
            n_child = k * npf
            n_cand = min(int(settings.parent_candidates), int(evidence[li + 1].shape[1]) * npfs[li + 1])
            block = min(n_child, 64)
            dummy = torch.rand(max(block, n_cand), num_images, 2, device=device)
            t0 = time.perf_counter()
            link_parents(dummy[:block], dummy[:block, :, 0], dummy, torch.arange(n_cand, device=device),
                         settings.parents)
            links = (int(settings.iterations) - 1) // max(1, int(settings.relink_every)) + 1  # it = 2..iterations+1
            estimate += (time.perf_counter() - t0) * n_child / block * links
    if on_estimate is not None:
        on_estimate(estimate)
    if max_seconds is not None and estimate > max_seconds:
        raise CsgError(f"mining is estimated at {estimate / 60:.1f} min, over the limit of {max_seconds / 60:.1f} "
                       "min; lower the images, iterations or nodes per filter (or raise the limit)")

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=layers_n * chunks_per_layer * (settings.iterations + 1), desc="mining graph", leave=False)
    tick = (lambda: bar.update(1)) if bar is not None else None
    mined: list[GraphLayer | None] = [None] * layers_n
    try:
        for li in range(layers_n - 1, -1, -1):
            if bar is not None:
                bar.set_description(f"mining {names[li]}")
            mined[li] = mine_layer(names[li], evidence[li], npfs[li], strides[li], settings,
                                   upper=mined[li + 1] if li + 1 < layers_n else None, device=device,
                                   generator=generator, tick=tick)
    finally:
        if bar is not None:
            bar.close()
    if image_size is None:
        h0, w0 = evidence[0].shape[2:]
        image_size = (int(round(h0 * strides[0][0])), int(round(w0 * strides[0][1])))
    cfg = settings.to_dict()
    cfg["nodes_per_filter"] = npfs
    return ExplanatoryGraph(layers=list(mined), image_size=(int(image_size[0]), int(image_size[1])), settings=cfg,
                            seconds=time.perf_counter() - start, num_images=num_images)


def infer_graph(graph: ExplanatoryGraph, evidence: Sequence[torch.Tensor], *, device="cpu",
                settings: MiningSettings | None = None) -> list[dict[str, torch.Tensor]]:
    """Scores (normalised by each layer's mined scale), positions (cells) and peaks of every node of a mined
    graph on new images, top-down with the parents' inferred positions. One dict per layer, bottom to top."""
    if len(evidence) != len(graph.layers):
        raise CsgError(f"{len(evidence)} layers of maps for a graph of {len(graph.layers)} layers")
    settings = settings or MiningSettings(**{k: v for k, v in graph.settings.items()
                                             if k in MiningSettings.__dataclass_fields__})
    results: list[dict | None] = [None] * len(graph.layers)
    upper_view = None
    for li in range(len(graph.layers) - 1, -1, -1):
        layer = graph.layers[li]
        res = infer_layer(layer, evidence[li], upper_view, settings, device=device)
        res["scores"] = res["scores"] / layer.score_scale
        results[li] = res
        # the upper view of this layer for the one below: fixed nodes, positions on the new images
        upper_view = GraphLayer(name=layer.name, map_size=layer.map_size, stride=layer.stride,
                                nodes_per_filter=layer.nodes_per_filter, mu=layer.mu, sigma=layer.sigma,
                                parents=layer.parents, mean_position=layer.mean_position,
                                positions=res["positions"])
    return results


def graph_arrays(graph: ExplanatoryGraph) -> dict[str, np.ndarray]:
    """Every array of the graph for ``graph.npz``: per layer L, ``L{i}_filter``, ``_mu``, ``_sigma``,
    ``_parents`` (-1 padded; absent at the top), ``_mean_position``, ``_scores``, ``_positions`` (cells)."""
    out: dict[str, np.ndarray] = {}
    for i, lay in enumerate(graph.layers):
        pre = f"L{i}_"
        out[pre + "filter"] = lay.filter.cpu().numpy().astype(np.int32)
        out[pre + "mu"] = lay.mu.cpu().numpy().astype(np.float32)
        out[pre + "sigma"] = lay.sigma.cpu().numpy().astype(np.float32)
        if lay.parents is not None:
            out[pre + "parents"] = lay.parents.cpu().numpy().astype(np.int32)
        out[pre + "mean_position"] = lay.mean_position.cpu().numpy().astype(np.float32)
        out[pre + "scores"] = lay.scores.cpu().numpy().astype(np.float32)
        out[pre + "positions"] = lay.positions.cpu().numpy().astype(np.float32)
    return out
