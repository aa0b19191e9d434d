"""CSG+: its terms against hand-computed values, each one switchable, and CSG+ with them off is CSG."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from csg.methods import build_method
from csg.methods.csg_plus import class_head_logits, csg_plus_loss, open_share_threshold, suppression_loss
from csg.metrics import class_mass_shares
from csg.training.config import TrainConfig


def test_suppression_by_hand():
    # 3 images (labels 0, 1, 1), 2 filters, 2 classes; gate column 0 opens class 0 only, column 1 both
    pooled = torch.tensor([[2.0, 1.0], [1.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    gate = torch.tensor([[1.0, 1.0], [0.0, 0.5]])
    # filter 0: off-gate mass = images of class 1 = 1 + 1 = 2 of 4; filter 1: (1 - 0.5) * (3 + 0) = 1.5 of 4
    want = (2 / 4 + 1.5 / 4) / 2
    assert float(suppression_loss(pooled, labels, gate)) == pytest.approx(want, rel=1e-5)
    # scale-free: a filter cannot lower it by shrinking
    assert float(suppression_loss(pooled * torch.tensor([0.1, 10.0]), labels, gate)) == pytest.approx(want, rel=1e-4)


def test_class_head_sees_only_the_open_filters_by_hand():
    head = nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        head.bias.copy_(torch.tensor([0.5, -0.5]))
    gate = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])
    a = torch.tensor([[1.0, 1.0, 2.0]])
    z = class_head_logits(a, head, gate)
    assert z.tolist() == [[1 * 1 + 3 * 0.5 * 2 + 0.5, 5 * 1 - 0.5]]


def test_gate_follows_activation_moves_the_gate_only_when_on():
    torch.manual_seed(0)
    pooled = torch.rand(8, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    head = nn.Linear(4, 3)
    for follows, expect_grad in ((True, True), (False, False)):
        gate = torch.full((3, 4), 0.5, requires_grad=True)
        loss, _ = csg_plus_loss(head(pooled), None, pooled, labels, head, gate, rho=1 / 3, lambda1=0.0, lambda2=0.0,
                                penalty="l1", suppression_weight=1.0, class_head_weight=0.0,
                                gate_follows_activation=follows)
        (g,) = torch.autograd.grad(loss, gate, allow_unused=True)
        assert (g is not None and bool((g != 0).any())) == expect_grad
        if follows:
            # dS/dG[c, k] = -(mass of filter k on class c) / (its total mass) / K  (mean over K filters)
            mass = torch.zeros(3, 4).index_add_(0, labels, pooled)
            torch.testing.assert_close(g, -mass / (pooled.sum(0) + 1e-6) / 4)


def test_class_mass_shares_by_hand():
    pooled = [[2.0, 1.0], [1.0, 3.0], [1.0, 0.0]]
    shares = class_mass_shares(pooled, [0, 1, 1], 2)
    np.testing.assert_allclose(shares, [[2 / 4, 1 / 4], [2 / 4, 3 / 4]])


def test_the_gate_opens_exactly_where_the_share_passes_the_threshold():
    # the gradient on G of the budget penalty (over budget, psi = identity) plus suppression is
    # lambda2 - lambda_s * s_ck / K: negative (the entry grows) exactly where s_ck > K * lambda2 / lambda_s
    torch.manual_seed(1)
    pooled = torch.rand(40, 6) ** 3
    labels = torch.arange(40) % 3
    head = nn.Linear(6, 3)
    gate = torch.full((3, 6), 0.9, requires_grad=True)              # density 0.9 > rho: over budget
    lambda2, lambda_s = 0.05, 1.0
    loss, _ = csg_plus_loss(head(pooled), None, pooled, labels, head, gate, rho=1 / 3, lambda1=0.0, lambda2=lambda2,
                            penalty="l1", suppression_weight=lambda_s, class_head_weight=0.0)
    (g,) = torch.autograd.grad(loss, gate)
    shares = class_mass_shares(pooled.numpy(), labels.numpy(), 3)
    tau = open_share_threshold(6, lambda2, lambda_s)
    assert tau == pytest.approx(0.3)
    torch.testing.assert_close(g.double(), torch.from_numpy(lambda2 - lambda_s * shares / 6), rtol=1e-4, atol=1e-6)
    assert ((g < 0).numpy() == (shares > tau)).all()
    assert 0 < (shares > tau).sum() < shares.size                  # the case is not trivial
    assert open_share_threshold(6, lambda2, 0.0) == float("inf")


def _loss_terms(method, model, images, labels, phase):
    out = method.step(model, images, labels, phase)
    return out.loss, out.terms


def test_with_its_terms_off_csg_plus_is_csg_bit_for_bit(tiny_idx_dir, tmp_path):
    """Training runs: CSG (joint) and CSG+ with lambda_s = lambda_h = 0 and CSG's lambda1 end at the same weights."""
    from csg.cli import main
    from csg.training.checkpoint import read_checkpoint

    common = ["--data", "fashion-mnist", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20", "--epochs", "3",
              "--warmup", "1", "--subset", "60", "--test-subset", "20", "--batch-size", "30", "--no-progress",
              "--seed", "0", "--no-evaluate", "--eval-every", "0", "--schedule", "joint"]
    assert main(["train", *common, "--method", "csg", "--out", str(tmp_path / "csg")]) == 0
    assert main(["train", *common, "--method", "csg-plus", "--lambda1", "1", "--suppression-weight", "0",
                 "--class-head-weight", "0", "--out", str(tmp_path / "plus")]) == 0
    a, _ = read_checkpoint(tmp_path / "csg" / "checkpoint.safetensors")
    b, _ = read_checkpoint(tmp_path / "plus" / "checkpoint.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng/"))
    # and with the terms on, the run differs
    assert main(["train", *common, "--method", "csg-plus", "--out", str(tmp_path / "on")]) == 0
    c, _ = read_checkpoint(tmp_path / "on" / "checkpoint.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("model/"))


def test_each_term_is_its_own_switch():
    torch.manual_seed(1)
    pooled = torch.rand(6, 5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    head = nn.Linear(5, 3)
    gate = torch.rand(3, 5)
    kw = dict(rho=1 / 3, lambda1=0.0, lambda2=1e-3, penalty="l1", gate_follows_activation=True)
    base, t0 = csg_plus_loss(head(pooled), None, pooled, labels, head, gate, suppression_weight=0.0,
                             class_head_weight=0.0, **kw)
    sup, t1 = csg_plus_loss(head(pooled), None, pooled, labels, head, gate, suppression_weight=2.0,
                            class_head_weight=0.0, **kw)
    hd, t2 = csg_plus_loss(head(pooled), None, pooled, labels, head, gate, suppression_weight=0.0,
                           class_head_weight=3.0, **kw)
    assert set(t0) == {"penalty", "ce_std"} and "suppression" in t1 and "ce_class_head" in t2
    assert float((sup - base).detach()) == pytest.approx(2.0 * float(suppression_loss(pooled, labels, gate).detach()), rel=1e-5)
    ce_h = nn.functional.cross_entropy(class_head_logits(pooled, head, gate), labels)
    assert float((hd - base).detach()) == pytest.approx(3.0 * float(ce_h.detach()), rel=1e-5)


def test_csg_plus_config_defaults_and_flags():
    cfg = TrainConfig(method="csg-plus")
    assert cfg.lambda1 == 0.0 and TrainConfig(method="csg").lambda1 == 1.0
    m = build_method(cfg, 10)
    assert m.config.rho == pytest.approx(0.1) and m.config.schedule == "joint"
    assert m.phase(0) == "std" and m.phase(2) == "joint"
