"""CSG training (METHOD.md section 2): the relaxed problem of paper eq. 3.

    L(theta, G) = CE(y, STD logits) + lambda1 * CE(y, CSG logits) + lambda2 * psi(relu(||G||_1 - g))

alternating (Algorithm 1; a CSG epoch uses ``lambda1*CE(CSG) + lambda2*d`` and
moves theta and G, a STD epoch uses ``CE(STD)`` and moves theta), joint (every
step the whole sum) or with a fixed binary gate (Appendix E).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.gate import ClassSpecificGate, check_density, gate_penalty
from ..core.model import GatedClassifier, unwrap
from .base import MethodConfig, StepOutput, TrainingMethod
from .schedule import CSG, JOINT, STD, epoch_phase


@dataclass(frozen=True)
class CSGConfig(MethodConfig):
    """CSG's options (``csg train`` flags of the same names); ``rho`` is resolved (1/C when not given)."""

    rho: float | None = None
    penalty: str = "l1"
    lambda1: float = 1.0
    lambda2: float = 1e-3
    gate_init: float = 0.5
    schedule: str = "joint"
    period: int = 3
    csg_epochs: int = 1
    warmup: int = 2
    final_csg_epochs: int = 0
    epochs: int | None = None
    m1: int | None = None
    m2: int | None = None


def csg_loss(logits: torch.Tensor, csg_logits: torch.Tensor, labels: torch.Tensor, gate: torch.Tensor | None, *,
             phase: str, rho: float, lambda1: float = 1.0, lambda2: float = 1e-3,
             penalty: str = "l1") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one CSG step and its named terms (paper eq. 3).

    ``phase == "csg"``:   ``lambda1 * CE(y, csg_logits) + lambda2 * psi(relu(||G||_1 - rho*C*K))``
    ``phase == "joint"``: the same plus ``CE(y, logits)``.
    ``gate=None`` (a fixed gate) drops the penalty term.
    """
    ce_csg = F.cross_entropy(csg_logits, labels)
    loss = lambda1 * ce_csg
    terms = {"ce_csg": ce_csg.detach()}
    if gate is not None:
        pen = gate_penalty(gate, rho, penalty)
        loss = loss + lambda2 * pen
        terms["penalty"] = pen.detach()
    if phase == JOINT:
        ce_std = F.cross_entropy(logits, labels)
        loss = loss + ce_std
        terms["ce_std"] = ce_std.detach()
    return loss, terms


class CSGMethod(TrainingMethod):
    name = "csg"
    Config = CSGConfig
    fixed = False

    @classmethod
    def resolve(cls, options, num_classes: int) -> CSGConfig:
        cfg = CSGConfig.from_options(options)
        rho = cfg.rho if cfg.rho is not None else 1.0 / num_classes
        return CSGConfig.from_options(options, rho=check_density(rho, num_classes))

    @property
    def rho(self) -> float:
        return self.config.rho

    def attach(self, model: GatedClassifier) -> None:
        C, K = model.num_classes, model.num_filters
        if model.gate is None:
            c = self.config
            model.gate = ClassSpecificGate.fixed(C, K, c.m1, c.m2) if self.fixed else \
                ClassSpecificGate(C, K, init=c.gate_init)
        model.gate.to(model.input_mean.device)

    def extra_parameters(self, model: GatedClassifier):
        return [] if model.gate.is_fixed else [model.gate.weight]

    def set_phase(self, model, phase):
        gate = unwrap(model).gate
        gate.weight.requires_grad_(not gate.is_fixed and phase != STD)

    def phase(self, epoch: int) -> str:
        c = self.config
        return epoch_phase(epoch, schedule=c.schedule, period=c.period, csg_epochs=c.csg_epochs,
                           warmup=c.warmup, epochs=c.epochs, final_csg_epochs=c.final_csg_epochs)

    def trains_gate(self, epochs: int) -> bool:
        return any(self.phase(e) != STD for e in range(epochs))

    def step(self, model, images, labels, phase):
        if phase == STD:
            return super().step(model, images, labels, phase)
        out = model(images, labels)
        gate = unwrap(model).gate
        c = self.config
        loss, terms = csg_loss(out.logits, out.csg_logits, labels, None if gate.is_fixed else gate.weight,
                               phase=phase, rho=c.rho, lambda1=c.lambda1, lambda2=c.lambda2, penalty=c.penalty)
        return StepOutput(loss=loss, terms=terms, logits=out.logits, csg_logits=out.csg_logits)

    def after_step(self, model, phase):
        if phase in (CSG, JOINT):
            unwrap(model).gate.project_()

    def epoch_summary(self, model):
        return {"l1_density": unwrap(model).gate.l1_density()}

    def gate_matrix(self, model):
        return unwrap(model).gate.weight.detach().cpu().numpy().astype(np.float32)

    def evaluation_metrics(self, model, dataset, *, batch_size, device):
        model = unwrap(model)
        C = model.num_classes
        return {"l1_density": model.gate.l1_density(), "rho": self.rho, "l1_interval": [1.0 / C, self.rho],
                "gate_fixed": model.gate.is_fixed}


class FixedCSGMethod(CSGMethod):
    """A binary gate frozen from the start: m1 filters per class, m2 shared (Appendix E)."""

    name = "csg-fixed"
    fixed = True
