"""CSG training (METHOD.md section 2): the relaxed problem of paper eq. 3.

    L(theta, G) = CE(y, STD logits) + lambda1 * CE(y, CSG logits) + lambda2 * psi(relu(||G||_1 - g))

alternating (Algorithm 1; a CSG epoch uses ``lambda1*CE(CSG) + lambda2*d`` and
moves theta and G, a STD epoch uses ``CE(STD)`` and moves theta), joint (every
step the whole sum) or with a fixed binary gate (Appendix E).
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from ..core.gate import ClassSpecificGate, check_density
from ..core.model import GatedClassifier
from .schedule import CSG, JOINT, STD, epoch_phase
from .base import StepOutput, TrainingMethod


class CSGMethod(TrainingMethod):
    name = "csg"
    fixed = False

    def rho(self, num_classes: int) -> float:
        return check_density(self.cfg.rho if self.cfg.rho is not None else 1.0 / num_classes, num_classes)

    def attach(self, model: GatedClassifier) -> None:
        C, K = model.num_classes, model.num_filters
        self._rho = self.rho(C)
        if model.gate is None:
            if self.fixed:
                model.gate = ClassSpecificGate.fixed(C, K, self.cfg.m1, self.cfg.m2)
            else:
                model.gate = ClassSpecificGate(C, K, init=self.cfg.gate_init)
        model.gate.to(model.input_mean.device)

    def extra_parameters(self, model: GatedClassifier):
        return [] if model.gate.is_fixed else [model.gate.weight]

    def phase(self, epoch: int) -> str:
        c = self.cfg
        return epoch_phase(epoch, schedule=c.schedule, period=c.period, csg_epochs=c.csg_epochs,
                           warmup=c.warmup, epochs=c.epochs, final_csg_epochs=c.final_csg_epochs)

    def step(self, model, images, labels, phase):
        if phase == STD:
            return super().step(model, images, labels, phase)
        out = model(images, labels)
        gate = _unwrap(model).gate
        ce_csg = F.cross_entropy(out.csg_logits, labels)
        loss = self.cfg.lambda1 * ce_csg
        terms = {"ce_csg": ce_csg.detach()}
        if not gate.is_fixed:
            penalty = gate.penalty(self._rho, self.cfg.penalty)
            loss = loss + self.cfg.lambda2 * penalty
            terms["penalty"] = penalty.detach()
        if phase == JOINT:
            ce_std = F.cross_entropy(out.logits, labels)
            loss = loss + ce_std
            terms["ce_std"] = ce_std.detach()
        return StepOutput(loss=loss, terms=terms, logits=out.logits, csg_logits=out.csg_logits)

    def after_step(self, model, phase):
        if phase in (CSG, JOINT):
            _unwrap(model).gate.project_()

    def epoch_summary(self, model):
        return {"l1_density": _unwrap(model).gate.l1_density()}

    def gate_matrix(self, model):
        return _unwrap(model).gate.weight.detach().cpu().numpy().astype(np.float32)

    def evaluation_metrics(self, model, dataset, *, batch_size, device):
        model = _unwrap(model)
        C = model.num_classes
        rho = self.rho(C)
        return {"l1_density": model.gate.l1_density(), "rho": rho, "l1_interval": [1.0 / C, rho],
                "gate_fixed": model.gate.is_fixed}


class FixedCSGMethod(CSGMethod):
    """A binary gate frozen from the start: m1 filters per class, m2 shared (Appendix E)."""

    name = "csg-fixed"
    fixed = True


def _unwrap(model):
    """The GatedClassifier inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)
