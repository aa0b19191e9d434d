"""The optimisers of a run and the learning rate of each epoch."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..methods.schedule import STD


def build_optimizers(cfg, model, method) -> dict[str, torch.optim.Optimizer]:
    """``{"model": ...}`` over every trainable parameter, plus ``"gate"`` over the method's
    ``extra_parameters`` (the CSG gate, PICNN's V with ``picnn_v_optimizer = "own"``) at ``--gate-lr``."""
    extra = method.extra_parameters(model)
    extra_ids = {id(p) for p in extra}
    main = [p for p in model.parameters() if id(p) not in extra_ids and p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(main, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(main, lr=cfg.lr, weight_decay=cfg.weight_decay)
    optimizers = {"model": opt}
    if extra:
        if cfg.gate_optimizer == "sgd":
            optimizers["gate"] = torch.optim.SGD(extra, lr=cfg.gate_lr, momentum=cfg.momentum)
        else:
            optimizers["gate"] = torch.optim.Adam(extra, lr=cfg.gate_lr)
    for o in optimizers.values():
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    return optimizers


def lr_factor(epoch: int, epochs: int, kind: str = "cosine", milestones: Sequence[float] = (0.5, 0.75),
              gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate for a 0-based epoch.

    ``constant``: 1. ``multistep``: ``gamma ** (number of milestones m with epoch >= m * epochs)``
    (milestones are fractions of the run). ``cosine``: ``0.5 * (1 + cos(pi * epoch / epochs))``.
    """
    if kind == "constant":
        return 1.0
    if kind == "multistep":
        passed = sum(1 for m in milestones if epoch >= round(m * epochs))
        return gamma ** passed
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise ValueError(kind)


def set_epoch_lrs(optimizers: dict[str, torch.optim.Optimizer], cfg, epoch: int, phase: str) -> dict[str, float]:
    """Set every group's lr to ``base * lr_factor(epoch)`` (``--csg-lr`` as the model's base in gated
    phases) and return the first group's lr per optimiser."""
    factor = lr_factor(epoch, cfg.epochs, cfg.lr_schedule, cfg.milestones, cfg.gamma)
    lrs = {}
    for name, opt in optimizers.items():
        for g in opt.param_groups:
            base = g["initial_lr"]
            if name == "model" and phase != STD and cfg.csg_lr is not None:
                base = cfg.csg_lr
            g["lr"] = base * factor
        lrs[name] = opt.param_groups[0]["lr"]
    return lrs
