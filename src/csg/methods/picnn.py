"""PICNN (Guo et al., AAAI 2024; METHOD.md section 8), read from the authors' public code.

A learnable ``C x K`` matrix ``V``; ``Q = softmax_c(V)`` (each filter's column
is a distribution over classes). Every training step:

* discrimination pathway ``z1 = W pool(F)`` (the STD logits), ``p = softmax(z1)``;
* a class drawn from the model's own prediction, ``yhat ~ Categorical(p)``, with the
  straight-through vector ``s = p + stopgrad(onehot(yhat) - p)``;
* keep probabilities ``pi = s Q`` (forward value: row ``yhat`` of Q), a mask
  ``m ~ Bernoulli(pi)`` and ``m~ = pi + stopgrad(m - pi)``;
* interpretation pathway ``z2 = W pool(F * m~) = W (pool(F) * m~)`` (pooling is
  linear), the same head W;
* loss ``CE(z1, y) + lambda * mean_{i: yhat_i = y_i} CE(z2_i, y_i)`` (0 when no
  sample drew its true class), ``lambda = --picnn-weight`` (2).

Draws use the global torch RNG, which the trainer seeds and checkpoints, so a
run (and a resumed run) is reproducible. Evaluation draws from its own
generator seeded with the run's seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.inference import eval_batches
from ..core.model import GatedClassifier, unwrap
from .base import MethodConfig, StepOutput, TrainingMethod

PICNN = "picnn"


class PICNNCorrespondence(nn.Module):
    """The learnable filter-class correspondence ``V`` (``C x K``); ``Q = softmax over classes of V``.

    ``init="reference"`` (default) follows the authors' code:
    ``V = softmax_c(U)``, ``U ~ Uniform[0, 1)^{C x K}`` drawn from the global RNG;
    ``init="zeros"`` gives a uniform Q.
    """

    def __init__(self, num_classes: int, num_filters: int, init: str = "reference"):
        super().__init__()
        if init == "zeros":
            value = torch.zeros(num_classes, num_filters)
        else:
            value = torch.softmax(torch.rand(num_classes, num_filters), dim=0)
        self.weight = nn.Parameter(value)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def num_filters(self) -> int:
        return self.weight.shape[1]

    def probabilities(self) -> torch.Tensor:
        """``Q``: each column sums to 1 over the classes."""
        return torch.softmax(self.weight, dim=0)


def straight_through_onehot(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``onehot(index)`` forward, gradient of ``probs`` backward (``p + stopgrad(onehot - p)``).

    Written as ``onehot + (p - stopgrad(p))`` so the forward value is exactly one-hot.
    """
    onehot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return onehot + (probs - probs.detach())


