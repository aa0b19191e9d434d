"""PICNN (Guo et al. 2024): straight-through draws, the interpretation loss, training, seeding."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from csg.methods import build_method
from csg.methods.picnn import (PICNNCorrespondence, PICNNMethod, picnn_forward, picnn_interpretation_loss,
                               straight_through_bernoulli, straight_through_onehot)
from csg.training.config import TrainConfig
from fakes import TinySet, bar_data, tiny_model


# ---- straight-through estimators ----------------------------------------------------------
def test_straight_through_onehot_is_onehot_forward_and_softmax_backward():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    p = torch.softmax(logits, dim=1)
    index = torch.tensor([0, 3, 1, 1, 2])
    s = straight_through_onehot(p, index)
    assert torch.equal(s.detach(), F.one_hot(index, 4).float())
    upstream = torch.randn(5, 4)
    (grad_st,) = torch.autograd.grad((s * upstream).sum(), logits)
    (grad_soft,) = torch.autograd.grad((torch.softmax(logits, dim=1) * upstream).sum(), logits)
    torch.testing.assert_close(grad_st, grad_soft)


def test_straight_through_bernoulli_is_hard_forward_and_identity_backward():
    torch.manual_seed(1)
    v = torch.randn(6, 8, requires_grad=True)
    pi = torch.sigmoid(v)
    sample = torch.bernoulli(pi.detach())
    m = straight_through_bernoulli(pi, sample)
    assert torch.equal(m.detach(), sample) and set(m.detach().unique().tolist()) <= {0.0, 1.0}
    upstream = torch.randn(6, 8)
    (grad_st,) = torch.autograd.grad((m * upstream).sum(), v)
    (grad_soft,) = torch.autograd.grad((torch.sigmoid(v) * upstream).sum(), v)
    torch.testing.assert_close(grad_st, grad_soft)


def test_q_columns_are_distributions_over_classes():
    torch.manual_seed(2)
    corr = PICNNCorrespondence(7, 20)
    Q = corr.probabilities()
    assert Q.shape == (7, 20) and (Q > 0).all()
    torch.testing.assert_close(Q.sum(dim=0), torch.ones(20))
    torch.testing.assert_close(PICNNCorrespondence(3, 4, init="zeros").probabilities(), torch.full((3, 4), 1 / 3))


def test_keep_probabilities_are_the_drawn_class_row_of_q():
    # peaked logits fix yhat; a near-binary Q fixes the mask: filter k is kept iff it belongs to class yhat
    owner = torch.tensor([0, 1, 2, 0, 1, 2])
    V = torch.full((3, 6), -40.0)
    V[owner, torch.arange(6)] = 40.0
    Q = torch.softmax(V, dim=0)
    logits = torch.tensor([[30.0, 0, 0], [0, 0, 30.0]])
    pooled = torch.ones(2, 6)
    head = nn.Identity()
    z2, yhat = picnn_forward(pooled, logits, head, Q)
    assert yhat.tolist() == [0, 2]
    assert torch.equal(z2, (owner[None, :] == yhat[:, None]).float())


# ---- the interpretation loss -------------------------------------------------------------------
def test_interpretation_loss_uses_only_samples_whose_draw_was_right():
    torch.manual_seed(3)
    z2 = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    yhat = torch.tensor([0, 2, 2, 1, 0, 3])      # right for samples 0, 2, 4
    loss = picnn_interpretation_loss(z2, labels, yhat)
    right = torch.tensor([0, 2, 4])
    torch.testing.assert_close(loss, F.cross_entropy(z2[right], labels[right]))
    loss.backward()
    assert (z2.grad[[1, 3, 5]] == 0).all() and (z2.grad[right].abs().sum(dim=1) > 0).all()
    # changing the logits of the wrong samples changes nothing
    z2b = z2.detach().clone()
    z2b[[1, 3, 5]] = torch.randn(3, 4) * 10
    torch.testing.assert_close(picnn_interpretation_loss(z2b, labels, yhat), loss.detach())
    # no right draw: zero, and still differentiable (zero gradient)
    z2c = torch.randn(6, 4, requires_grad=True)
    none = picnn_interpretation_loss(z2c, labels, (labels + 1) % 4)
    assert float(none.detach()) == 0.0
    none.backward()
    assert (z2c.grad == 0).all()


# ---- the method in a training loop ------------------------------------------------------------
def train_steps(seed, steps=20, lr=3e-2):
    images, labels = bar_data()
    model = tiny_model(seed=0)
    cfg = TrainConfig(method="picnn", seed=seed, picnn_v_optimizer="own")
    method = build_method(cfg, 4)
    method.attach(model)
    extra = method.extra_parameters(model)
    extra_ids = {id(p) for p in extra}
    opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in extra_ids], lr=lr)
    opt_q = torch.optim.Adam(extra, lr=lr)
    torch.manual_seed(seed)
    records = []
    for _ in range(steps):
        out = method.step(model, images, labels, method.phase(0))
        opt.zero_grad()
        opt_q.zero_grad()
        out.loss.backward()
        opt.step()
        opt_q.step()
        records.append({"loss": float(out.loss.detach()), **{k: float(v) for k, v in out.terms.items()}})
    return model, method, records


def test_a_tiny_model_trains_and_q_learns():
    model, method, records = train_steps(seed=0, steps=30)
    assert isinstance(method, PICNNMethod) and method.phase(5) == "picnn"
    assert set(records[0]) == {"loss", "ce_std", "ce_interp", "drawn_right", "interp_accuracy"}
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert records[-1]["drawn_right"] > records[0]["drawn_right"]
    # Q moved away from its initial, near-uniform state and still has distributions as columns
    gate = method.gate_matrix(model)
    assert gate.shape == (4, 12)
    np.testing.assert_allclose(gate.sum(axis=0), 1.0, rtol=1e-5)
    assert method.epoch_summary(model)["q_max_mean"] > 0.3
    assert model.picnn.weight.grad is not None


def test_a_fixed_seed_reproduces_the_run():
    a, _, ra = train_steps(seed=5, steps=6)
    b, _, rb = train_steps(seed=5, steps=6)
    c, _, _ = train_steps(seed=6, steps=6)
    assert ra == rb
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)   # the draws do depend on the seed


def test_checkpointed_matrix_and_evaluation_metrics():
    model, method, _ = train_steps(seed=0, steps=10)
    assert "picnn.weight" in model.state_dict()
    fresh = tiny_model(seed=3)
    method.attach(fresh)                      # what load_model_from_run does before loading
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.picnn.probabilities(), model.picnn.probabilities())
    images, labels = bar_data(seed=1)
    data = TinySet(images, labels)
    state = torch.get_rng_state()
    m1 = method.evaluation_metrics(fresh, data, batch_size=24, device="cpu")
    m2 = method.evaluation_metrics(fresh, data, batch_size=24, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)    # evaluation leaves the global RNG alone
    assert m1 == m2                                       # and is seeded
    for key in ("interpretation_accuracy", "accuracy_true_class_filters_removed"):
        assert 0.0 <= m1[key] <= 1.0
    assert sum(m1["picnn_filters_per_class"]) == 12
    # Q one-hot by class (filter k belongs to class k % 4) and a bias-free head that sums each class's
    # own filters: removing the true class's filters sets its logit to 0 and leaves the others
    owner = torch.arange(12) % 4
    own = (owner[None, :] == torch.arange(4)[:, None]).float()          # C x K
    with torch.no_grad():
        fresh.picnn.weight.copy_(torch.where(own > 0, 40.0, -40.0))
        fresh.head.weight.copy_(own)
        fresh.head.bias.zero_()
        pooled = fresh(images).pooled
    removed_logits = (pooled * (1 - own[labels])) @ own.T
    expected = float((removed_logits.argmax(1) == labels).float().mean())
    m3 = method.evaluation_metrics(fresh, data, batch_size=24, device="cpu")
    assert m3["accuracy_true_class_filters_removed"] == pytest.approx(expected)
    assert expected < 0.5          # most images lose to a class that kept its filters
    assert m3["picnn_filters_per_class"] == [3, 3, 3, 3]


def test_cli_trains_a_picnn_run_end_to_end(tiny_idx_dir, tmp_path):
    from csg.cli import main

    out = tmp_path / "run"
    code = main(["train", "--data", "fashion-mnist", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                 "--method", "picnn", "--epochs", "1", "--out", str(out), "--batch-size", "64", "--no-progress",
                 "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "1e-4", "--gate-lr", "1e-3"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["mis"])
    for key in ("interpretation_accuracy", "accuracy_true_class_filters_removed"):
        assert 0.0 <= metrics[key] <= 1.0
    gate = np.load(out / "gate.npy")
    assert gate.shape == (10, 64)
    np.testing.assert_allclose(gate.sum(axis=0), 1.0, rtol=1e-5)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["phase"] == "picnn" and "ce_interp" in log[0]


def test_v_is_trained_with_the_weights_by_default_and_can_move():
    """The authors train V with the weights (one optimiser): in 20 SGD steps at lr 0.1 an entry of V
    moves further than a separate Adam at lr 1e-3 ever could (at most about 1e-3 per step)."""
    from csg.training.optim import build_optimizers

    images, labels = bar_data()
    steps = 20
    moved = {}
    for choice in ("model", "own"):
        model = tiny_model(seed=0)
        cfg = TrainConfig(method="picnn", seed=0, lr=0.1, picnn_v_optimizer=choice)
        method = build_method(cfg, 4)
        method.attach(model)
        optimizers = build_optimizers(cfg, model, method)
        v_in_model = any(p is model.picnn.weight for g in optimizers["model"].param_groups for p in g["params"])
        assert v_in_model == (choice == "model")
        assert ("gate" in optimizers) == (choice == "own")
        start = model.picnn.weight.detach().clone()
        torch.manual_seed(0)
        for _ in range(steps):
            out = method.step(model, images, labels, method.phase(0))
            for opt in optimizers.values():
                opt.zero_grad()
            out.loss.backward()
            for opt in optimizers.values():
                opt.step()
        moved[choice] = float((model.picnn.weight.detach() - start).abs().max())
    assert moved["own"] <= steps * 1e-3 * 1.05
    assert moved["model"] > 2 * steps * 1e-3
