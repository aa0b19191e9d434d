"""The one interface every training method implements.

STD, CSG (alternating, joint, fixed), ICNN and PICNN differ only in the loss of
a step, the extra parameters they add and what they report; the trainer is a
single loop that serves them all (checkpointing, resume, logging, torchrun).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..core.model import GatedClassifier, ModelOutput
from ..training.config import TrainConfig
from .schedule import STD


@dataclass
class StepOutput:
    """A training step's loss plus detached scalars for the log.

    ``terms`` holds named loss parts (``ce_std``, ``ce_csg``, ``penalty``, ...);
    ``logits`` / ``csg_logits`` (when computed) feed the running accuracies.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    csg_logits: torch.Tensor | None = None


class TrainingMethod:
    """Base class: plain cross-entropy on the STD path (the baseline)."""

    name = "std"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    # ---- set-up ------------------------------------------------------------
    def attach(self, model: GatedClassifier) -> None:
        """Add the method's modules (a gate, a correspondence matrix) to ``model``."""

    def extra_parameters(self, model: GatedClassifier) -> list[nn.Parameter]:
        """Parameters trained by their own optimiser (``--gate-lr``, ``--gate-optimizer``)."""
        return []

    # ---- training ------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        return STD

    def step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, phase: str) -> StepOutput:
        out: ModelOutput = model(images)
        loss = nn.functional.cross_entropy(out.logits, labels)
        return StepOutput(loss=loss, terms={"ce_std": loss.detach()}, logits=out.logits)

    def after_step(self, model: GatedClassifier, phase: str) -> None:
        """Called after every optimiser step (e.g. the gate projection)."""

    # ---- reporting -----------------------------------------------------------
    def epoch_summary(self, model: GatedClassifier) -> dict[str, float]:
        """Scalars for the epoch's log line (e.g. the gate's L1-density)."""
        return {}

    def gate_matrix(self, model: GatedClassifier) -> np.ndarray | None:
        """The C x K class-filter matrix saved as ``gate.npy`` (None: no such matrix)."""
        return None

    def evaluation_metrics(self, model: GatedClassifier, dataset, *, batch_size: int, device) -> dict:
        """Method-specific entries for ``metrics.json``."""
        return {}
