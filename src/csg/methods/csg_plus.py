"""CSG+: class-specific filters without reading the label, with a gate that follows the filters.

CSG stops short on three counts (docs/tuning.md): a filter whose gate is closed for class y gets no
gradient on images of y from the CSG term (nothing but the STD cross-entropy pushes its activation
down there); the CSG path reads the label through ``G[y]``, so its cross-entropy saturates early; and
with Adam the gate turns one-hot within the first joint epoch and then freezes. CSG+ adds one term per
cause, each with its own weight (0 switches it off):

* **suppression** (``--suppression-weight``, lambda_s): the share of each filter's activation that
  falls on the classes its gate closes, over the batch B,

      S_k = sum_{i in B} (1 - G[y_i, k]) a_ik / (sum_{i in B} a_ik + eps),    L_sup = mean_k S_k

  (scale-free, so a filter cannot lower it by shrinking, and in [0, 1]);
* **class-specific head** (``--class-head-weight``, lambda_h): a gated path that does not read the
  label: class c's logit sees only the filters its gate row opens,

      z^h_c = sum_k W[c, k] G[c, k] a_k + b_c,        L_head = CE(y, z^h)

  (the same head W and bias b as the STD path);
* **a gate that follows the filters** (``--gate-follows-activation``): the suppression term's gradient
  reaches G (``dS_k / dG[c, k] = -(mass of filter k on class c) / (its total mass)``), so the gate keeps
  opening where each filter fires and closing elsewhere, against the budget penalty, instead of freezing
  once it is one-hot. Off: ``G`` is detached in ``S_k``.

The objective of a gated step (after ``--warmup`` STD epochs, every step: the joint schedule) is

    L = CE(y, z) + lambda1 * CE(y, z^csg) + lambda_h * L_head + lambda_s * L_sup + lambda2 * psi(relu(||G||_1 - g))

with CSG's own path ``z^csg = W (a * G[y]) + b`` kept as an option (``--lambda1``). With
``lambda_s = lambda_h = 0`` (and ``lambda1`` at CSG's value) a CSG+ run is exactly a CSG run. The gate,
its projection, its density budget and its schedule are CSG's (:mod:`.csg`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.gate import gate_penalty
from ..core.model import unwrap
from .base import StepOutput
from .csg import CSGConfig, CSGMethod
from .schedule import JOINT, STD

EPS = 1e-6


@dataclass(frozen=True)
class CSGPlusConfig(CSGConfig):
    """CSG's options plus the weights of CSG+'s terms (defaults chosen in docs/tuning.md)."""

    lambda1: float = 0.0
    suppression_weight: float = 1.0
    class_head_weight: float = 1.0
    gate_follows_activation: bool = True


def suppression_loss(pooled: torch.Tensor, labels: torch.Tensor, gate: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``mean_k sum_i (1 - G[y_i, k]) a_ik / (sum_i a_ik + eps)``: the share of each filter's activation
    mass in the batch that falls on classes its gate closes (pooled ``N x K`` >= 0, gate ``C x K``)."""
    closed = 1.0 - gate[labels]                                   # N x K, one gather: no loop over samples
    off = (closed * pooled).sum(dim=0)
    return (off / (pooled.sum(dim=0) + eps)).mean()


def open_share_threshold(num_filters: int, lambda2: float, suppression_weight: float) -> float:
    """``tau = K * lambda2 / lambda_s``: where CSG+'s gate settles. While the L1 budget is exceeded (psi =
    identity), the penalty and the suppression term give ``dL / dG[c, k] = lambda2 - lambda_s * s_ck / K``
    (``s_ck``: :func:`csg.metrics.class_mass_shares`),
    so an entry opens where its class holds more than ``tau`` of the filter's mass and closes elsewhere
    (the class head's term aside)."""
    return float("inf") if suppression_weight == 0 else num_filters * lambda2 / suppression_weight


def class_head_logits(pooled: torch.Tensor, head: torch.nn.Linear, gate: torch.Tensor) -> torch.Tensor:
    """``z^h_c = sum_k W[c, k] G[c, k] a_k + b_c``: each class's logit from the filters its gate row opens."""
    return F.linear(pooled, head.weight * gate, head.bias)


def csg_plus_loss(logits: torch.Tensor, csg_logits: torch.Tensor | None, pooled: torch.Tensor, labels: torch.Tensor,
                  head: torch.nn.Linear, gate: torch.Tensor, *, rho: float, lambda1: float, lambda2: float,
                  penalty: str, suppression_weight: float, class_head_weight: float,
                  gate_follows_activation: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one gated CSG+ step (module docstring) and its named terms.

    The terms are added in CSG's order first (``lambda1 * CE(csg)``, the penalty, ``CE(std)``), so with
    both CSG+ weights at 0 the loss is CSG's joint loss bit for bit.
    """
    terms: dict[str, torch.Tensor] = {}
    loss = torch.zeros((), dtype=logits.dtype, device=logits.device)
    if lambda1:
        ce_csg = F.cross_entropy(csg_logits, labels)
        loss = lambda1 * ce_csg
        terms["ce_csg"] = ce_csg.detach()
    pen = gate_penalty(gate, rho, penalty)
    loss = loss + lambda2 * pen
    terms["penalty"] = pen.detach()
    ce_std = F.cross_entropy(logits, labels)
    loss = loss + ce_std
    terms["ce_std"] = ce_std.detach()
    if class_head_weight:
        ce_head = F.cross_entropy(class_head_logits(pooled, head, gate), labels)
        loss = loss + class_head_weight * ce_head
        terms["ce_class_head"] = ce_head.detach()
    if suppression_weight:
        sup = suppression_loss(pooled, labels, gate if gate_follows_activation else gate.detach())
        loss = loss + suppression_weight * sup
        terms["suppression"] = sup.detach()
    return loss, terms


class CSGPlusMethod(CSGMethod):
    """CSG+ (module docstring): CSG's gate, projection, budget and schedule, plus suppression, a label-free
    class-specific head and a gate that follows the filters. Gated phases are joint phases."""

    name = "csg-plus"
    Config = CSGPlusConfig

    @classmethod
    def resolve(cls, options, num_classes: int) -> CSGPlusConfig:
        from ..core.gate import check_density

        cfg = CSGPlusConfig.from_options(options)
        rho = cfg.rho if cfg.rho is not None else 1.0 / num_classes
        return CSGPlusConfig.from_options(options, rho=check_density(rho, num_classes), schedule="joint")

    def step(self, model, images, labels, phase):
        if phase == STD:
            return super().step(model, images, labels, phase)
        c = self.config
        inner = unwrap(model)
        out = model(images, labels if c.lambda1 else None)
        loss, terms = csg_plus_loss(out.logits, out.csg_logits, out.pooled, labels, inner.head, inner.gate.weight,
                                    rho=c.rho, lambda1=c.lambda1, lambda2=c.lambda2, penalty=c.penalty,
                                    suppression_weight=c.suppression_weight, class_head_weight=c.class_head_weight,
                                    gate_follows_activation=c.gate_follows_activation)
        return StepOutput(loss=loss, terms=terms, logits=out.logits, csg_logits=out.csg_logits)

    def phase(self, epoch: int) -> str:
        return STD if epoch < self.config.warmup else JOINT

