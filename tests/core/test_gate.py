"""The gate's invariants, penalty and fixed layouts."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from csg.core.errors import CsgError
from csg.core.gate import ClassSpecificGate, check_density, fixed_layout, gate_penalty, project_columns_

finite = st.floats(min_value=-5, max_value=5, allow_nan=False, allow_subnormal=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 8), st.integers(1, 12)), elements=finite))
def test_projection_keeps_every_column_max_one_and_entries_in_unit_interval(values):
    g = torch.from_numpy(values.copy())
    project_columns_(g)
    assert torch.all(g >= 0) and torch.all(g <= 1)
    col_max = g.max(dim=0).values
    positive = torch.from_numpy(values).max(dim=0).values > 1e-12
    # every column with a positive entry ends with max exactly 1
    assert torch.allclose(col_max[positive], torch.ones_like(col_max[positive]))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 6), st.integers(1, 10)),
              elements=st.floats(min_value=0.0625, max_value=1, allow_subnormal=False, width=32)))
def test_projection_is_idempotent_and_scales_columns(values):
    g = torch.from_numpy(values.copy())
    project_columns_(g)
    expected = values / values.max(axis=0, keepdims=True)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-6)
    again = g.clone()
    project_columns_(again)
    assert torch.equal(again, g)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(1, 8), st.floats(0.0, 1.0, allow_subnormal=False), st.floats(0.0, 1.0, allow_subnormal=False))
def test_penalty_is_zero_under_budget_and_follows_psi_above(C, K, fill, rho_frac):
    rho = 1.0 / C + rho_frac * (1 - 1.0 / C)
    g = torch.full((C, K), fill)
    excess = max(0.0, fill * C * K - rho * C * K)
    assert gate_penalty(g, rho, "l1").item() == pytest.approx(excess, abs=1e-4)
    assert gate_penalty(g, rho, "l2").item() == pytest.approx(excess ** 2, rel=1e-4, abs=1e-4)
    huber = 0.5 * excess ** 2 if excess < 1 else excess - 0.5
    assert gate_penalty(g, rho, "smooth-l1").item() == pytest.approx(huber, rel=1e-4, abs=1e-4)


def test_penalty_gradient_is_lambda_sign_above_budget():
    g = torch.full((2, 3), 0.9, requires_grad=True)
    gate_penalty(g, 0.5, "l1").backward()
    assert torch.allclose(g.grad, torch.ones_like(g))


def test_rho_below_one_over_c_is_refused_with_the_reason():
    with pytest.raises(CsgError, match="below 1/C"):
        check_density(0.05, 10)
    assert check_density(0.1, 10) == 0.1


def test_fixed_layout_matches_appendix_e():
    layout = fixed_layout(10, 64)  # m1 = 6, m2 = 4
    assert layout.shape == (10, 64)
    assert torch.all(layout.sum(0)[:60] == 1) and torch.all(layout.sum(0)[60:] == 10)
    assert torch.all(layout.sum(1) == 10)  # 6 own + 4 shared per class
    assert torch.equal(layout[3, 18:24], torch.ones(6))
    with pytest.raises(CsgError, match="C\\*m1 \\+ m2"):
        fixed_layout(10, 64, m1=7, m2=4)


def test_fixed_gate_is_frozen_and_not_projected():
    gate = ClassSpecificGate.fixed(4, 10, m1=2, m2=2)
    before = gate.weight.clone()
    assert gate.is_fixed and not gate.weight.requires_grad
    gate.project_()
    assert torch.equal(gate.weight, before)


def test_gate_forward_is_one_gather_of_label_rows():
    gate = ClassSpecificGate(3, 4)
    with torch.no_grad():
        gate.weight.copy_(torch.arange(12.0).view(3, 4) / 12)
    pooled = torch.ones(5, 4)
    labels = torch.tensor([2, 0, 1, 2, 0])
    out = gate(pooled, labels)
    for i, y in enumerate(labels.tolist()):
        assert torch.equal(out[i], gate.weight[y])


def test_l1_density():
    gate = ClassSpecificGate(4, 5, init=0.25)
    assert math.isclose(gate.l1_density(), 0.25, rel_tol=1e-6)
