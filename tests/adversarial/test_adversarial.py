"""White-box attacks, targets, the detector and `csg attack` (METHOD.md section 6)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from csg.adversarial import (FGSM, PGD, BlockFeatures, CarliniWagnerL2, detection_experiment, detector_error,
                             find_blocks, is_adversarial, perturbation_norms, random_targets, wilson_interval)
from csg.adversarial.attacks import attack_objective
from csg.adversarial.detector import balanced_sample
from csg.adversarial.attacks import Attack
from csg.adversarial.collect import AttackCost, PairCollector
from csg.core.errors import CsgError


def linear_model(d: int, c: int, seed: int = 0, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    lin = nn.Linear(d, c)
    with torch.no_grad():
        lin.weight.mul_(scale)
    return nn.Sequential(nn.Flatten(), lin).eval()


def tiny_cnn(seed: int = 0, c: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, c)).eval()


# ---------------------------------------------------------------- FGSM
def test_fgsm_binary_linear_equals_closed_form():
    # Two classes, label 0: grad_x CE = p1 (w1 - w0), so x' = clip(x + eps sign(w1 - w0)).
    model = linear_model(36, 2)
    w = model[1].weight.detach().numpy().astype(np.float64)
    x = torch.rand(5, 1, 6, 6)
    y = torch.zeros(5, dtype=torch.long)
    adv = FGSM(model, eps=0.1)(x, y)
    expected = np.clip(x.numpy().reshape(5, -1) + 0.1 * np.sign(w[1] - w[0]), 0, 1)
    np.testing.assert_allclose(adv.numpy().reshape(5, -1), expected, atol=1e-6)
    # Targeted at class 1 moves the same way (down the target's cross-entropy).
    adv_t = FGSM(model, eps=0.1)(x, y, torch.ones(5, dtype=torch.long))
    np.testing.assert_allclose(adv_t.numpy().reshape(5, -1), expected, atol=1e-6)


def test_fgsm_multiclass_linear_equals_softmax_gradient():
    model = linear_model(25, 4, seed=1)
    lin = model[1]
    w = lin.weight.detach().double().numpy()
    b = lin.bias.detach().double().numpy()
    x = torch.rand(6, 1, 5, 5)
    t = torch.tensor([1, 2, 3, 0, 1, 2])
    xf = x.double().numpy().reshape(6, -1)
    z = xf @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # Targeted: ascend -CE(t): direction W^T (onehot_t - p).
    direction = (np.eye(4)[t.numpy()] - p) @ w
    expected = np.clip(xf + 0.05 * np.sign(direction), 0, 1)
    adv = FGSM(model, eps=0.05)(x, torch.zeros(6, dtype=torch.long), t)
    np.testing.assert_allclose(adv.numpy().reshape(6, -1), expected, atol=1e-6)


# ---------------------------------------------------------------- PGD
def test_pgd_stays_in_ball_and_range():
    model = tiny_cnn()
    x = torch.rand(8, 1, 8, 8)
    x[:, :, 0] = 0.0  # pixels at the edges of the valid range
    x[:, :, 1] = 1.0
    y = torch.randint(0, 4, (8,))
    for random_start in (True, False):
        adv = PGD(model, eps=0.05, steps=10, step_size=0.02, random_start=random_start)(x, y)
        assert float((adv - x).abs().max()) <= 0.05 + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        assert float((adv - x).abs().max()) > 0.04  # it did move


def test_pgd_one_step_without_start_is_fgsm_and_many_steps_not_worse():
    model = tiny_cnn(seed=3)
    x = torch.rand(32, 1, 8, 8)
    y = model(x).argmax(1)
    eps = 0.03
    fgsm = FGSM(model, eps=eps)(x, y)
    one = PGD(model, eps=eps, steps=1, step_size=eps, random_start=False)(x, y)
    torch.testing.assert_close(one, fgsm)
    pgd = PGD(model, eps=eps, steps=10, step_size=eps / 4, random_start=False)(x, y)
    with torch.no_grad():
        loss_f = attack_objective(model(fgsm), y, None)
        loss_p = attack_objective(model(pgd), y, None)
        succ_f = is_adversarial(model(fgsm), y, None).sum()
        succ_p = is_adversarial(model(pgd), y, None).sum()
    assert float(loss_p.mean()) >= float(loss_f.mean())
    assert int(succ_p) >= int(succ_f)


def test_pgd_equals_fgsm_optimum_on_binary_linear_model():
    # For a linear binary model FGSM is the exact maximiser over the box; PGD must reach the same loss.
    model = linear_model(16, 2, seed=4)
    x = torch.rand(10, 1, 4, 4)
    y = torch.randint(0, 2, (10,))
    with torch.no_grad():
        lf = attack_objective(model(FGSM(model, eps=0.1)(x, y)), y, None)
        lp = attack_objective(model(PGD(model, eps=0.1, steps=8, step_size=0.05)(x, y)), y, None)
    torch.testing.assert_close(lp, lf, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- CW
def test_cw_finds_smaller_perturbations_than_pgd():
    model = linear_model(64, 5, seed=5, scale=0.6)
    x = torch.rand(24, 1, 8, 8)
    y = model(x).argmax(1)
    pgd = PGD(model, eps=0.2, steps=10, step_size=0.05, random_start=False)(x, y)
    cw = CarliniWagnerL2(model, steps=50, search_steps=4, initial_const=1.0, lr=0.05)(x, y)
    with torch.no_grad():
        ok = is_adversarial(model(pgd), y, None) & is_adversarial(model(cw), y, None)
    assert int(ok.sum()) >= 5
    l2_cw = perturbation_norms(x, cw)["l2"][ok]
    l2_pgd = perturbation_norms(x, pgd)["l2"][ok]
    assert bool((l2_cw < l2_pgd).all())
    assert float(cw.min()) >= 0 and float(cw.max()) <= 1


def test_cw_returns_clean_image_when_it_cannot_succeed():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

        def forward(self, x):
            return self.b.expand(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)

    x = torch.rand(3, 1, 4, 4)
    y = torch.zeros(3, dtype=torch.long)
    adv = CarliniWagnerL2(Constant(), steps=5, search_steps=2)(x, y)
    torch.testing.assert_close(adv, x)


def test_cw_targeted_hits_the_target():
    model = linear_model(64, 5, seed=6, scale=0.6)
    x = torch.rand(10, 1, 8, 8)
    y = model(x).argmax(1)
    t = random_targets(y, 5, seed=1)
    adv = CarliniWagnerL2(model, steps=50, search_steps=4, initial_const=1.0, lr=0.05)(x, y, t)
    with torch.no_grad():
        hit = model(adv).argmax(1) == t
    changed = (adv != x).flatten(1).any(1)
    # Every changed image hits its target (failures are returned unchanged), and most succeed.
    assert bool(hit[changed].all()) and int(changed.sum()) >= 7


def plain_cw(model, x0, targets, steps, search_steps, c0, lr):
    """The batched CW of the reference code, with torch.optim.Adam and no early stop (the check below)."""
    n = len(x0)
    w0 = torch.atanh((x0 * 2 - 1) * (1 - 1e-6))
    const, lower, upper = torch.full((n,), c0), torch.zeros(n), torch.full((n,), 1e10)
    best_l2, best = torch.full((n,), float("inf")), x0.clone()
    for _ in range(search_steps):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        hit = torch.zeros(n, dtype=torch.bool)
        for _ in range(steps):
            x = (torch.tanh(w) + 1) / 2
            z = model(x)
            l2 = (x - x0).flatten(1).pow(2).sum(1)
            real = z.gather(1, targets[:, None]).squeeze(1)
            others = z.masked_fill(torch.nn.functional.one_hot(targets, z.shape[1]).bool(), float("-inf")).amax(1)
            success = z.argmax(1) == targets
            opt.zero_grad()
            (l2 + const * (others - real).clamp(min=0)).sum().backward()
            with torch.no_grad():
                better = success & (l2 < best_l2)
                best_l2 = torch.where(better, l2.detach(), best_l2)
                best[better] = x.detach()[better]
                hit |= success
            opt.step()
        upper = torch.where(hit, torch.minimum(upper, const), upper)
        lower = torch.where(hit, lower, torch.maximum(lower, const))
        const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
    return best


def test_cw_without_its_early_stops_equals_the_plain_batched_algorithm():
    model = linear_model(64, 5, seed=6, scale=0.6)
    x = torch.rand(12, 1, 8, 8)
    t = random_targets(model(x).argmax(1), 5, seed=1)
    ref = plain_cw(model, x, t, 30, 4, 1.0, 0.05)
    for width in (None, 5):  # the whole batch at once, and a stream through 5 rows
        cw = CarliniWagnerL2(model, steps=30, search_steps=4, initial_const=1.0, lr=0.05, abort_early=False,
                             stop_when_bracketed=False, batch_size=width)
        torch.testing.assert_close(cw(x, model(x).argmax(1), t), ref, atol=1e-5, rtol=0)
        assert cw.passes == 12 * 30 * 4 == 12 * cw.budget_passes


def test_cw_early_stops_act_per_sample_and_count_their_passes():
    model = linear_model(64, 5, seed=6, scale=0.6)
    x = torch.rand(12, 1, 8, 8)
    y = model(x).argmax(1)
    t = random_targets(y, 5, seed=1)
    one = CarliniWagnerL2(model, steps=30, search_steps=4, initial_const=1.0, lr=0.05)
    streamed = CarliniWagnerL2(model, steps=30, search_steps=4, initial_const=1.0, lr=0.05, batch_size=3)
    torch.testing.assert_close(one(x, y, t), streamed(x, y, t), atol=1e-6, rtol=0)
    assert one.passes == streamed.passes < 12 * one.budget_passes
    # c = 100 succeeds at once on this model: with the bracket stop every sample runs one value of c.
    bracket = CarliniWagnerL2(model, steps=20, search_steps=4, initial_const=100.0, lr=0.05, abort_early=False)
    adv = bracket(x, y, t)
    assert bracket.passes == 12 * 20 and bool((model(adv).argmax(1) == t).all())


def test_attack_rejects_images_outside_unit_range():
    with pytest.raises(CsgError, match=r"\[0, 1\]"):
        FGSM(tiny_cnn())(torch.full((1, 1, 4, 4), 2.0), torch.zeros(1, dtype=torch.long))


# ---------------------------------------------------------------- independent implementation (ART)
def _art_classifier(model, shape, classes):
    art_cls = pytest.importorskip("art.estimators.classification",
                                  reason="adversarial-robustness-toolbox is not installed (the independent check)")
    return art_cls.PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=shape, nb_classes=classes,
                                     clip_values=(0.0, 1.0), device_type="cpu")


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_and_pgd_agree_with_art(targeted):
    evasion = pytest.importorskip("art.attacks.evasion", reason="adversarial-robustness-toolbox is not installed")
    model = tiny_cnn(seed=7)
    clf = _art_classifier(model, (1, 8, 8), 4)
    x = torch.rand(12, 1, 8, 8)
    y = model(x).argmax(1)
    t = random_targets(y, 4, seed=2) if targeted else None
    goal = (t if targeted else y).numpy()
    art_fgsm = evasion.FastGradientMethod(clf, eps=0.031, targeted=targeted)
    ours = FGSM(model, eps=0.031)(x, y, t)
    np.testing.assert_allclose(ours.numpy(), art_fgsm.generate(x.numpy(), y=goal), atol=1e-5)
    art_pgd = evasion.ProjectedGradientDescent(clf, eps=0.031, eps_step=0.01, max_iter=5, num_random_init=0,
                                               targeted=targeted, batch_size=12, verbose=False)
    ours = PGD(model, eps=0.031, steps=5, step_size=0.01, random_start=False)(x, y, t)
    np.testing.assert_allclose(ours.numpy(), art_pgd.generate(x.numpy(), y=goal), atol=1e-5)


# ---------------------------------------------------------------- targets
def test_random_targets_differ_from_labels_and_cover_the_others():
    labels = torch.arange(10).repeat(500)
    t = random_targets(labels, 10, seed=3)
    assert bool((t != labels).all())
    counts = np.bincount(((t - labels) % 10).numpy(), minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 400  # offsets 1..9 roughly uniform (5000/9 ~ 556 each)
    torch.testing.assert_close(t, random_targets(labels, 10, seed=3))
    assert not torch.equal(t, random_targets(labels, 10, seed=4))


# ---------------------------------------------------------------- detector
def test_detector_separates_easy_case_and_is_at_chance_on_identical_sets():
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 1, size=(200, 6))
    adv = clean + 10.0
    assert detector_error(clean[:150], adv[:150], clean[150:], adv[150:], seed=0) == 0.0
    # Identical clean and adversarial features: both copies get the same vote, so exactly half is wrong.
    assert detector_error(clean[:150], clean[:150], clean[150:], clean[150:], seed=0) == 0.5


def test_detection_experiment_means_balance_and_per_item_results():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    clean = rng.normal(size=(120, 4))
    shift = np.full(4, 8.0)  # every feature separates the two sides, so every tree is right
    pool = {"clean": clean, "adv": clean + shift, "labels": labels}
    test_clean = rng.normal(size=(12, 4))
    test = {"clean": test_clean, "adv": test_clean + shift, "labels": np.repeat(np.arange(3), 4)}
    res = detection_experiment(pool, test, [5, 10], 4, repeats=3, seed=0, n_estimators=20)
    assert set(res) == {"5", "10"} and res["5"]["mean"] == 0.0 and len(res["10"]["errors"]) == 3
    np.testing.assert_array_equal(res["5"]["clean_correct"], np.ones(12))
    np.testing.assert_array_equal(res["5"]["adv_correct"], np.ones(12))
    # Identical clean and adversarial features: each item's two copies get the same vote in every repeat,
    # so per item exactly one of them is right, and the error is 0.5.
    same = {"clean": clean, "adv": clean.copy(), "labels": labels}
    same_test = {"clean": test_clean, "adv": test_clean.copy(), "labels": test["labels"]}
    res = detection_experiment(same, same_test, [10], 4, repeats=2, seed=0, n_estimators=10)
    assert res["10"]["mean"] == 0.5 and res["10"]["std"] == 0.0
    np.testing.assert_array_equal(res["10"]["clean_correct"] + res["10"]["adv_correct"], np.ones(12))
    errors_from_items = 1 - np.concatenate([res["10"]["clean_correct"], res["10"]["adv_correct"]]).mean()
    assert errors_from_items == pytest.approx(np.mean(res["10"]["errors"]))
    idx = balanced_sample(labels, 7, np.random.default_rng(0))
    assert np.bincount(labels[idx]).tolist() == [7, 7, 7] and len(set(idx.tolist())) == 21


def test_find_blocks_and_block_features_of_resnet20():
    from csg.backbones import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1).eval()
    blocks = find_blocks(model)
    assert blocks == [f"backbone.layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    feats = BlockFeatures(model)
    x = torch.rand(3, 1, 28, 28)
    phi, logits = feats(x)
    assert phi.shape == (3, 16 * 3 + 32 * 3 + 64 * 3)
    out = model(x)
    # The last block is the feature layer: its pooled output is the model's pooled vector.
    torch.testing.assert_close(phi[:, -64:], out.pooled)
    torch.testing.assert_close(logits, out.logits)
    assert feats.dims(x) == [16] * 3 + [32] * 3 + [64] * 3


def test_find_blocks_of_a_flat_conv_stack():
    from csg.backbones import build_model

    model = build_model("alexnet", 10, 1).eval()
    assert find_blocks(model) == ["backbone.features.1", "backbone.features.4", "backbone.features.7",
                                  "backbone.features.9", "backbone.features.11"]


def test_pair_collector_keeps_only_successful_pairs_balanced():
    model = linear_model(16, 3, seed=8, scale=0.4)
    feats = BlockFeatures(model, ["1"], forward_fn=model)
    images = (torch.rand(90, 1, 4, 4) * 255).to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    labels[:5] = (labels[:5] + 1) % 3  # a few misclassified images must never be kept
    attack = FGSM(model, eps=0.3)
    order = np.random.default_rng(0).permutation(90)
    collector = PairCollector(feats, attack, images, labels, None, order, per_class=4, num_classes=3,
                              cost=AttackCost(3, 1), batch_size=16).run()
    pool = collector.pool()
    counts = np.bincount(pool["labels"], minlength=3)
    assert counts.max() <= 4 and pool["clean"].shape == pool["adv"].shape == (counts.sum(), 3)
    assert not set(pool["ids"].tolist()) & set(range(5))
    x = images[torch.as_tensor(pool["ids"])].float() / 255
    y = labels[torch.as_tensor(pool["ids"])]
    with torch.no_grad():
        assert bool(is_adversarial(model(attack(x, y)), y, None).all())
        np.testing.assert_allclose(pool["clean"], model(x).numpy(), rtol=1e-5, atol=1e-5)
    # A class's pairs are its first usable images in the order.
    rank = {int(i): r for r, i in enumerate(order)}
    assert all(rank[a] < rank[b] for a, b in zip(pool["ids"][:-1], pool["ids"][1:]) if labels[a] == labels[b])


class ClassRateAttack(Attack):
    """Fools the two-class model below on a known fraction of each class: pixel (0, 1) holds a uniform u,
    and an image of class y flips when u < rate[y]."""

    def __init__(self, model, rates):
        super().__init__(model)
        self.rates = torch.as_tensor(rates)

    def perturb(self, images, labels, targets):
        self._count(len(images))
        flip = images[:, 0, 0, 1] < self.rates[labels]
        out = images.clone()
        out[flip, 0, 0, 0] = 1 - out[flip, 0, 0, 0]
        return out


def _pixel_zero_classifier() -> nn.Module:
    """Two classes on 2 x 2 images: class 1 when pixel (0, 0) > 1/2."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[:, 0] = torch.tensor([-10.0, 10.0])
        model[1].bias.copy_(torch.tensor([5.0, -5.0]))
    return model


