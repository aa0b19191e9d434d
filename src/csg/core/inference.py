"""The one evaluation loop: a model in eval mode, no gradients, over a dataset's batches.

Every place that scores a model on a dataset (evaluation, the methods' own
metrics, attacks' clean accuracy) iterates :func:`eval_batches`, so the
training flag is always restored and no pass builds an autograd graph.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` and ``torch.no_grad()`` inside the block; the training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def eval_batches(model: nn.Module, dataset, *, batch_size: int, device="cpu", progress: bool = False,
                 desc: str = "evaluate") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` of ``dataset`` in order, on ``device``, while ``model`` is evaluating.

    ``dataset`` is any object with ``batches(batch_size, shuffle=False, device=...)`` and ``len``.
    """
    n_batches = (len(dataset) + batch_size - 1) // batch_size
    with evaluating(model):
        batches = dataset.batches(batch_size, shuffle=False, device=device)
        yield from tqdm(batches, total=n_batches, desc=desc, leave=False, disable=not progress)


def capture_features(model, dataset, *, batch_size: int = 512, device="cpu", progress: bool = False,
                     desc: str = "evaluate") -> dict[str, np.ndarray]:
    """Run the STD path over ``dataset`` and keep pooled features, logits and predictions.

    Returns numpy arrays: ``pooled`` (N x K, the feature layer after its ReLU
    averaged over space), ``logits`` (N x C), ``labels``, ``predictions`` and, for
    gated models, ``csg_predictions`` (the CSG path told the true label).
    """
    pooled, logits, labels, csg_pred = [], [], [], []
    gated = getattr(model, "gate", None) is not None
    for images, y in eval_batches(model, dataset, batch_size=batch_size, device=device, progress=progress,
                                  desc=desc):
        out = model(images, y if gated else None)
        pooled.append(out.pooled.float())
        logits.append(out.logits.float())
        labels.append(y)
        if out.csg_logits is not None:
            csg_pred.append(out.csg_logits.argmax(1))
    logits_t = torch.cat(logits)
    result = {
        "pooled": torch.cat(pooled).cpu().numpy(),
        "logits": logits_t.cpu().numpy(),
        "labels": torch.cat(labels).cpu().numpy().astype(np.int64),
        "predictions": logits_t.argmax(1).cpu().numpy().astype(np.int64),
    }
    if csg_pred:
        result["csg_predictions"] = torch.cat(csg_pred).cpu().numpy().astype(np.int64)
    return result
