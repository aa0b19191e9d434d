"""The one interface every training method implements, and the baseline (STD).

STD, CSG (alternating, joint, fixed), ICNN, PICNN and CSG+ differ only in the
loss of a step, the extra parameters they add and what they report; the trainer
is a single loop that serves them all (checkpointing, resume, logging, torchrun).

Each method has a small frozen config of its own (:class:`MethodConfig`
subclass) built from the flat run configuration by field name, so a method
never sees the optimiser, data or device settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..core.model import GatedClassifier, ModelOutput
from .schedule import STD


@dataclass(frozen=True)
class MethodConfig:
    """A method's own options; subclasses add fields named as the ``csg train`` flags."""

    @classmethod
    def from_options(cls, options: Any, **resolved) -> "MethodConfig":
        """Pick this config's fields from ``options`` (a flat run config or a dict); ``resolved`` wins."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in resolved:
                values[f.name] = resolved[f.name]
            elif isinstance(options, dict) and f.name in options:
                values[f.name] = options[f.name]
            elif hasattr(options, f.name):
                values[f.name] = getattr(options, f.name)
        return cls(**values)


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

    name: ClassVar[str] = "std"
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def resolve(cls, options: Any, num_classes: int) -> MethodConfig:
        """This method's config from a flat run config, with defaults that depend on the data resolved."""
        return cls.Config.from_options(options)

    # ---- set-up ------------------------------------------------------------
    def attach(self, model: GatedClassifier) -> None:
        """Add the method's modules (a gate, a correspondence matrix) to ``model``."""

    def extra_parameters(self, model: GatedClassifier) -> list[nn.Parameter]:
        """Parameters trained by their own optimiser (``--gate-lr``, ``--gate-optimizer``)."""
        return []

    def parameters_outside_forward(self, model: GatedClassifier) -> list[nn.Parameter]:
        """Parameters ``step`` uses besides the model's forward pass (PICNN's V)."""
        return []

    def set_phase(self, model: GatedClassifier, phase: str) -> None:
        """Switch ``requires_grad`` of the method's own parameters for ``phase`` (a STD epoch leaves the
        gate out), so every phase trains exactly the parameters its loss reaches."""

    # ---- training ------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        return STD

    def trains_gate(self, epochs: int) -> bool:
        """Whether some epoch of a run of ``epochs`` epochs trains the method's gate (True: nothing to warn)."""
        return True

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

    @staticmethod
    def filter_assignment(gate: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Boolean ``C x K``: ``[c, k]`` when filter k belongs to class c by this method's own rule.

        Default (a gate or a one-hot assignment): ``G[c, k] > threshold``.
        """
        return np.asarray(gate, dtype=np.float64) > threshold

    def evaluation_metrics(self, model: GatedClassifier, dataset, *, batch_size: int, device) -> dict:
        """Method-specific entries for ``metrics.json``."""
        return {}