def test_success_rate_is_measured_on_a_fixed_sample_not_on_the_pair_collection():
    # Class 0 falls 90% of the time, class 1 10%, equally many images: the success rate is 0.5. Collecting
    # 100 pairs per class attacks ~111 images of class 0 and ~1000 of class 1, i.e. 200 / 1111 = 0.18.
    model = _pixel_zero_classifier()
    rng = np.random.default_rng(0)
    labels = torch.as_tensor(rng.permutation(np.repeat([0, 1], 1200)))
    images = torch.zeros(2400, 1, 2, 2)
    images[:, 0, 0, 0] = 0.25 + 0.5 * labels
    images[:, 0, 0, 1] = torch.as_tensor(rng.random(2400), dtype=torch.float32)
    feats = BlockFeatures(model, ["1"], forward_fn=model)
    attack = ClassRateAttack(model, [0.9, 0.1])
    cost = AttackCost(2, 1)
    collector = PairCollector(feats, attack, images, labels, None, np.arange(2400), per_class=100, num_classes=2,
                              cost=cost, sample_size=600, batch_size=128).run()
    sample = collector.sample()
    assert len(sample["ids"]) == 600 and sample["ids"].tolist() == list(range(600))  # the first 600, all correct
    rate = sample["success"].mean()
    low, high = wilson_interval(int(sample["success"].sum()), 600)
    assert low < 0.5 < high and abs(rate - 0.5) < 0.06
    # The pairs still come out balanced, and the pair collection alone would have given the biased figure.
    assert np.bincount(collector.pool()["labels"]).tolist() == [100, 100]
    assert cost.usable.sum() / cost.attacked.sum() < 0.3


