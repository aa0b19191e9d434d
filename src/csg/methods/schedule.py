"""Which path an epoch trains (Algorithm 1) and the learning-rate factor of an epoch."""
from __future__ import annotations

import math
from typing import Sequence

STD, CSG, JOINT = "std", "csg", "joint"


def epoch_phase(epoch: int, *, schedule: str = "alternate", period: int = 3, csg_epochs: int = 1,
                warmup: int = 0, epochs: int | None = None, final_csg_epochs: int = 0) -> str:
    """The phase of a 0-based epoch.

    ``alternate`` (Algorithm 1): the first ``warmup`` epochs are STD; after them,
    within each period of ``period`` epochs the last ``csg_epochs`` are CSG
    (``period=3, csg_epochs=1`` gives the reference code's ``epoch % 3 == 2``).
    When ``final_csg_epochs`` > 0 (and ``epochs`` is given), the last
    ``final_csg_epochs`` epochs are CSG as well, so the gate ends converged.
    ``joint``: every epoch after the warm-up trains both losses in every step.
    """
    if epoch < warmup:
        return STD
    if schedule == "joint":
        return JOINT
    if epochs is not None and final_csg_epochs > 0 and epoch >= epochs - final_csg_epochs:
        return CSG
    return CSG if (epoch - warmup) % period >= period - csg_epochs else STD


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
