"""The interpretable-CNN filter loss (Zhang, Wu, Zhu, CVPR 2018; METHOD.md section 7).

For every filter of one conv layer, with an ``H x W`` map ``x`` (``L = H*W``
positions; ``n = H = W`` for square maps):

* distance ``d(p, mu) = |p_r - mu_r| / H + |p_c - mu_c| / W`` (``= ||p - mu||_1 / n``
  for square maps; per-axis normalisation for ``H != W``);
* shape ``S_mu[p] = max(1 - beta * d(p, mu), -1)``;
* mask (forward pass, training): ``mu = argmax x``, ``x_masked = relu(x * S_mu)``;
* templates: ``T_mu = tau * S_mu`` for every position mu, ``T- = -tau``;
  ``tau = 0.5 / L``; priors ``p(T_mu) = alpha / L``, ``p(T-) = 1 - alpha``,
  ``alpha = L / (1 + L)`` (all ``L + 1`` templates equally likely);
* likelihood over the mini-batch ``p(x | T) = exp(tr(x . T)) / Z_T``,
  ``Z_T = sum_{x' in batch} exp(tr(x' . T))``; ``p(x) = sum_T p(T) p(x | T)``;
* loss per filter ``-MI(X; T) = -sum_T p(T) sum_x p(x|T) log(p(x|T) / p(x))``.

Each filter is assigned the category whose images activate it most (a running
estimate, see :class:`ICNNState`), and only images of that category are scored
against the positive templates: for an image of another category
``p(x | T_mu) = 0`` (so ``Z_{T_mu}`` sums over the filter's category only) and it
is scored against ``T-`` alone, as in Zhang et al.'s multi-category setting and
the reference code (positive gradients for the filter's class, negative
gradients for the rest). A filter whose category has no image in the batch has
no support for its positive templates; their prior is then moved onto ``T-``,
which leaves a single template and ``MI = 0`` (no loss, no gradient) for that
filter in that batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import CsgError
from ..core.hooks import resolve_module
from ..core.inference import eval_batches
from ..core.model import GatedClassifier, unwrap
from .base import MethodConfig, StepOutput, TrainingMethod

ICNN = "icnn"
# Stand-in for log(0): finite, so that masked entries never produce inf - inf = nan
# in the forward pass or the gradient (exp of it is exactly 0 in float32).
_NEG = -1e30
# Weight of the current batch in the running per-class activation (the reference
# code keeps 0.9 of the old value).
ICNN_MOMENTUM = 0.1

_SHAPE_CACHE: dict[tuple[int, int, float, str, torch.dtype], torch.Tensor] = {}


def icnn_template_shapes(height: int, width: int, beta: float = 4.0, *, device=None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``S`` of shape ``(L, H, W)``: ``S[mu, p] = max(1 - beta * d(p, mu), -1)`` for every position mu.

    ``mu`` runs over positions in row-major order (``mu = r * W + c``), the order of
    ``x.flatten()``. Built once per (H, W, beta, device, dtype) and cached.
    """
    device = torch.device(device if device is not None else "cpu")
    key = (int(height), int(width), float(beta), str(device), dtype)
    shapes = _SHAPE_CACHE.get(key)
    if shapes is None:
        rows = torch.arange(height, dtype=torch.float64)
        cols = torch.arange(width, dtype=torch.float64)
        pr, pc = torch.meshgrid(rows, cols, indexing="ij")
        pr, pc = pr.reshape(-1), pc.reshape(-1)
        # dist[mu, p] = |p_r - mu_r| / H + |p_c - mu_c| / W
        dist = (pr[None, :] - pr[:, None]).abs() / height + (pc[None, :] - pc[:, None]).abs() / width
        shapes = (1.0 - beta * dist).clamp(min=-1.0).reshape(height * width, height, width)
        shapes = shapes.to(device=device, dtype=dtype)
        _SHAPE_CACHE[key] = shapes
    return shapes


