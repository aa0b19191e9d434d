"""One attack's example image pair as two arrays, so that it travels in ``adversarial.npz`` and a journal.

An example is ``{"clean", "adversarial"}`` (C x H x W tensors in [0, 1]) with ``label``, ``target`` (``None``
untargeted), ``prediction`` (the model's class for the adversarial image) and ``success``. Stored as
``images`` (2 x C x H x W float32: clean, adversarial) and ``labels`` (int64: label, target or -1,
prediction, success), a later call that keeps an earlier attack (``csg attack``'s carry-over) can still
draw it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def example_to_arrays(example: dict[str, Any]) -> dict[str, np.ndarray]:
    """``{"images", "labels"}`` of an example (see the module)."""
    images = torch.stack([torch.as_tensor(example["clean"]).detach().cpu().float(),
                          torch.as_tensor(example["adversarial"]).detach().cpu().float()]).numpy()
    target = example.get("target")
    labels = np.array([example["label"], -1 if target is None else target, example["prediction"],
                       int(bool(example["success"]))], dtype=np.int64)
    return {"images": images, "labels": labels}


def example_from_arrays(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The example that :func:`example_to_arrays` stored."""
    images = torch.from_numpy(np.asarray(images, dtype=np.float32).copy())
    label, target, prediction, success = (int(v) for v in np.asarray(labels).tolist())
    return {"clean": images[0], "adversarial": images[1], "label": label,
            "target": None if target < 0 else target, "prediction": prediction, "success": bool(success)}


__all__ = ["example_to_arrays", "example_from_arrays"]
