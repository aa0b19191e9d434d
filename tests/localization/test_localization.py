"""Localization: maps, regions, IoU/AP scoring and the `csg localize` pipeline (METHOD.md section 5)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from csg.core.errors import CsgError
from csg.localization import (CAM, ActivMap, DatasetQuantile, FixedThreshold, GradMap, ImageQuantile,
                              StreamingQuantile, assign_classes, filter_tables, gaussian_blur, iou, localize,
                              score_filters, score_images)
from csg.core.model import GatedClassifier


def tiny_model(k: int = 4, c: int = 3, in_ch: int = 1, seed: int = 0) -> GatedClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_ch, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, k, 3, padding=1), nn.ReLU())
    return GatedClassifier(net, "4", c, num_filters=k).eval()


# ---- IoU and scoring -------------------------------------------------------------------------
def test_iou_known_values():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :] = True  # 8 pixels
    masks[1, :, :1] = True  # 4 pixels
    regions = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    regions[0, 0, :2, :] = True  # identical: 1
    regions[0, 1, :1, :] = True  # inside: 4 / 8
    regions[0, 2, 2:, :] = True  # disjoint: 0
    regions[1, 0, :, :2] = True  # 4 / 8
    regions[1, 1, :2, :1] = True  # 2 / 4
    # regions[1, 2] empty: 0 / 4
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    assert torch.equal(iou(regions, masks), expected)
    assert torch.equal(iou(regions[:, 1], masks), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # both empty counts as 0, not nan
    assert iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 0.0


def test_filter_equal_to_mask_scores_one():
    torch.manual_seed(0)
    n, c = 12, 3
    masks = torch.rand(n, 8, 8) > 0.6
    labels = torch.arange(n) % c
    regions = torch.stack([masks, ~masks, torch.zeros_like(masks)], dim=1)  # filter 0 == mask
    ious = iou(regions, masks)
    res = score_filters(filter_tables(ious, labels, c), select_ap=20, class_names=["a", "b", "c"])
    pf = res["per_filter"]
    assert pf["avg_iou"][0] == 1.0 and pf["ap20"][0] == 1.0 and pf["ap30"][0] == 1.0
    assert pf["avg_iou"][1] == 0.0 and pf["ap20"][1] == 0.0
    # totals are means over the three filters
    assert res["avg_iou"] == pytest.approx(1 / 3) and res["total"]["ap30"] == pytest.approx(1 / 3)


def test_filter_class_rule_and_class_means():
    # 2 classes x 3 images each, 3 filters; IoUs chosen by hand
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    ious = torch.tensor([
        # f0   f1    f2
        [0.25, 0.10, 0.50],
        [0.25, 0.10, 0.50],
        [0.10, 0.10, 0.50],
        [0.05, 0.40, 0.35],
        [0.05, 0.40, 0.10],
        [0.05, 0.10, 0.10],
    ], dtype=torch.float64)
    t = filter_tables(ious, labels, 2)
    # AP20: f0 = (2/3, 0), f1 = (0, 2/3), f2 = (1, 1/3); AP30: f0 = (0, 0) -> tie, broken by IoU
    np.testing.assert_allclose(t["ap20"], [[2 / 3, 0, 1], [0, 2 / 3, 1 / 3]])
    np.testing.assert_allclose(t["iou"][:, 0], [0.6 / 3, 0.05])
    assert assign_classes(t, 20).tolist() == [0, 1, 0]
    assert assign_classes(t, 30).tolist() == [0, 1, 0]  # f0 AP30 ties at 0: larger IoU (class 0) wins
    res = score_filters(t, select_ap=20, class_names=["x", "y"])
    # class x: filters 0 and 2 -> IoU mean of (0.2, 0.5); class y: filter 1 -> 0.3
    assert res["per_class"]["x"]["avg_iou"] == pytest.approx((0.2 + 0.5) / 2)
    assert res["per_class"]["x"]["num_filters"] == 2
    assert res["per_class"]["y"]["avg_iou"] == pytest.approx(0.3)
    assert res["per_class"]["y"]["ap20"] == pytest.approx(2 / 3)
    assert res["avg_iou"] == pytest.approx((0.2 + 0.3 + 0.5) / 3)
    assert res["ap20"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_cam_image_scores():
    ious = np.array([0.1, 0.25, 0.3, 0.9])
    labels = np.array([0, 0, 1, 1])
    res = score_images(ious, labels, 2, ["a", "b"])
    assert res["avg_iou"] == pytest.approx(0.3875)
    assert res["ap20"] == pytest.approx(0.75) and res["ap30"] == pytest.approx(0.5)
    assert res["per_class"]["a"]["avg_iou"] == pytest.approx(0.175)
    assert res["per_class"]["b"]["ap30"] == 1.0


# ---- regions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "constant", "wrap"])
@pytest.mark.parametrize("sigma", [0.8, 3.0, 30.0])
def test_blur_matches_scipy(mode, sigma):
    rng = np.random.default_rng(1)
    m = rng.random((2, 3, 19, 23))
    ours = gaussian_blur(torch.from_numpy(m), sigma, mode=mode).numpy()
    ref = np.stack([[gaussian_filter(m[i, j], sigma, mode=mode, truncate=4.0) for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_thresholds_by_hand():
    maps = torch.tensor([[[0.5, 1.0], [1.5, 3.0]]])
    assert FixedThreshold(1.0).regions(maps).tolist() == [[[False, False], [True, True]]]
    # top 30% of [0.5, 1, 1.5, 3]: np.quantile(., 0.7) = 1.5 + 0.1 * 1.5 = 1.65 -> only 3.0
    assert ImageQuantile(0.3).regions(maps).tolist() == [[[False, False], [False, True]]]
    # top 60%: quantile 0.4 = 1.0 + 0.2 * 0.5 = 1.1 -> {1.5, 3}
    assert ImageQuantile(0.6).regions(maps).tolist() == [[[False, False], [True, True]]]
    x = torch.rand(5, 2, 7, 6)
    lev = np.quantile(x.numpy().reshape(5, 2, -1), 0.7, axis=-1)
    np.testing.assert_array_equal(ImageQuantile(0.3).regions(x).numpy(), x.numpy() >= lev[..., None, None])


def test_streaming_quantile_matches_numpy():
    torch.manual_seed(0)
    sq = StreamingQuantile(3, bins=1024)
    seen = []
    for i in range(6):  # the range grows both ways from batch to batch
        b = torch.randn(7, 3, 5, 4) * (1 + i) + 0.5 * i
        b[:, 0] = b[:, 0].relu()  # a ReLU-like channel with many exact zeros
        sq.update(b)
        seen.append(b)
    values = torch.cat(seen).transpose(0, 1).reshape(3, -1).numpy()
    for p in (0.0, 0.3, 0.7, 0.9, 1.0):
        est = sq.quantile(p).numpy()
        exact = np.quantile(values.astype(np.float64), p, axis=1)
        assert np.all(np.abs(est - exact) <= sq.bin_width().numpy() + 1e-12), (p, est, exact)
    # the stated bound on the bin width, <= 4 x range / (bins - 1), holds
    assert np.all(sq.bin_width().numpy() <= 4 * np.ptp(values.astype(np.float64), axis=1) / 1023)


def _fit(rule, batches):
    while rule.needs_fit:
        for b in batches:
            rule.update(b)
        rule.end_pass()
    return rule.finish()


@pytest.mark.parametrize("gather", [1 << 18, 3])   # 3: force the finer-histogram passes
def test_activmap_level_is_np_quantile_over_all_cells_even_for_sparse_filters(gather):
    """The dataset-level top-30% level of each filter equals np.quantile over all its cells, also for a
    sparse filter whose zeros are more than 70% of its cells (level exactly 0: the rule's region is every
    cell, not "the non-zero cells" that an estimate a hair above 0 would give)."""
    torch.manual_seed(0)
    seen = []
    for i in range(6):
        b = torch.randn(7, 4, 5, 4) * (1 + i) + 0.5 * i
        b[:, 0] = b[:, 0].relu()
        b[:, 1] = (b[:, 1] - 3).relu()        # a sparse, class-specific filter: ~75% zeros
        b[:, 3] = torch.round(b[:, 3])         # heavy ties
        seen.append(b)
    values = torch.cat(seen).transpose(0, 1).reshape(4, -1).numpy().astype(np.float64)
    assert (values[1] == 0).mean() > 0.7
    from csg.localization.regions import ExactQuantile

    rule = DatasetQuantile(0.3, bins=64, gather=gather)
    level = _fit(rule, seen).numpy()
    exact = np.quantile(values, 0.7, axis=1)
    assert level[1] == 0.0 == exact[1]
    np.testing.assert_allclose(level, exact, rtol=1e-12, atol=0)
    regions = rule.regions(seen[0])
    assert bool(regions[:, 1].all())          # level 0: every cell is in the region (m >= 0)
    for p in (0.0, 0.5, 0.9, 1.0):            # any level, any rank
        eq = ExactQuantile(4, p, bins=64, gather=gather)
        while True:
            for b in seen:
                eq.update(b)
            if eq.end_pass():
                break
        np.testing.assert_allclose(eq.quantile().numpy(), np.quantile(values, p, axis=1), rtol=1e-12, atol=0)


# ---- maps --------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["replicate", "shared"])
def test_batched_gradmap_equals_per_filter_autograd(strategy):
    model = tiny_model(k=5, in_ch=3)
    x = torch.rand(3, 3, 12, 12)
    gm = GradMap(sigma=1.5, chunk=7, strategy=strategy)  # replicate: 2 filters per pass, passes of 2, 2, 1
    maps = gm(model, x)
    ref = []
    for k in range(5):  # the slow way: one backward per filter
        xx = x.clone().requires_grad_(True)
        a = model.feature_maps(xx).mean(dim=(2, 3))[:, k].sum()
        (g,) = torch.autograd.grad(a, xx)
        mag = g.pow(2).sum(1).sqrt()
        rms = mag.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
        mag = torch.where(rms > 0, mag / rms.clamp(min=1e-30), torch.zeros_like(mag))  # dead filter: zero map
        ref.append(np.stack([gaussian_filter(m, 1.5, mode="reflect") for m in mag.numpy()]))
    ref = np.stack(ref, axis=1)
    assert (np.abs(ref).reshape(3, 5, -1).max(-1) > 0).sum() >= 5  # most image-filter pairs are alive
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-4, atol=1e-5)
    sub = gm(model, x, filters=[3, 1])
    np.testing.assert_allclose(sub.numpy(), ref[:, [3, 1]], rtol=1e-4, atol=1e-5)


def test_activmap_and_cam_by_hand():
    model = tiny_model(k=4, c=3)
    x = torch.rand(2, 1, 8, 8)
    a = model.feature_maps(x).detach()
    am = ActivMap()(model, x)
    for k in range(4):
        ref = F.interpolate(a[:, k:k + 1], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(am[:, k], ref)
    labels = torch.tensor([2, 0])
    cam = CAM()(model, x, labels)
    w = model.head.weight.detach()
    for i in range(2):
        low = (w[labels[i]][:, None, None] * a[i]).sum(0)
        ref = F.interpolate(low[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(cam[i], ref, rtol=1e-5, atol=1e-6)


class _MaskFilterNet(nn.Module):
    """Feature map k = the image's own channel k (so a map can equal the mask exactly)."""

    def forward(self, x):
        return x