def straight_through_bernoulli(probs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The hard 0/1 ``sample`` forward, gradient of ``probs`` backward (``pi + stopgrad(m - pi)``)."""
    return sample.to(probs.dtype) + (probs - probs.detach())


def picnn_forward(pooled: torch.Tensor, logits: torch.Tensor, head: nn.Module, Q: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z2, yhat)``: the interpretation pathway's logits and the drawn classes.

    ``pooled`` N x K, ``logits`` (z1) N x C, ``Q`` C x K. Draws from ``generator``
    (the global RNG when None).
    """
    p = torch.softmax(logits.float(), dim=1)
    with torch.no_grad():
        yhat = torch.multinomial(p, 1, generator=generator).squeeze(1)
    s = straight_through_onehot(p, yhat)
    pi = s @ Q.float()
    with torch.no_grad():
        m = torch.bernoulli(pi.clamp(0.0, 1.0), generator=generator)
    mask = straight_through_bernoulli(pi, m)
    z2 = head(pooled * mask.to(pooled.dtype))
    return z2, yhat


def picnn_interpretation_loss(z2: torch.Tensor, labels: torch.Tensor, yhat: torch.Tensor) -> torch.Tensor:
    """``mean_{i: yhat_i = y_i} CE(z2_i, y_i)``; 0 (still attached to the graph) when no draw was right."""
    keep = (yhat == labels).to(z2.dtype)
    per_sample = F.cross_entropy(z2, labels, reduction="none")
    return (per_sample * keep).sum() / keep.sum().clamp(min=1.0)


@dataclass(frozen=True)
class PICNNConfig(MethodConfig):
    """PICNN's options: lambda (``picnn_weight``), who trains V, and the seed of evaluation draws."""

    picnn_weight: float = 2.0
    picnn_v_optimizer: str = "model"
    seed: int = 0


def picnn_loss(logits: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, yhat: torch.Tensor, *,
               weight: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``CE(z1, y) + weight * mean_{i: yhat_i = y_i} CE(z2_i, y_i)`` and its named terms."""
    ce = F.cross_entropy(logits, labels)
    interp = picnn_interpretation_loss(z2, labels, yhat)
    return ce + weight * interp, {"ce_std": ce.detach(), "ce_interp": interp.detach()}


class PICNNMethod(TrainingMethod):
    """``CE(z1, y) + picnn_weight * CE(z2, y)`` over the samples whose drawn class is right.

    ``model.picnn`` (:class:`PICNNCorrespondence`) holds ``V``. By default
    (``picnn_v_optimizer = "model"``) it is trained with the network's weights by
    the one model optimiser (its learning rate, momentum, weight decay and
    schedule), as in the authors' code; ``"own"`` gives it the gate optimiser
    (``--gate-lr``, ``--gate-optimizer``) instead. With a separate Adam at lr 1e-3
    an entry of V moves by about 1e-3 per step, so in a short run Q stays near
    uniform (docs/tuning.md). ``gate_matrix`` returns ``Q`` (``C x K``).
    """

    name = "picnn"
    Config = PICNNConfig

    def attach(self, model: GatedClassifier) -> None:
        if getattr(model, "picnn", None) is None:
            model.picnn = PICNNCorrespondence(model.num_classes, model.num_filters)
            model.picnn.to(model.input_mean.device)

    def extra_parameters(self, model):
        if self.config.picnn_v_optimizer == "model":
            return []  # V is one more weight of the model optimiser
        return [unwrap(model).picnn.weight]

    def parameters_outside_forward(self, model):
        return [unwrap(model).picnn.weight]

    @staticmethod
    def filter_assignment(gate, threshold: float = 0.5):
        """Each filter belongs to the class of its column's largest Q (Q's columns are softmaxes, whose
        maximum is often below 0.5, so a threshold would assign no filter)."""
        Q = np.asarray(gate, dtype=np.float64)
        out = np.zeros(Q.shape, dtype=bool)
        out[Q.argmax(axis=0), np.arange(Q.shape[1])] = True
        return out

    def phase(self, epoch: int) -> str:
        return PICNN

    def step(self, model, images, labels, phase):
        inner = unwrap(model)
        out = model(images)
        z2, yhat = picnn_forward(out.pooled, out.logits, inner.head, inner.picnn.probabilities())
        loss, terms = picnn_loss(out.logits, z2, labels, yhat, weight=self.config.picnn_weight)
        with torch.no_grad():
            right = (yhat == labels).float().mean()
            interp_acc = (z2.argmax(1) == labels).float().mean()
        return StepOutput(loss=loss, terms={**terms, "drawn_right": right, "interp_accuracy": interp_acc},
                          logits=out.logits)

    def epoch_summary(self, model):
        Q = unwrap(model).picnn.probabilities().detach()
        return {"q_max_mean": float(Q.max(dim=0).values.mean())}

    def gate_matrix(self, model):
        return unwrap(model).picnn.probabilities().detach().cpu().numpy().astype(np.float32)

    def evaluation_metrics(self, model, dataset, *, batch_size, device):
        """``interpretation_accuracy`` (z2 with yhat and m drawn as in training) and
        ``accuracy_true_class_filters_removed`` (z on ``pool(F) * (1 - m)``, ``m ~ Bernoulli(Q[y])``),
        one pass over ``dataset`` in eval mode, draws from a generator seeded with the run's seed."""
        model = unwrap(model)
        device = torch.device(device)
        generator = torch.Generator(device=device).manual_seed(int(self.config.seed))
        Q = model.picnn.probabilities().detach()
        head = model.head
        correct_interp = torch.zeros((), dtype=torch.long, device=device)
        correct_removed = torch.zeros((), dtype=torch.long, device=device)
        total = 0
        for images, labels in eval_batches(model, dataset, batch_size=batch_size, device=device):
            out = model(images)
            z2, _ = picnn_forward(out.pooled, out.logits, head, Q, generator=generator)
            correct_interp += (z2.argmax(1) == labels).sum()
            removed = torch.bernoulli(Q[labels].float(), generator=generator).to(out.pooled.dtype)
            z3 = head(out.pooled * (1.0 - removed))
            correct_removed += (z3.argmax(1) == labels).sum()
            total += labels.shape[0]
        n = max(total, 1)
        return {"interpretation_accuracy": float(correct_interp) / n,
                "accuracy_true_class_filters_removed": float(correct_removed) / n,
                "picnn_weight": self.config.picnn_weight,
                "q_max_mean": float(Q.max(dim=0).values.mean()),
                "picnn_filters_per_class": torch.bincount(Q.argmax(dim=0).cpu(),
                                                          minlength=model.num_classes).tolist()}
