"""CSG's loss (paper eq. 3) on its own, against a hand computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from csg.methods import csg_loss


def test_csg_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    csg_logits = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    gate = torch.tensor([[1.0, 0.5, 0.25], [0.0, 1.0, 1.0]])          # ||G||_1 = 3.75, C*K = 6
    ce = lambda z, y: float(F.cross_entropy(z, y))  # noqa: E731
    ce_csg, ce_std = ce(csg_logits, labels), ce(logits, labels)
    # rho = 0.5: budget g = 3, excess 0.75; psi = identity / square
    loss, terms = csg_loss(logits, csg_logits, labels, gate, phase="csg", rho=0.5, lambda1=2.0, lambda2=0.1)
    assert float(loss) == pytest.approx(2.0 * ce_csg + 0.1 * 0.75) and set(terms) == {"ce_csg", "penalty"}
    loss, terms = csg_loss(logits, csg_logits, labels, gate, phase="joint", rho=0.5, lambda1=1.0, lambda2=0.1,
                           penalty="l2")
    assert float(loss) == pytest.approx(ce_csg + 0.1 * 0.75 ** 2 + ce_std) and float(terms["ce_std"]) == pytest.approx(ce_std)
    # within the budget the penalty is 0; a fixed gate (None) has none
    loss, terms = csg_loss(logits, csg_logits, labels, gate, phase="csg", rho=1.0, lambda1=1.0, lambda2=5.0)
    assert float(terms["penalty"]) == 0.0
    loss, terms = csg_loss(logits, csg_logits, labels, None, phase="csg", rho=0.5)
    assert "penalty" not in terms and float(loss) == pytest.approx(ce_csg)
    assert math.isclose(ce_csg, math.log(2) / 2 + (math.log(1 + math.exp(-3))) / 2, rel_tol=1e-6)