def icnn_templates(height: int, width: int | None = None, beta: float = 4.0, tau: float | None = None, *,
                   device=None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The positive templates ``T_mu = tau * S_mu`` (``L x H x W``) and the negative ``T- = -tau`` (``H x W``)."""
    width = height if width is None else width
    tau = default_tau(height, width) if tau is None else float(tau)
    shapes = icnn_template_shapes(height, width, beta, device=device, dtype=dtype)
    return tau * shapes, torch.full((height, width), -tau, device=shapes.device, dtype=dtype)


def default_tau(height: int, width: int) -> float:
    """``tau = 0.5 / L`` (``0.5 / n^2`` for an ``n x n`` map)."""
    return 0.5 / (height * width)


def default_alpha(height: int, width: int) -> float:
    """``alpha = L / (1 + L)``: all ``L + 1`` templates equally likely."""
    L = height * width
    return L / (1.0 + L)


def icnn_mask(x: torch.Tensor, beta: float = 4.0) -> torch.Tensor:
    """``relu(x * S_mu)`` with ``mu = argmax`` of each ``(image, filter)`` map; ``x`` is ``N x K x H x W``.

    The peak is kept (``S_mu[mu] = 1``) and activations far from it are
    suppressed; the argmax itself is not differentiated (as in the paper).
    """
    _check_maps(x)
    N, K, H, W = x.shape
    shapes = icnn_template_shapes(H, W, beta, device=x.device, dtype=x.dtype).reshape(H * W, H * W)
    mu = x.detach().reshape(N, K, H * W).argmax(dim=2)
    mask = shapes[mu].reshape(N, K, H, W)
    return F.relu(x * mask)


def icnn_filter_mi(x: torch.Tensor, labels: torch.Tensor, filter_classes: torch.Tensor, beta: float = 4.0,
                   tau: float | None = None, alpha: float | None = None) -> torch.Tensor:
    """``MI(X; T)`` of each filter over the mini-batch (a ``K`` vector, nats).

    ``x``: ``N x K x H x W`` maps (the loss uses them unmasked); ``labels``: ``N``;
    ``filter_classes``: ``K`` (the category of each filter). Computed in float32
    (float64 inputs stay float64) with log-sum-exp throughout, vectorised over
    images, filters and the ``L + 1`` templates.
    """
    _check_maps(x)
    N, K, H, W = x.shape
    L = H * W
    if labels.shape != (N,) or filter_classes.shape != (K,):
        raise CsgError(f"icnn: labels must have shape ({N},) and filter_classes ({K},); got "
                       f"{tuple(labels.shape)} and {tuple(filter_classes.shape)}")
    tau = default_tau(H, W) if tau is None else float(tau)
    alpha = default_alpha(H, W) if alpha is None else float(alpha)
    if not 0.0 < alpha < 1.0:
        raise CsgError(f"icnn: alpha (the total prior of the positive templates) must be in (0, 1), got {alpha}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(dtype).reshape(N, K, L)
    shapes = icnn_template_shapes(H, W, beta, device=x.device, dtype=dtype).reshape(L, L)
    s_pos = tau * (xf @ shapes.T)                       # N x K x L : tr(x . T_mu)
    s_neg = -tau * xf.sum(dim=2)                        # N x K     : tr(x . T-)
    eligible = labels.to(x.device)[:, None] == filter_classes.to(x.device)[None, :]   # N x K
    has_pos = eligible.any(dim=0)                       # K
    s_pos = torch.where(eligible[:, :, None], s_pos, torch.full_like(s_pos, _NEG))
    # log p(x | T): normalised over the batch images in each template's support
    ll_pos = s_pos - torch.logsumexp(s_pos, dim=0, keepdim=True)
    ll_neg = s_neg - torch.logsumexp(s_neg, dim=0, keepdim=True)
    # log p(T); a filter without images of its category keeps only T-
    lp_pos = torch.where(has_pos, torch.full((K,), math.log(alpha / L), dtype=dtype, device=x.device),
                         torch.full((K,), _NEG, dtype=dtype, device=x.device))
    lp_neg = torch.where(has_pos, torch.full((K,), math.log1p(-alpha), dtype=dtype, device=x.device),
                         torch.zeros(K, dtype=dtype, device=x.device))
    lj_pos = lp_pos[None, :, None] + ll_pos             # log p(T_mu) p(x | T_mu)
    lj_neg = lp_neg[None, :] + ll_neg                   # log p(T-) p(x | T-)
    log_px = torch.logsumexp(torch.cat([lj_pos, lj_neg[:, :, None]], dim=2), dim=2)   # N x K
    mi = (lj_pos.exp() * (ll_pos - log_px[:, :, None])).sum(dim=(0, 2)) \
        + (lj_neg.exp() * (ll_neg - log_px)).sum(dim=0)
    return mi


def icnn_filter_loss(x: torch.Tensor, labels: torch.Tensor, filter_classes: torch.Tensor, beta: float = 4.0,
                     tau: float | None = None, alpha: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, x_masked)``: the mean over filters of ``-MI(X; T)`` and the masked maps.

    Usable from any training loop: add ``weight * loss`` to the task loss and feed
    ``x_masked`` to the next layer in place of ``x``.
    """
    mi = icnn_filter_mi(x, labels, filter_classes, beta=beta, tau=tau, alpha=alpha)
    return -mi.mean(), icnn_mask(x, beta)


def _check_maps(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise CsgError(f"icnn: the layer's output must be N x K x H x W maps, got shape {tuple(x.shape)}; "
                       "choose a conv layer with --icnn-layer")


class ICNNState(nn.Module):
    """The filter-category assignment, kept as buffers so a checkpoint holds it.

    ``class_activation`` (``C x K``): running mean, per category, of each filter's
    spatially averaged activation (``mean_{x=f(I), I in I_c} mean_ij x_ij``,
    Zhang et al.'s criterion up to the constant ``L``); a category's first batch sets
    its row, later batches move it by ``ICNN_MOMENTUM``. ``observed`` (``C``)
    marks the categories seen so far. The filter's category is the argmax over
    observed categories.
    """

    def __init__(self, num_classes: int, num_filters: int):
        super().__init__()
        self.register_buffer("class_activation", torch.zeros(num_classes, num_filters))
        self.register_buffer("observed", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def num_filters(self) -> int:
        return self.class_activation.shape[1]

    def resize_(self, num_filters: int) -> None:
        C = self.class_activation.shape[0]
        self.class_activation = torch.zeros(C, num_filters, device=self.class_activation.device)
        self.observed = torch.zeros(C, dtype=torch.bool, device=self.observed.device)

    @torch.no_grad()
    def update_(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold a batch's per-category mean activations (all-reduced under torchrun) into the estimate."""
        C = self.class_activation.shape[0]
        act = x.detach().float().mean(dim=(2, 3))                       # N x K
        sums = torch.zeros(C, act.shape[1], device=act.device).index_add_(0, labels, act)
        counts = torch.bincount(labels, minlength=C).to(act.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        present = counts > 0
        batch_mean = sums / counts.clamp(min=1)[:, None]
        old = self.class_activation
        moved = torch.where(self.observed[:, None], (1 - ICNN_MOMENTUM) * old + ICNN_MOMENTUM * batch_mean,
                            batch_mean)
        self.class_activation.copy_(torch.where(present[:, None], moved, old))
        self.observed.logical_or_(present)

    def filter_classes(self) -> torch.Tensor:
        """``K`` long tensor: the category that activates each filter most (0 before any batch)."""
        scores = self.class_activation.masked_fill(~self.observed[:, None], float("-inf"))
        if not bool(self.observed.any()):
            return torch.zeros(self.num_filters, dtype=torch.long, device=scores.device)
        return scores.argmax(dim=0)


def _infer_channels(backbone: nn.Module, name: str) -> int | None:
    """Output channels of layer ``name``: the last conv/BN registered at or before the end of its subtree."""
    found = None
    inside = False
    for mod_name, mod in backbone.named_modules():
        in_subtree = name == "" or mod_name == name or mod_name.startswith(name + ".")
        if inside and not in_subtree:
            break
        inside = inside or in_subtree
        if isinstance(mod, nn.Conv2d):
            found = mod.out_channels
        elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
            found = mod.num_features if isinstance(mod, nn.BatchNorm2d) else mod.num_channels
    return found


@dataclass(frozen=True)
class ICNNConfig(MethodConfig):
    """ICNN's options: the layer (None: the feature layer), the filter-loss weight, beta, the test-time mask."""

    icnn_layer: str | None = None
    icnn_weight: float = 1.0
    icnn_beta: float = 4.0
    icnn_test_mask: bool = True


class ICNNMethod(TrainingMethod):
    """CE on the STD path plus ``icnn_weight`` times the mean ICNN filter loss of one layer.

    The masked maps replace the layer's output during training steps (a forward
    hook registered for the step and removed after it); by default evaluation
    uses the plain network like every other method, and ``evaluation_metrics``
    also reports the accuracy with the mask kept at test time
    (``icnn_masked_accuracy``). A config with ``icnn_test_mask = True`` (an
    optional field) keeps the mask in the network for good, as in Zhang et
    al.'s network: ``attach`` then registers a persistent hook, so every forward
    pass (evaluation, analyses, attacks) sees the masked maps.

    ``gate_matrix`` is the one-hot filter-category assignment (``C x K``) when the
    ICNN layer is the feature layer, so analyses that read ``gate.npy`` see which
    class each filter was trained for; None for another layer.
    """

    name = "icnn"
    Config = ICNNConfig

    def __init__(self, config: ICNNConfig | None = None):
        super().__init__(config)
        self._persistent: ICNNMaskHook | None = None

    @property
    def test_mask(self) -> bool:
        return bool(self.config.icnn_test_mask)

    def layer_name(self, model: GatedClassifier) -> str:
        return self.config.icnn_layer if self.config.icnn_layer is not None else model.feature_layer

    def _layer(self, model: GatedClassifier) -> nn.Module:
        name = self.layer_name(model)
        return model.backbone if name == "" else resolve_module(model.backbone, name)

    def attach(self, model: GatedClassifier) -> None:
        name = self.layer_name(model)
        layer = self._layer(model)  # clear error for an unknown --icnn-layer
        if name == model.feature_layer:
            channels = model.num_filters
        else:
            channels = _infer_channels(model.backbone, name) or 0   # 0: sized at the first step
        if getattr(model, "icnn", None) is None:
            model.icnn = ICNNState(model.num_classes, channels)
            model.icnn.to(model.input_mean.device)
        if self.test_mask and self._persistent is None:
            self._persistent = ICNNMaskHook(self.config.icnn_beta).register(layer)

    def phase(self, epoch: int) -> str:
        return ICNN

    def step(self, model, images, labels, phase):
        inner = unwrap(model)
        beta = self.config.icnn_beta
        hook = self._persistent or ICNNMaskHook(beta).register(self._layer(inner))
        hook.captured = {}
        try:
            out = model(images)
            x = hook.captured.get("x")
        finally:
            hook.captured = None
            if hook is not self._persistent:
                hook.remove()
        if x is None:
            raise CsgError(f"icnn layer {self.layer_name(inner)!r} was not called before the feature layer "
                           f"{inner.feature_layer!r}; choose an earlier layer with --icnn-layer")
        state: ICNNState = inner.icnn
        if state.num_filters != x.shape[1]:
            state.resize_(x.shape[1])
        state.update_(x, labels)
        mi = icnn_filter_mi(x, labels, state.filter_classes(), beta=beta)
        filter_loss = -mi.mean()
        ce = F.cross_entropy(out.logits, labels)
        loss = ce + self.config.icnn_weight * filter_loss
        return StepOutput(loss=loss, terms={"ce_std": ce.detach(), "icnn_loss": filter_loss.detach()},
                          logits=out.logits)

    def epoch_summary(self, model):
        state: ICNNState = unwrap(model).icnn
        return {"icnn_classes_used": int(state.filter_classes().unique().numel())}

    def assignment_matrix(self, model) -> np.ndarray:
        """One-hot ``C x K``: entry ``[c, k] = 1`` when filter k is assigned to category c."""
        model = unwrap(model)
        classes = model.icnn.filter_classes().cpu()
        onehot = F.one_hot(classes, model.num_classes).T
        return onehot.numpy().astype(np.float32)

    def gate_matrix(self, model):
        model = unwrap(model)
        if self.layer_name(model) != model.feature_layer or model.icnn.num_filters != model.num_filters:
            return None
        return self.assignment_matrix(model)

    def evaluation_metrics(self, model, dataset, *, batch_size, device):
        model = unwrap(model)
        correct = torch.zeros((), dtype=torch.long, device=device)
        total = 0
        hook = None if self.test_mask else ICNNMaskHook(self.config.icnn_beta).register(self._layer(model))
        try:
            for images, labels in eval_batches(model, dataset, batch_size=batch_size, device=device):
                correct += (model(images).logits.argmax(1) == labels).sum()
                total += labels.shape[0]
        finally:
            if hook is not None:
                hook.remove()
        counts = torch.bincount(model.icnn.filter_classes().cpu(), minlength=model.num_classes)
        return {"icnn_layer": self.layer_name(model), "icnn_beta": self.config.icnn_beta,
                "icnn_weight": self.config.icnn_weight, "icnn_test_mask": self.test_mask,
                "icnn_masked_accuracy": float(correct) / max(total, 1),
                "icnn_filters_per_class": counts.tolist()}


class ICNNMaskHook:
    """A forward hook that returns ``icnn_mask(output, beta)`` in place of a layer's output.

    While ``captured`` is a dict, the unmasked output is stored in it as ``["x"]``
    (for the filter loss).
    """

    def __init__(self, beta: float = 4.0):
        self.beta = beta
        self.captured: dict[str, torch.Tensor] | None = None
        self._handle = None

    def __call__(self, _module, _inp, output):
        if self.captured is not None:
            self.captured["x"] = output
        return icnn_mask(output, self.beta)

    def register(self, layer: nn.Module) -> "ICNNMaskHook":
        self._handle = layer.register_forward_hook(self)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class icnn_masking:
    """Context manager: mask ``layer``'s output with :func:`icnn_mask` inside the block.

    ``with icnn_masking(layer, beta) as captured: model(x)`` leaves the unmasked
    output in ``captured["x"]``; the hook is removed on exit, even after an error.
    """

    def __init__(self, layer: nn.Module, beta: float = 4.0):
        self.layer = layer
        self.hook = ICNNMaskHook(beta)

    def __enter__(self) -> dict[str, torch.Tensor]:
        self.hook.captured = {}
        self.hook.register(self.layer)
        return self.hook.captured

    def __exit__(self, *exc) -> None:
        self.hook.remove()