class CostlyFailureAttack(ClassRateAttack):
    """ClassRateAttack whose failures cost 10 passes and successes 2, as CW's do (every c run to its end)."""

    def perturb(self, images, labels, targets):
        out = super().perturb(images, labels, targets)
        flip = images[:, 0, 0, 1] < self.rates[labels]
        self._sample_passes = torch.where(flip, 2.0, 10.0)
        self._count(int(self._sample_passes.sum()) - len(images))  # the parent counted one pass each
        return out


def test_work_estimate_after_the_first_batch_is_unbiased_for_a_class_that_resists():
    # Class 0 falls 90% of the time, class 1 15%; a failure costs 5x a success. 150 pairs per class need ~170
    # images of class 0 and ~1000 of class 1, nearly all failures. One mean cost per image and a yield pulled
    # towards the mean put the total ~40% short after the first batch. Over seeds (the first batch's own
    # sampling noise is ~25%), the median error of the estimate must stay within 15%.
    model = _pixel_zero_classifier()
    feats = BlockFeatures(model, ["1"], forward_fn=model)
    errors = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        labels = torch.as_tensor(rng.permutation(np.repeat([0, 1], 3000)))
        images = torch.zeros(6000, 1, 2, 2)
        images[:, 0, 0, 0] = 0.25 + 0.5 * labels
        images[:, 0, 0, 1] = torch.as_tensor(rng.random(6000), dtype=torch.float32)
        attack = CostlyFailureAttack(model, [0.9, 0.15])
        done = []
        attack.on_passes = done.append
        collector = PairCollector(feats, attack, images, labels, None, np.arange(6000), per_class=150,
                                  num_classes=2, cost=AttackCost(2, 10), batch_size=256, on_passes=done.append)
        collector.step()
        first = sum(done) + collector.remaining_passes()
        collector.run()
        assert np.bincount(collector.pool()["labels"]).tolist() == [150, 150]
        errors.append(first / sum(done) - 1)
    assert abs(np.median(errors)) < 0.15, errors


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (10, 10), (14, 100), (500, 1000), (1, 1)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        np.testing.assert_allclose(wilson_interval(k, n), (ci.low, ci.high), rtol=1e-9, atol=1e-12)
    assert all(v != v for v in wilson_interval(0, 0))


