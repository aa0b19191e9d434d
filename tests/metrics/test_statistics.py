"""The intervals behind every comparison: against scipy and hand-computed values."""
import math

import numpy as np
import pytest
from scipy import stats

from csg.metrics import (gate_activation_agreement, independent_bootstrap_mean_difference,
                         paired_bootstrap_mean_difference, paired_t_interval, subsample_interval, wilson_interval)


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