def test_localize_pipeline_perfect_filter():
    # filter 0's ActivMap is the object mask itself; filter 1 is its complement
    n, h = 8, 8
    torch.manual_seed(0)
    masks = torch.zeros(n, h, h, dtype=torch.bool)
    for i in range(n):
        masks[i, i % 3:i % 3 + 5, 1:6] = True  # 25 of 64 pixels
    images = torch.stack([masks, ~masks], 1).to(torch.uint8) * 255
    from csg.data.dataset import ImageDataset

    ds = ImageDataset(name="fashion-mnist-clutter", images=images, labels=torch.arange(n) % 2,
                      classes=["a", "b"], masks=masks)
    model = GatedClassifier(_MaskFilterNet(), "", 2, num_filters=2).eval()
    res = localize(model, ds, ["activmap", "cam", "gradmap"], quantile=0.3, batch_size=3, in_channels=2)
    pf = res["activmap"]["per_filter"]
    # mask pixels are 39% > 30% of the set, so filter 0's top-30% level is 1.0 -> region == mask
    assert pf["avg_iou"][0] == 1.0 and pf["ap30"][0] == 1.0
    assert res["activmap"]["num_images"] == n
    for m in ("activmap", "cam", "gradmap"):
        assert set(res[m]) >= {"avg_iou", "ap20", "ap30", "total", "per_class"}
        assert res[m]["total"]["avg_iou"] == res[m]["avg_iou"]