# ---------------------------------------------------------------- csg attack, end to end
def test_csg_attack_end_to_end(tiny_csg_run, capsys):
    from csg.cli import main

    # --all-samples bounds the work on a barely trained model (pairs need not be successful).
    code = main(["attack", str(tiny_csg_run), "--train-sizes", "5", "--test-size", "2", "--repeats", "2",
                 "--success-samples", "20", "--blackbox-samples", "2", "--pgd-steps", "2", "--cw-steps", "3",
                 "--cw-search-steps", "1", "--ls-rounds", "1", "--query-budget", "850", "--trees", "10",
                 "--batch-size", "64", "--all-samples", "--device", "cpu", "--no-progress", "--seed", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert "estimated time:" in captured.err and "1 generations x 400" in captured.out
    data = json.loads((tiny_csg_run / "adversarial.json").read_text())
    assert data["schema"] == "csg.adversarial/2"
    assert {"detection", "blackbox", "clean_accuracy", "figures", "notes", "attack_success"} <= set(data)
    assert set(data["detection"]) == {"fgsm", "pgd", "cw"}
    assert set(data["blackbox"]) == {"one-pixel", "local-search"}
    assert 0.0 <= data["clean_accuracy"] <= 1.0
    arrays = np.load(tiny_csg_run / "adversarial.npz")
    assert set(data["arrays"]) == set(arrays.files)
    with np.load(tiny_csg_run / "features.npz") as feats:
        correct = feats["predictions"] == feats["labels"]
    for name, per_size in data["detection"].items():
        entry = per_size["5"]
        assert 0.0 <= entry["mean"] <= 1.0 and len(entry["errors"]) == 2
        assert entry["train_pairs"] <= 50 and entry["test_pairs"] <= 20
        ids = arrays[f"{name}.test_ids"]
        assert len(ids) == entry["test_pairs"] == len(arrays[f"{name}.n5.clean_correct"])
        np.testing.assert_allclose(arrays[f"{name}.n5.errors"], entry["errors"])
        items = np.concatenate([arrays[f"{name}.n5.clean_correct"], arrays[f"{name}.n5.adv_correct"]])
        assert 1 - items.mean() == pytest.approx(entry["mean"])
        success = data["attack_success"][name]
        assert success["attempted"] == len(arrays[f"{name}.success_ids"]) == min(20, int(correct.sum()))
        assert success["succeeded"] == int(arrays[f"{name}.success"].sum())
        assert success["ci95"][0] <= success["success_rate"] <= success["ci95"][1]
        assert bool(correct[arrays[f"{name}.success_ids"]].all())  # the sample: correctly classified images
    for name, res in data["blackbox"].items():
        assert res["attempted"] <= 2 and len(arrays[f"{name}.ids"]) == res["attempted"]
        assert bool(correct[arrays[f"{name}.ids"]].all())
        assert int(arrays[f"{name}.queries"].max()) <= res["budget"]["max_queries_per_image"] <= 850
    assert data["blackbox"]["one-pixel"]["budget"] == {"population": 400, "generations": 1,
                                                       "max_queries_per_image": 800}
    paths = {fig["path"] for fig in data["figures"]}
    assert paths == {"figures/adversarial_examples.png", "figures/adversarial_detection.png"}
    assert not list(tiny_csg_run.glob("adversarial.*.partial.npz"))  # the journals go once the result is written
    for path in paths:
        assert (tiny_csg_run / path).is_file()
    assert data["blocks"][0].startswith("backbone.layer1")


def test_csg_attack_rejects_bad_options(tmp_path, capsys):
    from csg.cli import main

    (tmp_path / "config.json").write_text("{}")  # names are checked before the model is loaded
    assert main(["attack", str(tmp_path), "--attacks", "fgsm,deepfool", "--device", "cpu"]) == 2
    assert "deepfool" in capsys.readouterr().err
    assert main(["attack", str(tmp_path), "--train-sizes", "500,lots"]) == 2
    assert "--train-sizes" in capsys.readouterr().err


@pytest.mark.parametrize("flags, named", [(["--query-budget", "0"], "--query-budget"), (["--trees", "0"], "--trees"),
                                          (["--pgd-step-size", "-1"], "--pgd-step-size"),
                                          (["--cw-steps", "0"], "--cw-steps"), (["--test-size", "0"], "--test-size"),
                                          (["--blackbox-samples", "0"], "--blackbox-samples"),
                                          (["--eps", "2"], "--eps"), (["--eps", "nan"], "--eps"),
                                          (["--success-samples", "0"], "--success-samples"),
                                          (["--cw-lr", "0"], "--cw-lr"), (["--ls-r", "3"], "--ls-r"),
                                          (["--op-population", "4"], "--op-population"),
                                          (["--repeats", "-1"], "--repeats"), (["--jobs", "0"], "--jobs"),
                                          (["--query-budget", "100"], "--query-budget")])
def test_csg_attack_rejects_bad_numbers_before_loading(tmp_path, capsys, flags, named):
    from csg.cli import main

    (tmp_path / "config.json").write_text("{}")  # an empty run: the options must fail before it is read
    assert main(["attack", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1


def test_csg_attack_resumes_an_interrupted_black_box_attack(tiny_csg_run, monkeypatch, capsys):
    import csg.adversarial.experiment as experiment
    from csg.adversarial.journal import journal_path
    from csg.cli import main

    argv = ["attack", str(tiny_csg_run), "--attacks", "none", "--blackbox", "one-pixel", "--blackbox-samples", "20",
            "--op-population", "8", "--op-generations", "2", "--device", "cpu", "--no-progress", "--no-figures"]
    assert main(argv) == 0
    with np.load(tiny_csg_run / "adversarial.npz") as arrays:
        whole = {k: arrays[k] for k in arrays.files}
    assert len(whole["one-pixel.ids"]) == 20  # more than one piece of 16 images
    real, calls = experiment.BLACKBOX["one-pixel"], []

    def killed_after_first_piece(*args, index_offset, **kw):
        calls.append(index_offset)
        if index_offset > 0:
            raise KeyboardInterrupt
        return real(*args, index_offset=index_offset, **kw)

    monkeypatch.setitem(experiment.BLACKBOX, "one-pixel", killed_after_first_piece)
    assert main(argv) == 130
    assert "finished attack steps are saved" in capsys.readouterr().err
    assert journal_path(tiny_csg_run, "one-pixel").exists()

    calls.clear()
    monkeypatch.setitem(experiment.BLACKBOX, "one-pixel",
                        lambda *a, index_offset, **kw: calls.append(index_offset) or real(
                            *a, index_offset=index_offset, **kw))
    assert main(argv) == 0
    assert calls == [16]  # the first 16 images came from the journal
    data = json.loads((tiny_csg_run / "adversarial.json").read_text())
    assert any("resumed after 16 of 20 images" in note for note in data["notes"])
    assert data["blackbox"]["one-pixel"]["resumed_images"] == 16
    with np.load(tiny_csg_run / "adversarial.npz") as arrays:
        for key in ("one-pixel.ids", "one-pixel.success", "one-pixel.queries"):
            np.testing.assert_array_equal(arrays[key], whole[key])
    assert not journal_path(tiny_csg_run, "one-pixel").exists()  # removed once the result is written


def test_csg_attack_resumes_an_interrupted_white_box_collection_with_the_same_result(tiny_csg_run, monkeypatch,
                                                                                    capsys):
    import csg.adversarial.collect as collect
    import csg.adversarial.journal as journal
    from csg.cli import main

    # Batches of 4 images: each attack's collection takes several steps. PGD draws its random starts from
    # one generator across steps, so a resume that lost its random state would differ.
    argv = ["attack", str(tiny_csg_run), "--train-sizes", "3", "--test-size", "2", "--repeats", "2",
            "--success-samples", "10", "--pgd-steps", "2", "--cw-steps", "3", "--cw-search-steps", "1",
            "--trees", "5", "--batch-size", "4", "--all-samples", "--blackbox", "none", "--device", "cpu",
            "--no-progress", "--no-figures", "--replace"]
    monkeypatch.setattr(journal, "SAVE_EVERY", 0.0)  # a journal write after every step
    real, steps = collect.PairCollector.step, []

    def counted(self, *a, **kw):
        steps.append(self.attack.name)
        return real(self, *a, **kw)

    monkeypatch.setattr(collect.PairCollector, "step", counted)
    assert main(argv) == 0
    whole = json.loads((tiny_csg_run / "adversarial.json").read_text())
    with np.load(tiny_csg_run / "adversarial.npz") as arrays:
        whole_arrays = {k: arrays[k] for k in arrays.files}
    total = list(steps)
    pgd_steps = [i for i, name in enumerate(total) if name == "pgd"]
    assert len(pgd_steps) >= 3
    stop_at = pgd_steps[2]  # PGD's third step: its first two (and FGSM's collection) are journaled

    def killed(self, *a, **kw):
        if len(steps) == stop_at:
            raise KeyboardInterrupt
        return counted(self, *a, **kw)

    steps.clear()
    monkeypatch.setattr(collect.PairCollector, "step", killed)
    assert main(argv) == 130
    assert "finished attack steps are saved" in capsys.readouterr().err
    assert journal.journal_path(tiny_csg_run, "pgd").exists() and journal.journal_path(tiny_csg_run, "fgsm").exists()
    before = len(steps)

    steps.clear()
    monkeypatch.setattr(collect.PairCollector, "step", counted)
    assert main(argv) == 0
    assert before + len(steps) == len(total)  # no finished step was taken again
    data = json.loads((tiny_csg_run / "adversarial.json").read_text())
    assert any(note.startswith("pgd: resumed after") for note in data["notes"])
    assert data["attack_success"]["pgd"]["resumed_images"] > 0
    with np.load(tiny_csg_run / "adversarial.npz") as arrays:
        assert set(arrays.files) == set(whole_arrays)
        for key in arrays.files:
            np.testing.assert_array_equal(arrays[key], whole_arrays[key], err_msg=key)
    for name in ("fgsm", "pgd", "cw"):
        for field in ("succeeded", "attempted", "passes", "images_attacked", "train_pairs_per_class"):
            assert data["attack_success"][name][field] == whole["attack_success"][name][field], (name, field)
        assert data["detection"][name] == whole["detection"][name]
        assert not journal.journal_path(tiny_csg_run, name).exists()  # removed once the result is written


def test_a_white_box_journal_for_other_settings_or_a_damaged_one_is_not_used(tiny_csg_run, monkeypatch):
    import csg.adversarial.journal as journal
    from csg.adversarial.experiment import compute_adversarial

    monkeypatch.setattr(journal, "SAVE_EVERY", 0.0)
    options = dict(attacks=["fgsm"], train_sizes=[3], test_size=2, repeats=1, success_samples=6, blackbox=[],
                   successful_only=False, batch_size=4, n_estimators=5, device="cpu", progress=False,
                   journal_dir=tiny_csg_run)
    first = compute_adversarial(tiny_csg_run, **options)
    assert journal.journal_path(tiny_csg_run, "fgsm").exists()  # compute never removes it; csg attack does
    again = compute_adversarial(tiny_csg_run, **options)  # a finished collection: nothing attacked again
    assert again.summary["attack_success"]["fgsm"]["resumed_images"] == first.summary["attack_success"]["fgsm"][
        "images_attacked"]
    other = compute_adversarial(tiny_csg_run, **{**options, "seed": 3})
    assert other.summary["attack_success"]["fgsm"]["resumed_images"] == 0
    assert any("written for other settings" in n for n in other.summary["notes"])
    journal.journal_path(tiny_csg_run, "fgsm").write_bytes(b"PK\x03\x04 cut short")
    damaged = compute_adversarial(tiny_csg_run, **options)
    assert any("could not be read" in n for n in damaged.summary["notes"])
    np.testing.assert_array_equal(damaged.arrays["fgsm.success_ids"], first.arrays["fgsm.success_ids"])
    journal.journal_path(tiny_csg_run, "fgsm").unlink()


def test_the_examples_figure_draws_the_attacks_kept_from_an_earlier_call(tiny_csg_run, tmp_path, monkeypatch):
    import shutil

    import csg.adversarial.figures as figures
    from csg.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_csg_run, run, ignore=shutil.ignore_patterns("adversarial*", "figures"))
    common = ["--device", "cpu", "--no-progress"]
    assert main(["attack", str(run), "--attacks", "none", "--blackbox", "one-pixel", "--blackbox-samples", "2",
                 "--op-population", "8", "--op-generations", "1", *common]) == 0
    with np.load(run / "adversarial.npz") as arrays:
        stored = arrays["one-pixel.example.images"]
    drawn, real = {}, figures.plot_examples
    monkeypatch.setattr(figures, "plot_examples", lambda examples, path, **kw: drawn.update(examples) or real(
        examples, path, **kw))
    assert main(["attack", str(run), "--attacks", "fgsm", "--blackbox", "none", "--train-sizes", "3",
                 "--test-size", "2", "--repeats", "1", "--success-samples", "4", "--all-samples", "--trees", "5",
                 *common]) == 0
    assert set(drawn) == {"fgsm", "one-pixel"}  # the earlier call's attack beside this call's
    np.testing.assert_array_equal(np.stack([drawn["one-pixel"]["clean"].numpy(),
                                            drawn["one-pixel"]["adversarial"].numpy()]), stored)
    with np.load(run / "adversarial.npz") as arrays:
        np.testing.assert_array_equal(arrays["one-pixel.example.images"], stored)
        assert arrays["fgsm.example.images"].shape == (2, *stored.shape[1:])


def test_csg_attack_keeps_the_earlier_attacks_it_does_not_run_for_the_same_weights(tiny_csg_run, tmp_path):
    import os
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from csg.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_csg_run, run, ignore=shutil.ignore_patterns("adversarial*", "figures"))
    common = ["--device", "cpu", "--no-progress", "--no-figures"]
    one_pixel = ["attack", str(run), "--attacks", "none", "--blackbox", "one-pixel", "--blackbox-samples", "3",
                 "--op-population", "8", "--op-generations", "1", *common]
    fgsm = ["attack", str(run), "--attacks", "fgsm", "--blackbox", "none", "--train-sizes", "5", "--test-size", "2",
            "--repeats", "2", "--success-samples", "5", "--all-samples", "--trees", "5", *common]

    def read():
        with np.load(run / "adversarial.npz") as arrays:
            return json.loads((run / "adversarial.json").read_text()), {k: arrays[k] for k in arrays.files}

    assert main(one_pixel) == 0
    first, first_arrays = read()
    assert main(fgsm) == 0
    data, arrays = read()
    assert set(data["blackbox"]) == {"one-pixel"} and set(data["detection"]) == {"fgsm"}
    assert data["blackbox"]["one-pixel"] == first["blackbox"]["one-pixel"]
    for key in ("one-pixel.ids", "one-pixel.success", "one-pixel.queries"):
        np.testing.assert_array_equal(arrays[key], first_arrays[key])
    assert set(data["arrays"]) == set(arrays)
    assert data["earlier_settings"]["one-pixel"]["blackbox"] == ["one-pixel"]
    assert any(n.startswith("kept one-pixel from an earlier call on the same weights") for n in data["notes"])

    # Written before the weights were hashed: kept only while the checkpoint is older than the file.
    legacy = dict(data)
    legacy.pop("model_sha256")
    (run / "adversarial.json").write_text(json.dumps(legacy))
    past = os.stat(run / "adversarial.json").st_mtime - 100
    os.utime(run / "checkpoint.safetensors", (past, past))
    assert main(one_pixel) == 0
    data, arrays = read()
    assert set(data["detection"]) == {"fgsm"} and "fgsm.test_ids" in arrays
    assert any("does not name its weights" in n for n in data["notes"])

    # Trained again (other weights): the earlier attacks are dropped, with a note.
    tensors = load_file(run / "checkpoint.safetensors")
    with safe_open(run / "checkpoint.safetensors", "pt") as f:
        meta = f.metadata()
    name = next(k for k, v in tensors.items() if v.is_floating_point() and "weight" in k)
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, run / "checkpoint.safetensors", metadata=meta)
    assert main(fgsm) == 0
    data, arrays = read()
    assert data["blackbox"] == {} and not any(k.startswith("one-pixel.") for k in arrays)
    assert any("were for other weights" in n for n in data["notes"])

    # --replace writes only this call's attacks.
    assert main(one_pixel + ["--replace"]) == 0
    data, arrays = read()
    assert data["detection"] == {} and set(data["blackbox"]) == {"one-pixel"} and "earlier_settings" not in data
