"""The Class-Specific Gate: a C x K matrix that says which classes each filter serves.

Notation (METHOD.md section 2): ``G`` has one row per class and one column per
filter of the feature layer, entries in [0, 1], and every column's maximum is
exactly 1 (``||G^k||_inf = 1``) so that every filter serves at least one class.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CsgError

PenaltyNorm = Literal["l1", "l2", "smooth-l1"]
PENALTY_NORMS = ("l1", "l2", "smooth-l1")


def check_density(rho: float, num_classes: int) -> float:
    """Validate a target L1-density ``rho = g / (C*K)``.

    The projected gate has column maxima 1, so ``||G||_1 >= K`` and the density
    cannot go below ``1/C``: a smaller budget can never be met.
    """
    rho = float(rho)
    if not math.isfinite(rho) or rho > 1.0:
        raise CsgError(f"--rho {rho} is not a density in [1/C, 1]; use e.g. --rho {1 / num_classes:.3g}")
    if rho < 1.0 / num_classes - 1e-12:
        raise CsgError(
            f"--rho {rho:g} is below 1/C = {1 / num_classes:.4g}: every gate column keeps a 1, "
            f"so the L1-density can never go below 1/C; use --rho >= {1 / num_classes:.4g}"
        )
    return rho


def gate_penalty(gate: torch.Tensor, rho: float, norm: PenaltyNorm = "l1") -> torch.Tensor:
    """``psi(relu(||G||_1 - g))`` with ``g = rho * C * K`` (paper eq. 3).

    ``psi`` is the identity (``l1``), the square (``l2``) or the smooth-L1
    (Huber, beta = 1: ``0.5 x^2`` for ``x < 1``, ``x - 0.5`` above).
    """
    budget = rho * gate.numel()
    excess = F.relu(gate.abs().sum() - budget)
    if norm == "l1":
        return excess
    if norm == "l2":
        return excess * excess
    if norm == "smooth-l1":
        return F.smooth_l1_loss(excess, torch.zeros_like(excess), reduction="sum", beta=1.0)
    raise CsgError(f"unknown --penalty {norm!r}; choose one of {', '.join(PENALTY_NORMS)}")


@torch.no_grad()
def project_columns_(gate: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Approximate projection onto the constraint set, in place.

    Each column is divided by its maximum over classes (a column whose maximum
    is not positive is left unscaled), then everything is clipped to [0, 1].
    """
    col_max = gate.max(dim=0, keepdim=True).values
    scale = torch.where(col_max > eps, col_max, torch.ones_like(col_max))
    gate.div_(scale).clamp_(0.0, 1.0)
    return gate


def fixed_layout(num_classes: int, num_filters: int, m1: int | None = None, m2: int | None = None) -> torch.Tensor:
    """A binary C x K gate where each class owns ``m1`` filters and ``m2`` are shared.

    Filters ``c*m1 ... (c+1)*m1 - 1`` belong to class c; the last ``m2`` filters
    serve every class. Defaults: ``m1 = K // C`` and ``m2 = K - C*m1`` (for
    ResNet-20 on 10 classes: m1 = 6, m2 = 4, as in the paper's Appendix E).
    """
    C, K = num_classes, num_filters
    if m1 is None:
        m1 = (K - (m2 or 0)) // C
    if m2 is None:
        m2 = K - C * m1
    if m1 < 1 or m2 < 0 or C * m1 + m2 != K:
        raise CsgError(
            f"fixed gate layout --m1 {m1} --m2 {m2} does not fill {K} filters for {C} classes "
            f"(needs C*m1 + m2 = K); try --m1 {K // C} --m2 {K - C * (K // C)}"
        )
    layout = torch.zeros(C, K)
    owner = torch.arange(C * m1) // m1
    layout[owner, torch.arange(C * m1)] = 1.0
    layout[:, C * m1:] = 1.0
    return layout


class ClassSpecificGate(nn.Module):
    """A learnable (or fixed) C x K gate with its penalty and projection.

    ``forward(pooled, labels)`` returns ``pooled * G[labels]``: one gather of the
    label rows, so no loop over samples.
    """

    def __init__(self, num_classes: int, num_filters: int, init: float = 0.5,
                 fixed: torch.Tensor | None = None):
        super().__init__()
        if num_classes < 2 or num_filters < 1:
            raise CsgError(f"a gate needs at least 2 classes and 1 filter, got C={num_classes}, K={num_filters}")
        self.num_classes = int(num_classes)
        self.num_filters = int(num_filters)
        # a fixed gate is never trained; a learnable one may still have requires_grad off in a phase
        # that does not use it (a STD epoch), so "fixed" is recorded, not read from requires_grad
        self._fixed = fixed is not None
        if fixed is not None:
            if tuple(fixed.shape) != (num_classes, num_filters):
                raise CsgError(f"fixed gate has shape {tuple(fixed.shape)}, expected ({num_classes}, {num_filters})")
            self.weight = nn.Parameter(fixed.detach().clone().float(), requires_grad=False)
        else:
            if not 0.0 < init <= 1.0:
                raise CsgError(f"--gate-init {init} must be in (0, 1]")
            self.weight = nn.Parameter(torch.full((num_classes, num_filters), float(init)))

    @property
    def is_fixed(self) -> bool:
        return self._fixed

    @classmethod
    def fixed(cls, num_classes: int, num_filters: int, m1: int | None = None, m2: int | None = None):
        return cls(num_classes, num_filters, fixed=fixed_layout(num_classes, num_filters, m1, m2))

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pooled * self.weight[labels]

    def penalty(self, rho: float, norm: PenaltyNorm = "l1") -> torch.Tensor:
        return gate_penalty(self.weight, rho, norm)

    def project_(self) -> None:
        if not self.is_fixed:
            project_columns_(self.weight.data)

    @torch.no_grad()
    def l1_density(self) -> float:
        """``||G||_1 / (C*K)``."""
        return float(self.weight.abs().sum() / self.weight.numel())

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, filters={self.num_filters}, fixed={self.is_fixed}"