def test_localize_names_the_filters_whose_activmap_region_is_the_whole_image():
    """A sparse filter (non-zero on 6 of 64 cells of each image, < 30%) has a top-30% level of exactly 0,
    so its region is every pixel and its IoU is the mask's share of the image (25/64), whatever it
    responds to; localize marks it and says so in a note. The mask-shaped filter is not marked."""
    n, h = 6, 8
    masks = torch.zeros(n, h, h, dtype=torch.bool)
    sparse = torch.zeros(n, h, h, dtype=torch.bool)
    for i in range(n):
        masks[i, i % 3:i % 3 + 5, 1:6] = True      # 25 of 64 pixels
        sparse[i, 7, i % 2:i % 2 + 6] = True       # 6 pixels, off the object
    images = torch.stack([masks, sparse], 1).to(torch.uint8) * 255
    from csg.data.dataset import ImageDataset

    ds = ImageDataset(name="fashion-mnist-clutter", images=images, labels=torch.arange(n) % 2,
                      classes=["a", "b"], masks=masks)
    model = GatedClassifier(_MaskFilterNet(), "", 2, num_filters=2).eval()
    res = localize(model, ds, ["activmap", "cam"], quantile=0.3, batch_size=4, in_channels=2)
    assert res["activmap"]["settings"]["whole_image_filters"] == [1]
    assert res["activmap"]["per_filter"]["avg_iou"][1] == pytest.approx(25 / 64)
    assert res["activmap"]["per_filter"]["avg_iou"][0] == 1.0
    assert len(res["notes"]) == 1 and res["notes"][0].startswith("activmap: 1 of 2 filters")
    assert "whole image" in res["notes"][0] and "30%" in res["notes"][0]
    assert "whole_image_filters" not in res["cam"]["settings"]    # CAM's rule is the image's own level
