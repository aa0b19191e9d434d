"""Work counted in model passes, against a total estimated up front, so a progress bar's ETA holds from the start.

One *pass* is one image through one forward and backward pass of the model
(what one iteration of a white-box attack costs per image); a forward pass
alone (the detector's features, a black-box query) counts 1/3, the usual
ratio of a forward to a forward plus an input-gradient backward. Each piece
of work reports ``remaining_passes()``; the meter sets the bar's total to
``done + sum(remaining)`` after every batch, so the bar's rate (passes per
second, nearly the same for every attack when each runs at the model's speed)
and its total agree, and tqdm's ETA is right without waiting for the end.
"""
from __future__ import annotations

import time
from typing import Protocol, Sequence

from tqdm.auto import tqdm

FORWARD = 1.0 / 3.0  # a forward pass alone, in passes


class Work(Protocol):
    def remaining_passes(self) -> float: ...


class WorkMeter:
    """A tqdm bar in passes whose total is re-estimated from the pending work after every update."""

    def __init__(self, *, progress: bool = True, desc: str = "csg attack"):
        self.done = 0.0
        self.skipped = 0.0
        self.started = time.perf_counter()
        self.bar = tqdm(total=1, desc=desc, unit="pass", unit_scale=True, leave=False, disable=not progress)

    def add(self, passes: float) -> None:
        self.done += float(passes)
        self.bar.update(float(passes))

    def skip(self, passes: float) -> None:
        """Count work an earlier run did (a resumed journal): on the bar, not in the rate of this run."""
        self.add(passes)
        self.skipped += float(passes)

    def estimate(self, pending: Sequence[Work]) -> float:
        """Set the bar's total from the pending work; returns the remaining passes."""
        remaining = float(sum(w.remaining_passes() for w in pending))
        self.bar.total = max(self.done + remaining, self.done, 1e-9)
        self.bar.refresh()
        return remaining

    @property
    def rate(self) -> float:
        """Passes per second so far (0 before any work)."""
        elapsed = time.perf_counter() - self.started
        done = self.done - self.skipped
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    def close(self) -> None:
        self.bar.close()


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"`` or ``"2.1 h"``."""
    if seconds != seconds or seconds == float("inf"):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["WorkMeter", "Work", "FORWARD", "format_seconds"]
