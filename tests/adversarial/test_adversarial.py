"""White-box attacks, targets, the detector and `csg attack` (METHOD.md section 6)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from csg.adversarial import (FGSM, PGD, BlockFeatures, CarliniWagnerL2, detection_experiment, detector_error,
                             find_blocks, is_adversarial, perturbation_norms, random_targets)
from csg.adversarial.attacks import attack_objective
from csg.adversarial.detector import balanced_sample
from csg.adversarial.run import collect_pairs
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


def test_detection_experiment_means_and_balance():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    clean = rng.normal(size=(120, 4))
    pool = {"clean": clean, "adv": clean + np.array([6.0, 0, 0, 0]), "labels": labels}
    same = {"clean": clean, "adv": clean.copy(), "labels": labels}
    res = detection_experiment(pool, pool, [5, 10], 4, repeats=3, seed=0, n_estimators=20)
    assert set(res) == {"5", "10"} and res["5"]["mean"] == 0.0 and len(res["10"]["errors"]) == 3
    res = detection_experiment(same, same, [10], 4, repeats=2, seed=0, n_estimators=10)
    assert res["10"]["mean"] == 0.5 and res["10"]["std"] == 0.0
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


def test_collect_pairs_keeps_only_successful_pairs_balanced():
    model = linear_model(16, 3, seed=8, scale=0.4)
    feats = BlockFeatures(model, ["1"], forward_fn=model)
    images = (torch.rand(90, 1, 4, 4) * 255).to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    labels[:5] = (labels[:5] + 1) % 3  # a few misclassified images must never be kept
    attack = FGSM(model, eps=0.3)
    order = np.random.default_rng(0).permutation(90)
    pool = collect_pairs(feats, attack, images, labels, None, order, 4, 3, batch_size=16)
    counts = np.bincount(pool["labels"], minlength=3)
    assert counts.max() <= 4 and pool["clean"].shape == pool["adv"].shape == (counts.sum(), 3)
    assert not set(pool["indices"].tolist()) & set(range(5))
    x = images[torch.as_tensor(pool["indices"])].float() / 255
    y = labels[torch.as_tensor(pool["indices"])]
    with torch.no_grad():
        assert bool(is_adversarial(model(attack(x, y)), y, None).all())
        np.testing.assert_allclose(pool["clean"], model(x).numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- csg attack, end to end
def test_csg_attack_end_to_end(tiny_csg_run):
    from csg.cli import main

    # --all-samples bounds the work on a barely trained model (pairs need not be successful).
    code = main(["attack", str(tiny_csg_run), "--train-sizes", "5", "--test-size", "2", "--repeats", "2",
                 "--blackbox-samples", "2", "--pgd-steps", "2", "--cw-steps", "3", "--cw-search-steps", "1",
                 "--ls-rounds", "1", "--query-budget", "450", "--trees", "10", "--batch-size", "64",
                 "--all-samples", "--device", "cpu", "--no-progress", "--seed", "1"])
    assert code == 0
    data = json.loads((tiny_csg_run / "adversarial.json").read_text())
    assert {"detection", "blackbox", "clean_accuracy", "figures", "notes", "attack_success"} <= set(data)
    assert set(data["detection"]) == {"fgsm", "pgd", "cw"}
    assert set(data["blackbox"]) == {"one-pixel", "local-search"}
    assert 0.0 <= data["clean_accuracy"] <= 1.0
    for name, per_size in data["detection"].items():
        entry = per_size["5"]
        assert 0.0 <= entry["mean"] <= 1.0 and len(entry["errors"]) == 2
        assert entry["train_pairs"] <= 50 and entry["test_pairs"] <= 20
    for res in data["blackbox"].values():
        assert res["attempted"] <= 2
        assert res["mean_queries"] <= 450 + 1
    paths = {fig["path"] for fig in data["figures"]}
    assert paths == {"figures/adversarial_examples.png", "figures/adversarial_detection.png"}
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
                                          (["--eps", "2"], "--eps")])
def test_csg_attack_rejects_bad_numbers_before_loading(tmp_path, capsys, flags, named):
    from csg.cli import main

    (tmp_path / "config.json").write_text("{}")  # an empty run: the options must fail before it is read
    assert main(["attack", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1