def test_localize_says_its_estimate_up_front_without_a_progress_bar(capsys):
    """``--no-progress`` (logs of long runs) still gets each method's first-batch estimate, on stderr."""
    from csg.data.dataset import ImageDataset

    n = 6
    masks = torch.zeros(n, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    images = torch.stack([masks, ~masks], 1).to(torch.uint8) * 255
    ds = ImageDataset(name="fashion-mnist-clutter", images=images, labels=torch.arange(n) % 2,
                      classes=["a", "b"], masks=masks)
    model = GatedClassifier(_MaskFilterNet(), "", 2, num_filters=2).eval()
    localize(model, ds, ["activmap", "cam"], batch_size=3, in_channels=2, progress=False)
    err = capsys.readouterr().err
    assert "activmap: about" in err and "cam: about" in err and f"for {n} images" in err


def test_localize_rejects_data_without_masks_and_mismatch():
    from csg.data.dataset import ImageDataset

    model = tiny_model(k=4, c=3)
    ds = ImageDataset(name="fashion-mnist", images=torch.zeros(3, 1, 8, 8, dtype=torch.uint8),
                      labels=torch.tensor([0, 1, 2]), classes=["a", "b", "c"])
    with pytest.raises(CsgError, match="fashion-mnist-clutter"):
        localize(model, ds, ["cam"])
    ds2 = ImageDataset(name="x", images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8), labels=torch.tensor([0, 1]),
                       classes=["a", "b"], masks=torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(CsgError, match="classes"):
        localize(model, ds2, ["cam"])


# ---- the command -------------------------------------------------------------------------------
def test_cli_localize_end_to_end(tmp_path, tiny_idx_dir, monkeypatch):
    from csg.cli import main

    monkeypatch.setenv("CSG_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code = main(["train", "--data", "fashion-mnist-clutter", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                 "--method", "csg", "--epochs", "1", "--subset", "40", "--batch-size", "40", "--out", str(run),
                 "--no-progress", "--seed", "0", "--device", "cpu", "--no-evaluate", "--eval-every", "0"])
    assert code == 0
    code = main(["localize", str(run), "--data", "fashion-mnist-clutter", "--max-images", "4",
                 "--no-progress", "--device", "cpu", "--sigma", "2"])
    assert code == 0
    out = json.loads((run / "localization.json").read_text())
    for m in ("gradmap", "activmap", "cam"):
        assert 0.0 <= out[m]["avg_iou"] <= 1.0 and out[m]["total"]["ap20"] == out[m]["ap20"]
        assert len(out[m]["per_class"]) == 10
    assert out["gradmap"]["settings"]["sigma"] == 2.0
    assert out["num_images"] == 4
    for fig in out["figures"]:
        assert (run / fig["path"]).is_file()
    assert len(out["figures"]) == 3
    # the STD-data run cannot be localized: fashion-mnist has no masks
    assert main(["localize", str(run), "--data", "fashion-mnist"]) == 2


