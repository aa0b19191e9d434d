"""Analyses of METHOD.md section 4: known answers on hand-built arrays, then a run directory."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import make_fake_run
import torch.nn as nn

from csg.analysis import (ablation_drops, class_selectivity, cluster_centres, confusion_after_removal,
                          feature_conv, feature_gate_similarity, inter_class_correlation, r_s_curve,
                          removal_filters_csg, removal_filters_std, run_analyses, selectivity_vs_drop,
                          weight_correlation)
from csg.core.errors import CsgError




# ---------------------------------------------------------------------------------------------
# filter weight correlation
# ---------------------------------------------------------------------------------------------
def test_identical_filters_correlate_one_and_orthogonal_zero():
    w = torch.zeros(4, 2, 3, 3)
    w[0, 0, 0, 0] = 1.0
    w[1] = w[0] * 3.0  # same direction, other scale
    w[2, 1, 2, 2] = -2.0  # orthogonal to 0 and 1
    w[3, 0, 0, 0], w[3, 1, 2, 2] = 1.0, 1.0
    corr = weight_correlation(w)
    assert corr[0, 1] == pytest.approx(1.0)
    assert corr[0, 2] == pytest.approx(0.0)
    assert corr[1, 2] == pytest.approx(0.0)
    assert corr[2, 3] == pytest.approx(-1 / math.sqrt(2))
    np.testing.assert_allclose(corr, corr.T)


def test_weight_correlation_matches_explicit_cosine():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    corr = weight_correlation(w)
    flat = w.reshape(5, -1).astype(np.float64)
    expected = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in flat] for a in flat])
    np.testing.assert_allclose(corr, expected, atol=1e-12)


def test_r_s_at_one_counts_exactly_the_duplicate_pairs():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    w[1] = w[0]
    w[3] = w[2] * 0.37  # a scaled duplicate is a duplicate direction
    corr = weight_correlation(w)
    s, r = r_s_curve(corr, grid=[-1.0, 1.0])
    # 6*5 = 30 off-diagonal entries; duplicates (0,1),(1,0),(2,3),(3,2)
    assert r[1] == pytest.approx(4 / 30)
    assert r[0] == pytest.approx(1.0)
    # r_s never increases with s
    _, curve = r_s_curve(corr)
    assert np.all(np.diff(curve) <= 1e-12)


def test_inter_class_correlation_on_hand_built_matrix():
    corr = np.array([[1.0, 0.9, 0.2, 0.4],
                     [0.9, 1.0, 0.0, 0.6],
                     [0.2, 0.0, 1.0, 0.8],
                     [0.4, 0.6, 0.8, 1.0]])
    # class 0 activates filters 0, 1 most; class 1 filters 2, 3
    pooled = np.array([[5.0, 4.0, 1.0, 0.0], [6.0, 3.0, 0.0, 1.0], [0.0, 1.0, 4.0, 5.0], [1.0, 0.0, 3.0, 6.0]])
    labels = np.array([0, 0, 1, 1])
    # C = 2, m = 2: (sum corr[{0,1},{2,3}] + sum corr[{2,3},{0,1}]) / (2 * 1 * 4)
    expected = 2 * (0.2 + 0.4 + 0.0 + 0.6) / 8
    assert inter_class_correlation(corr, pooled, labels, m=2) == pytest.approx(expected)
    # m defaults to K // C = 2
    assert inter_class_correlation(corr, pooled, labels) == pytest.approx(expected)
    # m = 1: A_0 = {0}, A_1 = {3}
    assert inter_class_correlation(corr, pooled, labels, m=1) == pytest.approx(0.4)


def test_feature_conv_finds_the_last_conv_of_the_feature_layer():
    from csg.backbones import build_model

    model = build_model("resnet20", 10, 1)
    name, conv = feature_conv(model)
    assert name == "layer3.2.conv2" and conv.out_channels == 64

    class Wrapped(nn.Module):  # the feature layer is a ReLU: the conv before it counts
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
            self.feature_layer = "2"
            self.num_filters = 6

    name, conv = feature_conv(Wrapped())
    assert name == "1" and conv.out_channels == 6


# ---------------------------------------------------------------------------------------------
# class-filter removal
# ---------------------------------------------------------------------------------------------
def _block_head(C=3, per=2, n=20, seed=0):
    """Head where class c uses only filters A_c = {per*c, ..., per*c + per - 1}; features to match."""
    rng = np.random.default_rng(seed)
    K = C * per
    W = np.zeros((C, K))
    for c in range(C):
        W[c, c * per:(c + 1) * per] = 1.0
    labels = np.repeat(np.arange(C), n)
    pooled = rng.uniform(0.0, 0.2, size=(labels.size, K))
    for c in range(C):
        pooled[labels == c, c * per:(c + 1) * per] += 1.0
    return pooled, labels, W, np.zeros(C)


def test_removing_a_class_filters_makes_it_unrecognised_and_keeps_others():
    pooled, labels, W, b = _block_head()
    gate = np.full((3, 6), 0.2)
    gate[[0, 0, 1, 1, 2, 2], np.arange(6)] = 1.0
    filters = removal_filters_csg(gate, [0])
    np.testing.assert_array_equal(filters, [0, 1])
    before, after = confusion_after_removal(pooled, labels, W, b, filters)
    np.testing.assert_array_equal(np.diag(before), [20, 20, 20])
    assert after[0, 0] == 0 and after[0].sum() == 20
    assert after[1, 1] == 20 and after[2, 2] == 20


def test_confusion_without_removal_is_the_plain_confusion():
    rng = np.random.default_rng(3)
    pooled = rng.normal(size=(50, 8))
    W, b = rng.normal(size=(4, 8)), rng.normal(size=4)
    labels = rng.integers(0, 4, size=50)
    before, after = confusion_after_removal(pooled, labels, W, b, [])
    pred = (pooled @ W.T + b).argmax(1)
    expected = np.zeros((4, 4), dtype=int)
    for t, p in zip(labels, pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(before, expected)
    np.testing.assert_array_equal(after, expected)


def test_removal_filters_std_takes_top_share_per_class():
    pooled, labels, _, _ = _block_head(C=2, per=5)  # K = 10, share 0.2 -> 2 per class
    pooled[labels == 0, 3] += 5.0
    pooled[labels == 0, 1] += 4.0
    got = removal_filters_std(pooled, labels, [0], share=0.2)
    np.testing.assert_array_equal(got, [1, 3])
    both = removal_filters_std(pooled, labels, [0, 1], share=0.2)
    assert set(got) <= set(both) and len(both) == 4


def test_removal_rejects_bad_classes():
    with pytest.raises(CsgError, match="out of range"):
        removal_filters_csg(np.ones((3, 4)), [5])


# ---------------------------------------------------------------------------------------------
# single-unit ablation and selectivity
# ---------------------------------------------------------------------------------------------
def test_one_pass_ablation_equals_ablating_one_by_one():
    rng = np.random.default_rng(4)
    N, K, C = 120, 9, 4
    pooled = np.abs(rng.normal(size=(N, K)))
    W, b = rng.normal(size=(C, K)), rng.normal(size=C)
    labels = rng.integers(0, C, size=N)
    drop, base = ablation_drops(pooled, labels, W, b, budget_bytes=N * C * 4 * 2)  # chunks of 2 filters
    for k in range(K):
        a = pooled.copy()
        a[:, k] = 0.0
        pred = (a @ W.T + b).argmax(1)
        pred0 = (pooled @ W.T + b).argmax(1)
        for c in range(C):
            sel = labels == c
            expected = (pred0[sel] == c).mean() - (pred[sel] == c).mean()
            assert drop[k, c] == pytest.approx(expected, abs=1e-6)
    assert base == pytest.approx(np.array([((pooled @ W.T + b).argmax(1)[labels == c] == c).mean() for c in range(C)]))


def test_one_pass_ablation_with_ties_and_tiny_margins_equals_the_loop():
    # integer features and weights make exact ties (argmax takes the first maximum in both variants)
    rng = np.random.default_rng(7)
    N, K, C = 200, 6, 5
    pooled = rng.integers(0, 3, size=(N, K)).astype(float)
    W = rng.integers(-2, 3, size=(C, K)).astype(float)
    labels = rng.integers(0, C, size=N)
    drop, _ = ablation_drops(pooled, labels, W, None, budget_bytes=512)
    pred0 = (pooled @ W.T).argmax(1)
    for k in range(K):
        a = pooled.copy()
        a[:, k] = 0.0
        pred = (a @ W.T).argmax(1)
        expected = [(pred0[labels == c] == c).mean() - (pred[labels == c] == c).mean() for c in range(C)]
        np.testing.assert_allclose(drop[k], expected, atol=1e-12)


def test_ablating_a_dead_filter_changes_nothing():
    pooled, labels, W, b = _block_head()
    pooled[:, 4] = 0.0
    drop, _ = ablation_drops(pooled, labels, W, b)
    np.testing.assert_array_equal(drop[4], np.zeros(3))
    assert drop.shape == (6, 3)


def test_selectivity_hand_value_and_dead_unit():
    # unit 0: class means 4, 1, 1 -> (4 - 1) / (4 + 1) = 0.6; unit 1: dead -> 0; unit 2: equal -> 0
    pooled = np.array([[4.0, 0.0, 2.0], [1.0, 0.0, 2.0], [1.0, 0.0, 2.0], [4.0, 0.0, 2.0]])
    labels = np.array([0, 1, 2, 0])
    sel, top = class_selectivity(pooled, labels)
    np.testing.assert_allclose(sel, [0.6, 0.0, 0.0])
    assert top[0] == 0


def test_selectivity_vs_drop_is_spearman():
    sel = np.array([0.1, 0.5, 0.3, 0.9])
    drop = np.array([[0.0, 0.01], [0.2, 0.0], [0.05, 0.0], [0.0, 0.4]])  # max drop ranks as sel
    assert selectivity_vs_drop(sel, drop)["spearman"] == pytest.approx(1.0)
    assert math.isnan(selectivity_vs_drop(np.zeros(4), drop)["spearman"])


# ---------------------------------------------------------------------------------------------
# feature-gate similarity and clustering
# ---------------------------------------------------------------------------------------------
def test_similarity_on_a_hand_built_case():
    gate = np.array([[1.0, 0.0], [0.0, 1.0]])
    pooled = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    labels = np.array([0, 0, 1, 0])
    predictions = np.array([0, 0, 1, 1])  # the last sample (class 0) is a false negative
    S = feature_gate_similarity(pooled, labels, predictions, gate)
    np.testing.assert_allclose(S["tp"], np.eye(2), atol=1e-12)
    np.testing.assert_allclose(S["fn"][0], [0.0, 1.0], atol=1e-12)
    assert np.isnan(S["fn"][1]).all()
    np.testing.assert_array_equal(S["tp_count"], [2, 1])
    np.testing.assert_array_equal(S["fn_count"], [1, 0])


def test_kmeans_finds_planted_clusters():
    rng = np.random.default_rng(5)
    centres = np.array([[10.0, 0, 0, 0, 0], [0, 10.0, 0, 0, 0], [0, 0, 10.0, 0, 0]])
    labels = np.repeat(np.arange(3), 30)
    pooled = centres[labels] + rng.normal(scale=0.5, size=(90, 5))
    out = cluster_centres(pooled, labels, seed=0)
    assert out["purity"] == pytest.approx(1.0)
    assert out["ari"] == pytest.approx(1.0)
    np.testing.assert_array_equal(out["majority"], [0, 1, 2])  # renumbered along the diagonal
    np.testing.assert_allclose(out["centres"], centres, atol=0.5)


# ---------------------------------------------------------------------------------------------
# the runner on a run directory
# ---------------------------------------------------------------------------------------------
def _strict_json(path: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"{path.name} holds {token}, which strict JSON readers reject")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("method", ["csg", "std"])
def test_run_analyses_writes_json_and_figures(tmp_path, method):
    from csg.runs.rundir import RunDir

    run = RunDir(make_fake_run(tmp_path / method, method))
    result = run_analyses(run, classes=[0, 1])
    data = _strict_json(run.file("analysis.json"))
    for key in ("removal", "similarity", "correlation", "clusters", "ablation", "figures"):
        assert key in data
    assert data["schema"] == "csg.analysis/2" and data["removal"]["schema"] == "csg.analysis.removal/2"
    assert data["removal"]["primary"] == ("assignment" if method == "csg" else "activation")
    if method == "csg":  # the planted gate gives filters k with k % 10 in {0, 1}
        assert data["removal"]["selections"]["assignment"]["filters"] == [k for k in range(64) if k % 10 in (0, 1)]
    else:
        assert data["similarity"]["reference"] == "mi_matrix"
    assert set(data["correlation"]) >= {"r_s", "c_ic"}
    assert data["correlation"]["layer"] == "layer3.2.conv2"
    assert len(data["ablation"]["selectivity"]) == 64
    assert len(data["figures"]) >= 6
    for fig in data["figures"]:
        assert (run.path / fig["path"]).is_file() and fig["caption"]
    with np.load(run.file("analysis.npz")) as npz:
        assert npz["ablation_drop"].shape == (64, 10)
        assert npz["correlation"].shape == (64, 64)
    assert result["num_filters"] == 64


def test_analyze_cli_rejects_bad_classes(tmp_path, capsys):
    from csg.cli import main

    path = make_fake_run(tmp_path / "run", "csg")
    assert main(["analyze", str(path), "--classes", "0,42"]) == 2
    assert "out of range" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# end to end on the lead's tiny trained runs (conftest fixtures)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_analyze_cli_on_tiny_trained_runs(tiny_csg_run, tiny_std_run, capsys):
    from csg.cli import main

    for run in (tiny_csg_run, tiny_std_run):
        assert main(["analyze", str(run), "--classes", "0,1", "--device", "cpu"]) == 0
        data = _strict_json(Path(run) / "analysis.json")
        assert {"removal", "similarity", "correlation", "clusters", "ablation", "figures"} <= set(data)
        assert "r_s" in data["correlation"] and "c_ic" in data["correlation"]
        for fig in data["figures"]:
            assert (Path(run) / fig["path"]).is_file()
    assert "analysis.json" in capsys.readouterr().out


def test_removal_uses_each_methods_own_assignment(tmp_path):
    """A PICNN run's gate.npy holds Q (softmax columns, maxima well below 0.5): its filters are removed by
    argmax_c Q[c, k], not by Q > 0.5 (which would remove none)."""
    from csg.runs.rundir import RunDir

    path = make_fake_run(tmp_path / "picnn", "std")
    run = RunDir(path)
    model = run.load_model()          # the fake run's weights; the method's own parameters play no part
    C, K = 10, 64
    owner = np.arange(K) % C
    V = np.full((C, K), 0.0)
    V[owner, np.arange(K)] = 1.5                     # softmax max = e^1.5 / (e^1.5 + 9) ~ 0.33
    Q = np.exp(V) / np.exp(V).sum(axis=0, keepdims=True)
    assert Q.max() < 0.5
    np.save(path / "gate.npy", Q.astype(np.float32))
    cfg = json.loads((path / "config.json").read_text())
    cfg["method"] = "picnn"
    (path / "config.json").write_text(json.dumps(cfg))
    data = run_analyses(run, classes=[0, 1], figures=False, model=model)
    sel = data["removal"]["selections"]["assignment"]
    assert data["removal"]["primary"] == "assignment"
    assert sel["filters"] == [k for k in range(K) if owner[k] in (0, 1)]
    assert "argmax" in sel["criterion"]
