"""csg.metrics against scikit-learn and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_selection import mutual_info_classif

from csg.core.errors import CsgError
from csg.metrics import (accuracy, gap_closed, gate_mi_agreement, gate_unconverged, indicator_entropy, l1_density, l1_interval, mis,
                         mis_ceiling, mutual_information_matrix, per_class_accuracy)


@pytest.fixture(params=["compiled", "numpy"])
def both_paths(request, monkeypatch):
    """Run a test on the numba kernel and on the whole-array numpy path: both must equal scikit-learn."""
    from csg.metrics import mutual_information as M

    if request.param == "compiled" and M._compiled_kernel() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setitem(M._KERNEL, "use", "auto" if request.param == "compiled" else "numpy")
    return request.param


uses_both_paths = pytest.mark.usefixtures("both_paths")


def sklearn_matrix(x, y, num_classes, n_neighbors=3, random_state=0):
    """The reference: one mutual_info_classif call per class with the target y == c."""
    return np.stack([mutual_info_classif(x, y == c, n_neighbors=n_neighbors, random_state=random_state)
                     for c in range(num_classes)], axis=1)


def class_dependent_features(n, k, c, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    # ReLU-like pooled activations: non-negative, some filters tied to a class, some constant zeros
    x = np.maximum(rng.normal(size=(n, k)) + 1.5 * (y[:, None] % k == np.arange(k)), 0.0)
    return x, y


@uses_both_paths
@pytest.mark.parametrize("n,k,c", [(400, 6, 10), (250, 5, 3), (40, 3, 6)])
def test_mi_matrix_equals_sklearn_per_class(n, k, c):
    x, y = class_dependent_features(n, k, c, seed=n)
    np.testing.assert_allclose(mutual_information_matrix(x, y), sklearn_matrix(x, y, c), atol=1e-9)


@uses_both_paths
def test_mi_matrix_with_ties_tiny_classes_and_other_settings():
    rng = np.random.default_rng(3)
    y = np.concatenate([rng.integers(0, 4, 200), [4], [5, 5, 5]])  # a singleton and a 3-member class
    x = np.round(rng.gamma(1.0, size=(y.size, 4)), 1)  # many exact ties
    x[:, 3] = 0.0  # a dead filter
    for kwargs in ({}, {"n_neighbors": 5, "random_state": 7}):
        ref = sklearn_matrix(x, y, 6, **kwargs)
        np.testing.assert_allclose(mutual_information_matrix(x, y, **kwargs), ref, atol=1e-9)


@uses_both_paths
@settings(max_examples=15, deadline=None)
@given(n=st.integers(12, 90), k=st.integers(1, 4), c=st.integers(2, 5), seed=st.integers(0, 10_000))
def test_mi_matrix_property_matches_sklearn(n, k, c, seed):
    x, y = class_dependent_features(n, k, c, seed)
    np.testing.assert_allclose(mutual_information_matrix(x, y, num_classes=c), sklearn_matrix(x, y, c), atol=1e-9)


def test_mi_matrix_chunking_and_tensor_input_do_not_change_it():
    x, y = class_dependent_features(300, 9, 4, seed=1)
    full = mutual_information_matrix(x, y)
    np.testing.assert_array_equal(mutual_information_matrix(x, y, chunk_size=2), full)
    np.testing.assert_allclose(mutual_information_matrix(torch.from_numpy(x), torch.from_numpy(y)), full)


def test_mi_matrix_absent_class_column_is_zero():
    x, y = class_dependent_features(200, 3, 3, seed=2)
    m = mutual_information_matrix(x, y, num_classes=5)
    assert m.shape == (3, 5)
    np.testing.assert_array_equal(m[:, 3:], 0.0)


@uses_both_paths
def test_mi_matrix_with_duplicates_constant_and_signed_features():
    # repeated samples (distance-0 neighbours), a constant non-zero filter (ties in the noise's last
    # bits), signed and coarsely rounded values (ties among distances)
    rng = np.random.default_rng(5)
    base = np.column_stack([rng.normal(size=150), np.round(rng.normal(size=150), 1), rng.gamma(2.0, size=150)])
    x = np.repeat(base, rng.integers(1, 5, 150), axis=0)
    x = np.column_stack([x, np.full(len(x), 7.0)])
    y = rng.integers(0, 5, len(x))
    np.testing.assert_allclose(mutual_information_matrix(x, y), sklearn_matrix(x, y, 5), atol=1e-9)


@uses_both_paths
def test_mi_matrix_with_class_dominated_neighbourhoods_and_small_classes():
    # class 0 fills a stretch of filter 0 (lists crowded by one class), class 1 is nearly everything
    # in the second problem, and classes of 2K + 1 and 2K + 2 members sit on either side of the
    # brute-force / KD-tree switch
    rng = np.random.default_rng(8)
    y = np.concatenate([np.zeros(60, int), rng.integers(2, 6, 240), np.full(7, 6), np.full(8, 7)])
    x = rng.normal(size=(y.size, 3))
    x[y == 0, 0] = rng.uniform(0, 0.05, 60)
    x[:, 1] = np.where(y == 6, 0.01 * rng.normal(size=y.size), x[:, 1])
    np.testing.assert_allclose(mutual_information_matrix(x, y), sklearn_matrix(x, y, 8), atol=1e-9)
    y_big = np.where(np.arange(y.size) < 5, 0, 1)  # the complement of class 1 has 5 <= 2K + 1 members
    np.testing.assert_allclose(mutual_information_matrix(x, y_big), sklearn_matrix(x, y_big, 2), atol=1e-9)


@uses_both_paths
def test_mi_matrix_many_classes_and_threads():
    x, y = class_dependent_features(900, 5, 60, seed=4)  # ~15 members per class, some of 7 or fewer
    full = mutual_information_matrix(x, y, num_classes=60)
    np.testing.assert_allclose(full, sklearn_matrix(x, y, 60), atol=1e-9)
    np.testing.assert_array_equal(mutual_information_matrix(x, y, num_classes=60, n_jobs=2, chunk_size=1), full)


@uses_both_paths
def test_mi_kernel_with_exact_ties_matches_sklearn_estimator():
    # the noise makes exact ties rare; without it (integer values, repeated samples) every tie and
    # distance-0 path of the kernel runs. Reference: scikit-learn's own estimator for one pair.
    from sklearn.feature_selection._mutual_info import _compute_mi_cd

    from csg.metrics.mutual_information import _mi_from_prepared

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 400)
    X = np.column_stack([rng.integers(0, 6, 400), rng.integers(0, 40, 400) * 0.25,
                         np.repeat(rng.normal(size=100), 4), np.full(400, 3.0)]).astype(float)
    X[y == 3, 0] = 2.0  # a class piled on one value
    ref = np.array([[_compute_mi_cd(X[:, k], y == c, 3) for c in range(4)] for k in range(4)])
    np.testing.assert_allclose(_mi_from_prepared(X, y, 4, 3), ref, atol=1e-9)


def test_compiled_kernel_is_used_where_numba_is_installed():
    # a kernel that fails to import would fall back to the numpy path silently; the speed rests on it
    pytest.importorskip("numba")
    from csg.metrics import mutual_information as M

    assert M._compiled_kernel() is not None


def test_sort_rows_and_prev_float_match_numpy():
    from csg.metrics.mutual_information import _prev_float, _sort_rows

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 300))
    X[1, :150] = 1.0 + np.arange(150) * np.finfo(float).eps  # differ in the packed-away bits: fallback row
    X[2, :10] = [0.0, -0.0] * 5
    X[3] = -np.abs(X[3])
    out = np.empty_like(X)
    order = _sort_rows(X, out)
    np.testing.assert_array_equal(out, np.sort(X, axis=1))
    np.testing.assert_array_equal(np.take_along_axis(X, order, axis=1), out)
    d = np.concatenate([np.abs(rng.normal(size=50)), [0.0, 5e-324, np.inf, 1.0]])
    np.testing.assert_array_equal(_prev_float(d), np.nextafter(d, 0))


@pytest.mark.parametrize("features,labels,match", [
    (np.zeros((10, 2)), np.zeros(9, dtype=int), "labels"),
    (np.full((10, 2), np.nan), np.arange(10) % 2, "finite"),
    (np.zeros((10, 2)), np.arange(10) - 1, "label"),
])
def test_mi_matrix_refuses_bad_input(features, labels, match):
    with pytest.raises(CsgError, match=match):
        mutual_information_matrix(features, labels)


def test_mis_is_mean_of_row_maxima():
    m = np.array([[0.1, 0.3], [0.2, 0.05], [0.0, 0.0]])
    assert mis(m) == pytest.approx((0.3 + 0.2 + 0.0) / 3)


def test_ceiling_is_indicator_entropy():
    p = 0.1
    assert mis_ceiling(num_classes=10) == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p))
    assert mis_ceiling(num_classes=10) == pytest.approx(0.325, abs=5e-4)
    # unbalanced labels: the most uncertain indicator bounds a filter's MI
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    assert mis_ceiling(labels=labels) == pytest.approx(indicator_entropy(0.4))
    assert indicator_entropy(0.0) == 0.0 and indicator_entropy(1.0) == 0.0


def test_ceiling_bounds_the_mi_of_a_perfect_filter():
    # a filter that equals the indicator reaches (nearly) H(p): the estimator's upper end
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 4000)
    x = (y == 0).astype(float)[:, None] + 1e-3 * rng.random((4000, 1))
    m = mutual_information_matrix(x, y)
    assert m[0, 0] == pytest.approx(indicator_entropy((y == 0).mean()), rel=0.05)
    assert m.max() <= mis_ceiling(labels=y)


def test_gap_closed_and_interval():
    assert gap_closed(0.1603, 0.1119, 0.325) == pytest.approx((0.1603 - 0.1119) / (0.325 - 0.1119))
    with pytest.raises(CsgError, match="ceiling"):
        gap_closed(0.2, 0.4, 0.3)
    assert l1_interval(10, 0.1) == (0.1, 0.1)


def test_l1_density_and_agreement():
    gate = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    assert l1_density(gate) == pytest.approx(3.0 / 6)
    mi = np.array([[0.3, 0.1], [0.0, 0.2], [0.2, 0.1]])  # argmax per filter: 0, 1, 0
    assert gate_mi_agreement(gate, mi) == pytest.approx(1.0)  # gate argmax 0, 1, 0 (tie -> first)
    assert gate_mi_agreement(gate[::-1], mi) == pytest.approx(1 / 3)
    with pytest.raises(CsgError, match="C x K"):
        gate_mi_agreement(gate, mi.T)


def test_accuracies():
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0])
    assert accuracy(p, y) == pytest.approx(3 / 5)
    np.testing.assert_allclose(per_class_accuracy(p, y, 4), [0.5, 1.0, 0.0, np.nan])


@uses_both_paths
def test_mi_matrix_threads_and_default_jobs_are_bit_identical(monkeypatch):
    import csg.metrics.mutual_information as mi_mod

    # a class of 2 members (< k + 1), a constant filter, a ReLU-like filter with many zeros
    rng = np.random.default_rng(11)
    y = np.concatenate([rng.integers(0, 5, 600), [5, 5]])
    x = np.maximum(rng.normal(size=(y.size, 7)), 0.0).astype(np.float32)
    x[:, 2] = 4.0
    ref = sklearn_matrix(x, y, 6)
    one = mutual_information_matrix(x, y, n_jobs=1)
    np.testing.assert_allclose(one, ref, atol=1e-9)
    assert mi_mod._resolve_jobs(None, 10) == 1
    assert mi_mod._resolve_jobs(None, 1 << 30) == mi_mod._available_cores()
    monkeypatch.setattr(mi_mod, "_PARALLEL_MIN", 1)  # the default takes the threaded path at this size
    monkeypatch.setattr(mi_mod, "_BLOCK_ELEMENTS", 1000)  # several blocks
    for jobs in (None, 2, 3, -1):
        np.testing.assert_array_equal(mutual_information_matrix(x, y, n_jobs=jobs), one)


def test_spans_split_filters_evenly():
    from csg.metrics.mutual_information import _spans

    for F, n, jobs in [(64, 10_000, 2), (64, 10_000, 1), (5, 100, 3), (1, 50, 2), (512, 50_000, 2)]:
        spans = _spans(F, n, None, jobs)
        sizes = [f1 - f0 for f0, f1 in spans]
        assert spans[0][0] == 0 and spans[-1][1] == F and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        if jobs > 1 and F >= jobs:
            assert len(spans) % jobs == 0
    assert _spans(10, 100, 4, 2) == [(0, 4), (4, 8), (8, 10)]


def test_scaled_block_plus_noise_is_prepare_features_bit_for_bit():
    from csg.metrics.mutual_information import _scaled_block, prepare_features

    rng = np.random.default_rng(4)
    base = rng.gamma(2.0, size=(1001, 6))
    for x in (base.astype(np.float32), np.asfortranarray(base), (base * 10).astype(np.int32), base[:, :1]):
        X = prepare_features(x, 3)
        z = np.random.RandomState(3).standard_normal(size=x.shape)
        for f0, f1 in [(0, x.shape[1]), (0, 1), (x.shape[1] - 1, x.shape[1])]:
            Xb, amp = _scaled_block(x, f0, f1)
            Xb += amp[:, None] * z[:, f0:f1].T
            np.testing.assert_array_equal(Xb, X[:, f0:f1].T)


def test_resort_rows_sorts_light_and_heavy_rows():
    from csg.metrics.mutual_information import _resort_rows, _sort_rows

    rng = np.random.default_rng(6)
    X0 = np.round(rng.normal(size=(4, 500)), 2)
    X0[1, :300] = 0.0  # many ties before the noise: a row sorted from scratch
    X0[3] = 1.0  # all tied
    order0 = _sort_rows(X0.copy(), np.empty_like(X0))
    X = X0 + 1e-10 * rng.normal(size=X0.shape)
    out = np.empty_like(X)
    order = _resort_rows(X, order0, out)
    np.testing.assert_array_equal(out, np.sort(X, axis=1))
    np.testing.assert_array_equal(np.take_along_axis(X, order, axis=1), out)
    np.testing.assert_array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(500), (4, 500)))


@uses_both_paths
def test_block_mi_with_and_without_presort_agree_bit_for_bit():
    from csg.metrics.mutual_information import _block_mi, _layout, _sort_rows

    rng = np.random.default_rng(9)
    y = rng.integers(0, 4, 700)
    X0 = np.column_stack([np.maximum(rng.normal(size=700), 0), np.round(rng.gamma(1.0, size=700), 1),
                          rng.normal(size=700)]).T.copy()
    order0 = _sort_rows(X0.copy(), np.empty_like(X0))
    X = X0 + 1e-10 * rng.normal(size=X0.shape)
    lay = _layout(y, 4, 3)
    y8 = y.astype(np.int8)
    np.testing.assert_array_equal(_block_mi(X.copy(), y8, lay, order0), _block_mi(X.copy(), y8, lay))


def test_search_finds_the_first_position_beyond_the_radius():
    from csg.metrics.mutual_information import _search

    rng = np.random.default_rng(1)
    row = np.concatenate([[-np.inf], np.sort(np.round(rng.normal(size=300), 2)), [np.inf]])
    i = rng.integers(1, 301, 2000)
    step = np.where(rng.random(2000) < 0.5, 1, -1)
    r = np.abs(rng.normal(size=2000)) * 0.5
    x = row[i]
    dist = lambda j: (row[j] - x) * step  # noqa: E731
    # reference: walk from x_i outwards to the first sample beyond r
    ref = i.copy()
    while True:
        move = dist(ref) <= r
        if not move.any():
            break
        ref[move] += step[move]
    outside = np.where(step > 0, 301, 0)
    np.testing.assert_array_equal(_search(row, x, r, i, outside, step), ref)


def test_digamma_table_matches_scipy():
    from scipy.special import digamma

    from csg.metrics.mutual_information import _layout

    psi = _layout(np.arange(50) % 3, 3, 3).psi
    assert psi.shape == (51,)
    np.testing.assert_allclose(psi[1:], digamma(np.arange(1, 51)), rtol=0, atol=1e-12)


def test_gate_unconverged_reads_the_interval_with_its_slack():
    base = {"l1_interval": [0.1, 0.1], "gate_fixed": False}
    assert gate_unconverged({**base, "l1_density": 0.12}) is None           # rho + 0.02: still converged
    assert gate_unconverged({**base, "l1_density": 0.1}) is None
    assert gate_unconverged({**base, "l1_density": 0.1201}) == (0.1201, 0.1, pytest.approx(0.12))
    assert gate_unconverged({**base, "l1_density": 0.09}) == (0.09, 0.1, pytest.approx(0.12))
    assert gate_unconverged({**base, "l1_density": 0.13}, slack=0.05) is None
    assert gate_unconverged({**base, "l1_density": 0.5, "gate_fixed": True}) is None   # a fixed layout
    assert gate_unconverged({"accuracy": 0.9}) is None                                   # no gate at all
