"""The intervals behind every comparison: against scipy and hand-computed values."""
import math

import numpy as np
import pytest
from scipy import stats

from csg.metrics import (gate_activation_agreement, independent_bootstrap_mean_difference,
                         matched_bootstrap_mean_difference, paired_bootstrap_mean_difference, paired_t_interval,
                         subsample_interval, wilson_interval)


def test_paired_t_interval_equals_scipy():
    d = np.array([0.012, 0.020, 0.005])
    got = paired_t_interval(d)
    lo, hi = stats.t.interval(0.95, df=2, loc=d.mean(), scale=stats.sem(d))
    assert got.mean == pytest.approx(d.mean()) and got.low == pytest.approx(lo) and got.high == pytest.approx(hi)
    assert got.excludes_zero == (lo > 0)
    one = paired_t_interval([0.3])
    assert one.n == 1 and math.isnan(one.low) and not one.excludes_zero
    # equal differences: sd 0 would give [d, d], "excluding 0" on two seeds; no interval is claimed instead
    same = paired_t_interval([0.011, 0.011, 0.011 + 1e-17])
    assert same.mean == pytest.approx(0.011) and math.isnan(same.low) and math.isnan(same.high)
    assert same.kind == "t, equal differences" and not same.excludes_zero


def test_wilson_interval_hand_value():
    # 9 of 100: p = 0.09, z = 1.96 -> (0.0481, 0.1623), by hand from the formula
    got = wilson_interval(9, 100)
    z = 1.959963984540054
    p = 0.09
    centre = (p + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(p * (1 - p) / 100 + z * z / 40000) / (1 + z * z / 100)
    assert got.low == pytest.approx(centre - half) and got.high == pytest.approx(centre + half)
    assert got.low == pytest.approx(0.0481, abs=1e-4) and got.high == pytest.approx(0.1623, abs=1e-4)
    assert wilson_interval(0, 10).low == 0.0 and wilson_interval(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10).high == pytest.approx(1.0)


def test_bootstraps_cover_a_known_difference():
    rng = np.random.default_rng(0)
    base = rng.random(4000) < 0.80
    better = base | (rng.random(4000) < 0.25)          # about +5 pt, on the same items
    got = paired_bootstrap_mean_difference(better.astype(float), base.astype(float), reps=500)
    assert got.low < got.mean < got.high and got.excludes_zero
    # the paired interval is narrower than treating the two as independent samples
    ind = independent_bootstrap_mean_difference(better.astype(float), base.astype(float), reps=500)
    assert (got.high - got.low) < (ind.high - ind.low)
    same = paired_bootstrap_mean_difference(base.astype(float), base.astype(float), reps=100)
    assert same.mean == 0 and same.low == 0 and same.high == 0


def test_subsample_interval_of_a_mean_is_close_to_the_normal_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, 2000)
    got = subsample_interval(lambda idx: float(x[idx].mean()), x.size, reps=400)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert got.high - got.low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert got.low < x.mean() < got.high


def test_gate_activation_agreement_is_signed():
    # filter 0 fires for class 1 only; filter 1 fires for every class but 0 (unsigned MI would say class 0)
    labels = np.repeat(np.arange(3), 10)
    pooled = np.zeros((30, 2))
    pooled[labels == 1, 0] = 2.0
    pooled[labels != 0, 1] = 1.0 + 0.1 * labels[labels != 0]
    gate = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # filter 1's gate says class 2
    assert gate_activation_agreement(gate, pooled, labels) == 1.0
    gate[:, 1] = [1.0, 0.0, 0.0]
    assert gate_activation_agreement(gate, pooled, labels) == 0.5


def test_matched_bootstrap_pairs_the_shared_items_by_id_and_resamples_the_rest_on_their_own():
    rng = np.random.default_rng(3)
    # Every item shared, in another order: the same per-image values give exactly 0, as the paired bootstrap
    # does; treating them as independent (the old black-box comparison) gives a wide interval.
    values = (rng.random(100) < 0.1).astype(float)
    ids = rng.permutation(1000)[:100]
    order = rng.permutation(100)
    same = matched_bootstrap_mean_difference(values, ids, values[order], ids[order], reps=500)
    assert same.mean == 0 and same.low == 0 and same.high == 0 and same.kind == "bootstrap (matched, 100 shared)"
    ind = independent_bootstrap_mean_difference(values, values[order], reps=500)
    assert ind.high - ind.low > 0.1

    # A partial overlap: the bootstrap variance of mean_a - mean_b is, by hand,
    # (s var(d_shared) + u_a var(own_a) + u_b var(own_b)) / n^2 (population variances, n_a = n_b = n).
    n, s = 400, 300
    a, b = rng.normal(0.0, 1.0, n), rng.normal(0.0, 1.0, n)
    b[:s] = a[:s] + rng.normal(0.1, 0.3, s)  # the shared items, strongly correlated
    ids_a = np.arange(n)
    ids_b = np.concatenate([np.arange(s), np.arange(n, 2 * n - s)])
    got = matched_bootstrap_mean_difference(a, ids_a, b, ids_b, reps=6000, seed=1)
    var = (s * np.var(a[:s] - b[:s]) + (n - s) * np.var(a[s:]) + (n - s) * np.var(b[s:])) / n ** 2
    assert got.mean == pytest.approx(a.mean() - b.mean())
    assert got.high - got.low == pytest.approx(2 * 1.959964 * math.sqrt(var), rel=0.06)

    # No item shared: the independent bootstrap's width; unequal sizes keep each side's mean.
    c, d = rng.normal(0, 1, 300), rng.normal(0.5, 1, 200)
    none = matched_bootstrap_mean_difference(c, np.arange(300), d, np.arange(300, 500), reps=6000)
    ind = independent_bootstrap_mean_difference(c, d, reps=6000)
    assert none.mean == pytest.approx(c.mean() - d.mean())
    assert none.high - none.low == pytest.approx(ind.high - ind.low, rel=0.06)
    with pytest.raises(Exception, match="unique ids"):
        matched_bootstrap_mean_difference(c[:2], [1, 1], d[:2], [1, 2])
