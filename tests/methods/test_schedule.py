"""Algorithm 1's phases and the learning-rate schedules."""
import math

import pytest

from csg.methods.schedule import CSG, JOINT, STD, epoch_phase
from csg.training.optim import lr_factor


def phases(n, **kw):
    return [epoch_phase(e, epochs=n, **kw) for e in range(n)]


def test_one_in_three_is_the_reference_epoch_mod_3_eq_2():
    got = phases(9, period=3, csg_epochs=1)
    assert [e for e, p in enumerate(got) if p == CSG] == [e for e in range(9) if e % 3 == 2]


def test_warmup_then_two_in_three():
    got = phases(10, period=3, csg_epochs=2, warmup=4)
    assert got == [STD] * 4 + [STD, CSG, CSG, STD, CSG, CSG]


def test_final_csg_epochs_and_joint():
    assert phases(7, period=3, csg_epochs=1, final_csg_epochs=2) == [STD, STD, CSG, STD, STD, CSG, CSG]
    assert phases(4, schedule="joint", warmup=1) == [STD, JOINT, JOINT, JOINT]


def test_lr_factors():
    assert lr_factor(0, 10, "cosine") == 1.0
    assert lr_factor(5, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert [lr_factor(e, 200, "multistep", (0.5, 0.75), 0.1) for e in (0, 99, 100, 149, 150)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert lr_factor(3, 10, "constant") == 1.0
