"""Intervals for the comparisons csg reports: paired differences over seeds, bootstraps over test items,
and binomial proportions.

* :func:`paired_t_interval`: the mean of paired differences ``d_s`` (one per seed) with its 95%
  t interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (none when every ``d_s`` is the same).
* :func:`paired_bootstrap_interval`: one seed, items shared by both runs (the same test images):
  resample item indices with replacement, recompute the difference of a statistic, percentile interval.
* :func:`subsample_interval`: for statistics that duplicates would bias (the k-nearest-neighbour MI
  behind MIS: a resampled duplicate sits at distance 0 from itself), subsamples of ``m`` items drawn
  without replacement, their spread rescaled by ``sqrt(m / (n - m))`` - the finite-population factor
  that makes it exact for a mean (``Var = s^2 (n - m) / (m n)``); with ``m = n/2`` it is 1 (half-sampling,
  the delete-d jackknife with ``d = n/2``).
* :func:`independent_bootstrap_interval`: one seed, items not shared (each model's own successful
  adversarial pairs): each side resampled on its own.
* :func:`matched_bootstrap_mean_difference`: one seed, item sets that overlap (the black-box images and
  detector pairs of two models: the first correctly classified images of one seeded order): the shared
  items resampled together, each side's own items on their own.
* :func:`wilson_interval`: a success rate ``k / n`` with its 95% Wilson score interval.

Every interval is returned as a :class:`Interval` (mean, low, high, n, kind), so a reader can say whether
it excludes 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..core.errors import CsgError

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    kind: str

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > 0 or self.high < 0))

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


#: the kind of a t interval that cannot be formed because every seed gave the same difference
T_EQUAL = "t, equal differences"


def paired_t_interval(differences, level: float = 0.95) -> Interval:
    """Mean of the paired differences and its t interval (``n - 1`` degrees of freedom).

    n = 1 gives NaN bounds. So do n >= 2 equal differences (kind :data:`T_EQUAL`): their sample sd is 0 and
    ``mean +- t * 0`` would be a zero-width interval that "excludes 0" on as few as two seeds. Equal values
    come from a measurement's resolution (accuracy in steps of 1/N), not from a between-seed variance of 0,
    so no interval is claimed; a reader needs more seeds.
    """
    from scipy import stats

    d = np.asarray([x for x in differences if x is not None and np.isfinite(x)], dtype=np.float64)
    n = d.size
    if n == 0:
        raise CsgError("a paired interval needs at least one pair")
    mean = float(d.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, "t")
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # rounding noise of equal values counts as equal
        return Interval(mean, math.nan, math.nan, n, T_EQUAL)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, "t")


def _percentile(mean: float, draws: np.ndarray, n: int, kind: str, level: float) -> Interval:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(mean, math.nan, math.nan, n, kind)
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(mean, float(lo), float(hi), n, kind)


def paired_bootstrap_interval(statistic: Callable[[np.ndarray], float], n_items: int, *, reps: int = 2000,
                              seed: int = 0, level: float = 0.95) -> Interval:
    """``statistic(idx)`` is the difference (method minus baseline) on the items ``idx``; items are shared.

    Percentile interval of ``reps`` resamples of ``n_items`` indices drawn with replacement.
    """
    rng = np.random.default_rng(seed)
    mean = float(statistic(np.arange(n_items)))
    draws = np.array([statistic(rng.integers(0, n_items, n_items)) for _ in range(reps)])
    return _percentile(mean, draws, n_items, "bootstrap", level)


def paired_bootstrap_mean_difference(a, b, *, reps: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` for per-item values on the same items, vectorised over resamples."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n))
    return _percentile(float(d.mean()), d[idx].mean(axis=1), n, "bootstrap", level)


def independent_bootstrap_mean_difference(a, b, *, reps: int = 2000, seed: int = 0,
                                          level: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` for per-item values of two different item sets, each resampled on its own."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, a.size, size=(reps, a.size))].mean(axis=1)
    db = b[rng.integers(0, b.size, size=(reps, b.size))].mean(axis=1)
    return _percentile(float(a.mean() - b.mean()), da - db, min(a.size, b.size), "bootstrap (independent)", level)


def matched_bootstrap_mean_difference(a, ids_a, b, ids_b, *, reps: int = 2000, seed: int = 0,
                                      level: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` for per-item values of two item sets that share some items, named by ``ids``.

    A stratified bootstrap: each resample draws the ``s`` shared items with replacement, once for both
    sides (paired), and each side's ``n_a - s`` and ``n_b - s`` own items on their own, so every
    resample keeps the sizes ``n_a`` and ``n_b``. With every item shared it is
    :func:`paired_bootstrap_mean_difference`; with none, :func:`independent_bootstrap_mean_difference`.
    Ids must be unique within each side.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ids_a, ids_b = np.asarray(ids_a).ravel(), np.asarray(ids_b).ravel()
    if ids_a.size != a.size or ids_b.size != b.size:
        raise CsgError(f"one id per item: {a.size} and {b.size} items, {ids_a.size} and {ids_b.size} ids")
    if np.unique(ids_a).size != ids_a.size or np.unique(ids_b).size != ids_b.size:
        raise CsgError("item ids repeat within one side; a matched bootstrap needs unique ids")
    _, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    own_a, own_b = np.setdiff1d(np.arange(a.size), ia), np.setdiff1d(np.arange(b.size), ib)
    rng = np.random.default_rng(seed)

    def resampled_sums(values_by_side, count):
        if count == 0:
            return [np.zeros(reps) for _ in values_by_side]
        idx = rng.integers(0, count, size=(reps, count))  # one draw for every side given: paired
        return [v[idx].sum(axis=1) for v in values_by_side]

    shared_a, shared_b = resampled_sums([a[ia], b[ib]], ia.size)
    (own_sum_a,) = resampled_sums([a[own_a]], own_a.size)
    (own_sum_b,) = resampled_sums([b[own_b]], own_b.size)
    draws = (shared_a + own_sum_a) / a.size - (shared_b + own_sum_b) / b.size
    return _percentile(float(a.mean() - b.mean()), draws, min(a.size, b.size),
                       f"bootstrap (matched, {ia.size} shared)", level)


def subsample_interval(statistic: Callable[[np.ndarray], float], n_items: int, *, reps: int = 200,
                       fraction: float = 0.5, seed: int = 0, level: float = 0.95) -> Interval:
    """Subsamples without replacement (``m = fraction * n``) for a statistic that duplicated items would
    bias; with ``c = sqrt(m / (n - m))`` the interval is ``[t - c (q_hi - t), t - c (q_lo - t)]``."""
    rng = np.random.default_rng(seed)
    m = max(2, int(round(fraction * n_items)))
    mean = float(statistic(np.arange(n_items)))
    draws = np.array([statistic(np.sort(rng.choice(n_items, m, replace=False))) for _ in range(reps)])
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(mean, math.nan, math.nan, n_items, "subsample")
    q_lo, q_hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    scale = math.sqrt(m / max(n_items - m, 1))
    return Interval(mean, float(mean - scale * (q_hi - mean)), float(mean - scale * (q_lo - mean)), n_items,
                    "subsample")


def wilson_interval(successes: int, trials: int, z: float = Z95) -> Interval:
    """``k / n`` with the Wilson score interval ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``."""
    k, n = int(successes), int(trials)
    if n <= 0 or not 0 <= k <= n:
        raise CsgError(f"a success rate needs 0 <= successes <= trials and trials > 0, got {k} of {n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, "wilson")
