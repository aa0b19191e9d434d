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
from csg.metrics import (accuracy, gap_closed, gate_mi_agreement, indicator_entropy, l1_density, l1_interval, mis,
                         mis_ceiling, mutual_information_matrix, per_class_accuracy)


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


@pytest.mark.parametrize("n,k,c", [(400, 6, 10), (250, 5, 3), (40, 3, 6)])
def test_mi_matrix_equals_sklearn_per_class(n, k, c):
    x, y = class_dependent_features(n, k, c, seed=n)
    np.testing.assert_allclose(mutual_information_matrix(x, y), sklearn_matrix(x, y, c), atol=1e-9)


def test_mi_matrix_with_ties_tiny_classes_and_other_settings():
    rng = np.random.default_rng(3)
    y = np.concatenate([rng.integers(0, 4, 200), [4], [5, 5, 5]])  # a singleton and a 3-member class
    x = np.round(rng.gamma(1.0, size=(y.size, 4)), 1)  # many exact ties
    x[:, 3] = 0.0  # a dead filter
    for kwargs in ({}, {"n_neighbors": 5, "random_state": 7}):
        ref = sklearn_matrix(x, y, 6, **kwargs)
        np.testing.assert_allclose(mutual_information_matrix(x, y, **kwargs), ref, atol=1e-9)


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
