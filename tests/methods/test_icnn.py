"""The ICNN filter loss (Zhang et al. 2018): templates, mask, MI against a plain loop, training."""
import json
import math

import numpy as np
import pytest
import torch

from csg.methods import build_method
from csg.methods.icnn import (ICNNMethod, ICNNState, icnn_filter_loss, icnn_filter_mi, icnn_mask,
                              icnn_templates)
from csg.training.config import TrainConfig
from fakes import TinySet, bar_data, tiny_model


# ---- templates and mask ------------------------------------------------------------------
def test_templates_on_a_3x3_map_match_hand_computed_values():
    pos, neg = icnn_templates(3, beta=4.0)
    assert pos.shape == (9, 3, 3) and neg.shape == (3, 3)
    tau = 0.5 / 9
    # centre: d = 0 -> 1; d = 1 -> 1 - 4/3 = -1/3; d = 2 -> 1 - 8/3 clipped to -1
    centre = tau * torch.tensor([[-1, -1 / 3, -1], [-1 / 3, 1, -1 / 3], [-1, -1 / 3, -1]])
    torch.testing.assert_close(pos[4], centre)
    # top-left corner (mu = 0): distances 0 1 2 / 1 2 3 / 2 3 4
    corner = tau * torch.tensor([[1, -1 / 3, -1], [-1 / 3, -1, -1], [-1, -1, -1]])
    torch.testing.assert_close(pos[0], corner)
    # mu = (0, 1) is index 1 in row-major order
    top_mid = tau * torch.tensor([[-1 / 3, 1, -1 / 3], [-1, -1 / 3, -1], [-1, -1, -1]])
    torch.testing.assert_close(pos[1], top_mid)
    torch.testing.assert_close(neg, torch.full((3, 3), -tau))


def test_templates_with_a_smaller_beta_and_a_non_square_map():
    pos, _ = icnn_templates(2, 4, beta=1.0, tau=1.0)
    # d(p, mu) = |dr| / 2 + |dc| / 4; mu = (0, 0)
    expected = torch.tensor([[1, 0.75, 0.5, 0.25], [0.5, 0.25, 0.0, -0.25]])
    torch.testing.assert_close(pos[0], expected)


def test_mask_keeps_the_peak_and_suppresses_far_activations():
    x = torch.ones(1, 2, 5, 5)
    x[0, 0, 1, 1] = 5.0   # peak near the top-left
    x[0, 1, 4, 2] = 3.0   # peak at the bottom edge
    out = icnn_mask(x, beta=4.0)
    assert out[0, 0, 1, 1] == 5.0 and out[0, 1, 4, 2] == 3.0
    # distance 1 -> 1 - 4/5 = 0.2 of the activation; distance >= 2 -> mask <= -0.6 -> relu -> 0
    assert out[0, 0, 1, 2] == pytest.approx(0.2)
    assert out[0, 0, 4, 4] == 0 and out[0, 0, 3, 1] == 0
    assert out[0, 1, 0, 0] == 0 and out[0, 1, 4, 3] == pytest.approx(0.2)
    assert (out >= 0).all()


# ---- the loss ---------------------------------------------------------------------------
def reference_mi(x, labels, filter_classes, beta=4.0):
    """MI(X; T) per filter, written plainly from the definitions (float64, Python loops)."""
    x = x.double().numpy()
    N, K, H, W = x.shape
    L = H * W
    tau, alpha = 0.5 / L, L / (1 + L)
    templates = []
    for mr in range(H):
        for mc in range(W):
            t = np.zeros((H, W))
            for r in range(H):
                for c in range(W):
                    d = abs(r - mr) / H + abs(c - mc) / W
                    t[r, c] = tau * max(1 - beta * d, -1)
            templates.append(t)
    result = []
    for k in range(K):
        support = [n for n in range(N) if labels[n] == filter_classes[k]]
        if support:
            temps = [(alpha / L, t, support) for t in templates] + [(1 - alpha, -tau * np.ones((H, W)), list(range(N)))]
        else:
            temps = [(1.0, -tau * np.ones((H, W)), list(range(N)))]
        lik = []   # p(x_n | T) for each template
        for prior, t, sup in temps:
            e = np.array([math.exp((x[n, k] * t).sum()) if n in sup else 0.0 for n in range(N)])
            lik.append(e / e.sum())
        px = sum(prior * l for (prior, _, _), l in zip(temps, lik))
        mi = 0.0
        for (prior, _, _), l in zip(temps, lik):
            for n in range(N):
                if l[n] > 0:
                    mi += prior * l[n] * math.log(l[n] / px[n])
        result.append(mi)
    return np.array(result)


