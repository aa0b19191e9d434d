"""Success rates with their 95% Wilson score interval.

For ``k`` successes in ``n`` trials, ``p = k / n`` and ``z = 1.96``:

    centre    = (p + z^2 / (2n)) / (1 + z^2 / n)
    halfwidth = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
    interval  = [centre - halfwidth, centre + halfwidth]

Unlike the normal approximation it stays inside [0, 1] and is not empty at
``k = 0`` or ``k = n`` (Wilson 1927; Brown, Cai and DasGupta 2001 recommend it
for small ``n``). ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``
gives the same numbers (tested).
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / trials``; ``(nan, nan)`` for no trials."""
    k, n = int(successes), int(trials)
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {k}")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_summary(successes: int, trials: int) -> dict:
    """``{success_rate, ci95: [low, high], succeeded, attempted}`` for the JSON (rate ``nan`` without trials)."""
    k, n = int(successes), int(trials)
    low, high = wilson_interval(k, n)
    return {"success_rate": k / n if n else float("nan"), "ci95": [low, high], "succeeded": k, "attempted": n}


__all__ = ["wilson_interval", "rate_summary", "Z95"]
