"""Which path an epoch trains (Algorithm 1)."""
from __future__ import annotations

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