@pytest.mark.parametrize("flags, named", [(["--methods", "gradmap,xx"], "xx"), (["--quantile", "2"], "--quantile"),
                                          (["--sigma", "-1"], "--sigma"), (["--max-images", "0"], "--max-images"),
                                          (["--data", "fashion-mnist"], "no object masks")])
def test_cli_localize_rejects_bad_options_in_one_line(tmp_path, capsys, flags, named):
    from csg.cli import main

    (tmp_path / "config.json").write_text("{}")
    assert main(["localize", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1


def test_localize_refuses_an_unconverged_csg_run_unless_allowed(tmp_path):
    from csg.core.errors import CsgError
    from csg.localization.run import check_converged
    from csg.runs.rundir import RunDir

    (tmp_path / "config.json").write_text('{"method": "csg"}')
    run = RunDir(tmp_path)
    run.update_metrics({"l1_density": 0.172, "l1_interval": [0.1, 0.1], "gate_fixed": False})
    with pytest.raises(CsgError, match=r"not converged: L1-density 0.1720 lies outside .* --allow-unconverged"):
        check_converged(run)
    assert "scored anyway" in check_converged(run, allow_unconverged=True)
    run.update_metrics({"l1_density": 0.1150})              # inside [1/C, rho + 0.02]
    assert check_converged(run) is None
    run.update_metrics({"l1_density": 0.5, "gate_fixed": True})  # a fixed layout has no convergence to check
    assert check_converged(run) is None


def test_csg_localize_keeps_the_earlier_methods_it_does_not_score_for_the_same_weights_and_images(
        tmp_path, tiny_idx_dir, monkeypatch, capsys):
    """A second `csg localize --methods cam` keeps the earlier ActivMap (scores, per-image IoUs, figure)
    instead of dropping it; other images, other weights or --replace drop it, with a note. (GradMap is
    left out to keep the test fast; every map method goes through the same code.)"""
    import numpy as np
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from csg.cli import main

    monkeypatch.setenv("CSG_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--data", "fashion-mnist-clutter", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                 "--method", "std", "--epochs", "1", "--subset", "40", "--batch-size", "40", "--out", str(run),
                 "--no-progress", "--seed", "0", "--device", "cpu", "--no-evaluate", "--eval-every", "0"]) == 0
    common = ["localize", str(run), "--no-progress", "--device", "cpu"]
    both = ["--methods", "activmap,cam"]
    assert main(common + ["--max-images", "4"] + both) == 0
    first = json.loads((run / "localization.json").read_text())
    first_arrays = dict(np.load(run / "localization.npz"))
    assert len(first["model_sha256"]) == 64

    assert main(common + ["--max-images", "4", "--methods", "cam"]) == 0
    second = json.loads((run / "localization.json").read_text())
    arrays = np.load(run / "localization.npz")
    for m in ("activmap",):
        assert second[m] == first[m]
        np.testing.assert_array_equal(arrays[f"{m}_ious"], first_arrays[f"{m}_ious"])
    assert {f["path"] for f in second["figures"]} == {f["path"] for f in first["figures"]}
    assert any(n.startswith("kept activmap ") for n in second["notes"])
    assert "(kept from the earlier call)" in capsys.readouterr().out

    assert main(common + ["--max-images", "3", "--methods", "cam"]) == 0      # other images: dropped
    third = json.loads((run / "localization.json").read_text())
    assert "activmap" not in third and any("other images" in n for n in third["notes"])

    assert main(common + ["--max-images", "3"] + both) == 0
    with safe_open(str(run / "checkpoint.safetensors"), "pt") as fh:
        meta = fh.metadata()
    weights = load_file(str(run / "checkpoint.safetensors"))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 0.01                                      # "trained again"
    save_file(weights, str(run / "checkpoint.safetensors"), metadata=meta)
    assert main(common + ["--max-images", "3", "--methods", "cam"]) == 0
    fourth = json.loads((run / "localization.json").read_text())
    assert "activmap" not in fourth and any("other weights" in n for n in fourth["notes"])

    assert main(common + ["--max-images", "3"] + both) == 0
    assert main(common + ["--max-images", "3", "--methods", "cam", "--replace"]) == 0
    fifth = json.loads((run / "localization.json").read_text())
    assert "activmap" not in fifth and set(np.load(run / "localization.npz").files) == \
        {"image_index", "labels", "cam_ious"}

    assert main(common + ["--max-images", "3"] + both) == 0                  # a new npz beside the old json
    np.savez(run / "localization.npz", **dict(np.load(run / "localization.npz"), cam_ious=np.zeros(3)))
    assert main(common + ["--max-images", "3", "--methods", "cam"]) == 0
    sixth = json.loads((run / "localization.json").read_text())
    assert "activmap" not in sixth and any("interrupted write" in n for n in sixth["notes"])

    import subprocess
    import sys
    from pathlib import Path

    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / 'src')!r})
