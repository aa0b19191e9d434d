"""``csg train --tensorboard``: the epoch's log line, the gate and the MI matrix as TensorBoard events.

The writer is :class:`torch.utils.tensorboard.SummaryWriter` (the ``tensorboard`` package provides its
event-file format; ``pip install "csg[tensorboard]"``). Each epoch writes one value per scalar tag at
step = the 1-based epoch, the same numbers as that epoch's line in ``log.jsonl`` (they are read from it),
so the curves and the log never disagree. Only rank 0 writes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import CsgError

#: log.jsonl key -> TensorBoard tag; keys not named here (a method's own terms) go under ``train/``
SCALAR_TAGS = {
    "loss": "loss/total", "ce_std": "loss/ce_std", "ce_csg": "loss/ce_csg", "penalty": "loss/penalty",
    "train_accuracy": "accuracy/train_std", "train_csg_accuracy": "accuracy/train_csg",
    "test_accuracy": "accuracy/test_std", "test_csg_accuracy": "accuracy/test_csg",
    "l1_density": "gate/l1_density", "lr": "lr/model", "gate_lr": "lr/gate",
    "images_per_second": "speed/images_per_second",
}
#: log keys that are bookkeeping, not curves
_NOT_SCALARS = {"epoch", "phase", "seconds"}
#: pixels per matrix entry in the heatmaps, so a 10 x 64 gate is readable in TensorBoard's image panel
CELL = 8


def summary_writer_class():
    """torch's SummaryWriter; a missing ``tensorboard`` package becomes one line naming the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CsgError('--tensorboard needs the tensorboard package; install it with '
                       'pip install "csg[tensorboard]"') from None
    return SummaryWriter


def heatmap(matrix: np.ndarray, cell: int = CELL) -> torch.Tensor:
    """``matrix`` scaled to [0, 1] by its maximum and each entry drawn as a ``cell x cell`` block (H x W)."""
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
    top = float(m.max()) if m.numel() else 0.0
    m = (m / top if top > 0 else m).clamp(0.0, 1.0)
    # one repeat_interleave per axis: a nearest-neighbour enlargement without a loop over entries
    return m.repeat_interleave(cell, 0).repeat_interleave(cell, 1)


class TensorBoardLog:
    """Writes one epoch's scalars and heatmaps into ``RUN/tensorboard/``."""

    def __init__(self, logdir: Path, purge_step: int | None = None):
        self.logdir = Path(logdir)
        self.writer = summary_writer_class()(log_dir=str(self.logdir), purge_step=purge_step)

    def epoch(self, record: dict[str, Any], gate: np.ndarray | None = None, mi: np.ndarray | None = None) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                continue
            self.writer.add_scalar(SCALAR_TAGS.get(key, f"train/{key}"), float(value), step)
        if gate is not None:
            # rows: classes, columns: filters (C x K), as in gate.npy
            self.writer.add_image("gate", heatmap(gate), step, dataformats="HW")
        if mi is not None:
            # transposed to C x K so it lines up with the gate image above it
            self.writer.add_image("mutual_information", heatmap(np.asarray(mi).T), step, dataformats="HW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