def test_vectorised_mi_equals_a_plain_per_filter_loop():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(7, 4, 3, 4)) * 6
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    filter_classes = torch.tensor([0, 2, 1, 5])   # the last filter's class is not in the batch
    got = icnn_filter_mi(x.double(), labels, filter_classes).numpy()
    want = reference_mi(x, labels.tolist(), filter_classes.tolist())
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert got[3] == pytest.approx(0.0, abs=1e-12)   # a filter without its category has MI 0
    got32 = icnn_filter_mi(x, labels, filter_classes).numpy()
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-6)


def test_loss_is_finite_with_gradients_for_every_filter_also_for_zero_maps():
    torch.manual_seed(1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    classes = torch.tensor([0, 1, 2, 3, 0])
    for x0 in (torch.relu(torch.randn(8, 5, 6, 6)), torch.zeros(8, 5, 6, 6), torch.randn(8, 5, 6, 6) * 200):
        x = x0.clone().requires_grad_(True)
        loss, masked = icnn_filter_loss(x, labels, classes)
        assert torch.isfinite(loss) and masked.shape == x.shape
        loss.backward()
        assert torch.isfinite(x.grad).all()
        if x0.abs().sum() > 0:
            assert (x.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


def test_maps_that_match_templates_score_lower_than_uniform_maps():
    H = W = 5
    N, K = 10, 3
    labels = torch.zeros(N, dtype=torch.long)
    classes = torch.zeros(K, dtype=torch.long)
    shapes = icnn_templates(H, beta=4.0, tau=1.0)[0]          # S_mu
    positions = torch.randperm(H * W, generator=torch.Generator().manual_seed(0))[:N]
    matched = torch.relu(shapes[positions])[:, None].repeat(1, K, 1, 1) * 40.0   # one part per image
    uniform = torch.full((N, K, H, W), float(matched.mean()))
    loss_matched, _ = icnn_filter_loss(matched, labels, classes)
    loss_uniform, _ = icnn_filter_loss(uniform, labels, classes)
    assert loss_uniform == pytest.approx(0.0, abs=1e-6)   # identical maps carry no information
    assert loss_matched < loss_uniform - 1e-3


# ---- the running category assignment ------------------------------------------------------
def test_state_assigns_each_filter_to_the_class_that_activates_it_most():
    state = ICNNState(3, 4)
    x = torch.zeros(6, 4, 2, 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x[labels == 2, 0] = 1.0
    x[labels == 1, 1] = 2.0
    x[labels == 0, 2] = 0.5
    x[:, 3] = 0.1
    x[labels == 1, 3] = 0.3
    state.update_(x, labels)
    assert state.filter_classes().tolist() == [2, 1, 0, 1]
    # a later batch moves the estimate by ICNN_MOMENTUM, so one contrary batch does not flip filter 0
    x2 = torch.zeros(6, 4, 2, 2)
    x2[labels == 0, 0] = 1.5
    state.update_(x2, labels)
    assert state.class_activation[0, 0] == pytest.approx(0.9 * 0 + 0.1 * 1.5)
    assert state.filter_classes()[0] == 2


# ---- the method in a training loop -----------------------------------------------------------
def test_a_tiny_model_trains_with_the_filter_loss_and_the_mask_is_applied():
    images, labels = bar_data()
    model = tiny_model()
    # the per-step mask (the hook is registered for the step and removed after it)
    method = build_method(TrainConfig(method="icnn", icnn_weight=5.0, icnn_test_mask=False), 4)
    assert isinstance(method, ICNNMethod)
    method.attach(model)
    assert model.icnn.class_activation.shape == (4, 12)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses, ce, filt = [], [], []
    for _ in range(30):
        out = method.step(model, images, labels, method.phase(0))
        assert set(out.terms) == {"ce_std", "icnn_loss"}
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        ce.append(float(out.terms["ce_std"]))
        filt.append(float(out.terms["icnn_loss"]))
    assert method.phase(3) == "icnn"
    # the total can turn negative (-MI), so both parts are checked: each falls
    assert losses[-1] < losses[0] - 0.5
    assert ce[-1] < 0.5 * ce[0] and filt[-1] < filt[0]
    assert not model.backbone[3]._forward_hooks   # the masking hook is gone after the step
    # the step's logits are those of the masked maps
    with torch.no_grad():
        masked_logits = model.head(icnn_mask(model.feature_maps(images)).mean(dim=(2, 3)))
        out = method.step(model, images, labels, "icnn")
        torch.testing.assert_close(out.logits, masked_logits)
    gate = method.gate_matrix(model)
    assert gate.shape == (4, 12) and (gate.sum(axis=0) == 1).all()
    metrics = method.evaluation_metrics(model, TinySet(images, labels), batch_size=20, device="cpu")
    assert 0 <= metrics["icnn_masked_accuracy"] <= 1 and sum(metrics["icnn_filters_per_class"]) == 12


def test_an_earlier_layer_and_the_checkpointed_assignment():
    images, labels = bar_data()
    model = tiny_model()
    method = build_method(TrainConfig(method="icnn", icnn_layer="1"), 4)
    method.attach(model)
    assert model.icnn.class_activation.shape == (4, 8)   # inferred from the conv before the ReLU
    out = method.step(model, images, labels, "icnn")
    out.loss.backward()
    assert method.gate_matrix(model) is None             # not the feature layer's filters
    # a fresh model with the method attached takes the state dict (as load_model_from_run does)
    fresh = tiny_model(seed=1)
    method.attach(fresh)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.icnn.filter_classes(), model.icnn.filter_classes())


def test_the_default_test_time_mask_stays_in_the_network():
    images, labels = bar_data()
    model = tiny_model()
    cfg = TrainConfig(method="icnn")
    assert cfg.icnn_test_mask          # the default: the mask stays at test time (Zhang et al.'s network)
    method = build_method(cfg, 4)
    method.attach(model)
    method.attach(model)               # attaching twice registers one hook
    assert len(model.backbone[3]._forward_hooks) == 1
    out = method.step(model, images, labels, "icnn")
    out.loss.backward()
    model.eval()
    with torch.no_grad():
        plain = model.backbone(model.normalize(images))       # the whole backbone, hook included
        torch.testing.assert_close(model(images).pooled, plain.mean(dim=(2, 3)))
        model.backbone[3]._forward_hooks.clear()
        unmasked = model(images).pooled
        torch.testing.assert_close(plain.mean(dim=(2, 3)),
                                   icnn_mask(model.feature_maps(images)).mean(dim=(2, 3)))
    assert not torch.allclose(unmasked, plain.mean(dim=(2, 3)))


def test_cli_trains_an_icnn_run_end_to_end(tiny_idx_dir, tmp_path):
    from csg.cli import main

    out = tmp_path / "run"
    code = main(["train", "--data", "fashion-mnist", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                 "--method", "icnn", "--epochs", "1", "--out", str(out), "--batch-size", "64", "--no-progress"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["mis"])
    assert metrics["icnn_layer"] == "layer3" and sum(metrics["icnn_filters_per_class"]) == 64
    gate = np.load(out / "gate.npy")
    assert gate.shape == (10, 64) and (gate.sum(axis=0) == 1).all()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["phase"] == "icnn" and "icnn_loss" in log[0]