from csg.core.lock import RunLock
with RunLock({str(run)!r}):
    print("locked", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:                                                                      # a second writer is refused
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(common + ["--max-images", "3", "--methods", "cam"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "localizing" in err
    finally:
        holder.kill()
        holder.wait()


def test_an_interrupted_csg_localize_resumes_after_its_last_finished_method(tmp_path, tiny_idx_dir, monkeypatch,
                                                                            capsys):
    """Killed while scoring CAM, the call again scores only CAM and writes what an uninterrupted call writes;
    a journal for other images is not used."""
    import numpy as np

    import csg.localization.run as loc
    from csg.cli import main

    monkeypatch.setenv("CSG_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--data", "fashion-mnist-clutter", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                 "--method", "std", "--epochs", "1", "--subset", "40", "--batch-size", "40", "--out", str(run),
                 "--no-progress", "--seed", "0", "--device", "cpu", "--no-evaluate", "--eval-every", "0"]) == 0
    argv = ["localize", str(run), "--no-progress", "--device", "cpu", "--max-images", "4", "--methods",
            "activmap,cam", "--replace"]
    assert main(argv) == 0
    whole = json.loads((run / "localization.json").read_text())
    whole_arrays = dict(np.load(run / "localization.npz"))
    real, scored = loc.score_method, []

    def killed_at_cam(method, *a, **kw):
        if method.name == "cam":
            raise KeyboardInterrupt
        scored.append(method.name)
        return real(method, *a, **kw)

    monkeypatch.setattr(loc, "score_method", killed_at_cam)
    assert main(argv) == 130
    assert "finished map methods are saved" in capsys.readouterr().err
    assert (run / loc.LOCALIZATION_JOURNAL).exists()
    monkeypatch.setattr(loc, "score_method", lambda method, *a, **kw: scored.append(method.name) or real(
        method, *a, **kw))
    scored.clear()
    assert main(argv) == 0
    assert scored == ["cam"]  # ActivMap came from the journal
    data = json.loads((run / "localization.json").read_text())
    for m in ("activmap", "cam"):
        assert data[m] == whole[m]
    assert {f["path"] for f in data["figures"]} == {f["path"] for f in whole["figures"]}
    assert any(n.startswith("resumed: activmap") for n in data["notes"])
    arrays = np.load(run / "localization.npz")
    assert set(arrays.files) == set(whole_arrays)
    for key in arrays.files:
        np.testing.assert_array_equal(arrays[key], whole_arrays[key])
    assert not (run / loc.LOCALIZATION_JOURNAL).exists()  # removed once the result is written

    # A journal of another call (other images) is not used.
    monkeypatch.setattr(loc, "score_method", killed_at_cam)
    assert main(argv) == 130
    monkeypatch.setattr(loc, "score_method", lambda method, *a, **kw: scored.append(method.name) or real(
        method, *a, **kw))
    scored.clear()
    assert main(argv[:-4] + ["3", "--methods", "activmap,cam", "--replace"]) == 0
    assert scored == ["activmap", "cam"]
    assert any("written for other settings" in n for n in json.loads((run / "localization.json").read_text())["notes"])
    capsys.readouterr()
