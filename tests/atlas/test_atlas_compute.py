"""The atlas's computations against known answers: top-k selection, dissection IoU by hand, pair maps
against csg.localization's ActivMap / GradMap / DatasetQuantile, class criteria by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from csg.atlas import (agreement, atlas_from_parts, clutter_masks, dissection_iou, drop_classes, fit_levels,
                       gate_classes, layer_maps, neighbours, pair_iou, pair_maps, top_images)
from csg.atlas.inputs import RunInputs
from csg.atlas.units import NONE
from csg.data.dataset import ImageDataset
from csg.core.errors import CsgError
from csg.localization import ActivMap, GradMap
from csg.core.model import GatedClassifier


def tiny_model(k: int = 5, c: int = 3, in_ch: int = 1, seed: int = 0) -> GatedClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_ch, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, k, 3, padding=1), nn.ReLU())
    return GatedClassifier(net, "4", c, num_filters=k).eval()


# ---- top images --------------------------------------------------------------------------------------
def test_top_images_are_the_k_largest_pooled_activations():
    rng = np.random.default_rng(0)
    pooled = rng.integers(0, 6, size=(40, 7)).astype(np.float32)  # many ties
    pooled[:, 3] = 0.0  # a dead filter: all tied
    idx, val = top_images(pooled, 5)
    assert idx.shape == val.shape == (7, 5)
    for j in range(7):
        col = pooled[:, j]
        np.testing.assert_array_equal(val[j], np.sort(col)[::-1][:5])  # the 5 largest values, largest first
        np.testing.assert_array_equal(col[idx[j]], val[j])
        assert len(set(idx[j].tolist())) == 5
        rest = np.delete(col, idx[j])
        assert rest.max() <= val[j].min()
        for a, b in zip(idx[j][:-1], idx[j][1:]):  # equal values: the lower image index first
            assert col[a] > col[b] or a < b
    np.testing.assert_array_equal(idx[3], np.arange(5))
    idx_all, _ = top_images(pooled, 100)  # k capped at N
    assert idx_all.shape == (7, 40)
    with pytest.raises(CsgError, match="top-k"):
        top_images(pooled, 0)


# ---- dissection IoU --------------------------------------------------------------------------------
def test_dissection_functions_on_hand_made_masks():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # 4 object pixels
    masks[1, :2, :2] = True
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, :2, :2] = 200  # the object
    images[0, 0, 3, 2:] = 50  # two clutter pixels
    images[1, 0, 3, 3] = 50  # one
    clutter = clutter_masks(images, masks)
    assert clutter.sum().item() == 3 and bool(clutter[0, 3, 2]) and not bool(clutter[0, 0, 0])
    regions = torch.zeros(2, 4, 4, dtype=torch.bool)
    regions[0, 0, :] = True  # top row: 2 of its 4 pixels on the object
    regions[1] = masks[1]  # exactly the object
    obj = pair_iou(regions, masks).numpy()
    np.testing.assert_allclose(obj, [2 / 6, 1.0])
    clu = pair_iou(regions, clutter).numpy()
    np.testing.assert_allclose(clu, [0.0, 0.0])
    regions[0, 3, 3] = True  # now one clutter pixel too: |S and B| = 1, |S or B| = 5 + 2 - 1
    np.testing.assert_allclose(pair_iou(regions, clutter).numpy(), [1 / 6, 0.0])
    np.testing.assert_allclose(dissection_iou([[2 / 6, 1.0]]), [(2 / 6 + 1.0) / 2])


class _Identity(nn.Module):
    def forward(self, x):
        return x


def _hand_made_atlas(**options):
    """4 images of 8 x 8; the "filter" is the image itself (identity backbone), so its ActivMap region
    (>= the top-30% level over the 256 pixels, which is 1.0 here) is exactly the pixels of value 255."""
    n, h = 4, 8
    images = torch.zeros(n, 1, h, h, dtype=torch.uint8)
    masks = torch.zeros(n, h, h, dtype=torch.bool)
    images[0, 0, 0:5, 0:5] = 255  # 25 px region
    masks[0, 0:5, 0:4] = True  # 20 px object inside it: object IoU 20/25
    images[0, 0, 6:8, :] = 100  # 16 clutter px below the level; clutter = those + the region's 5 px off the object
    images[1, 0, 2:7, 2:7] = 255  # 25 px region
    masks[1] = True  # the object is the whole canvas: IoU 25/64, no clutter
    images[2, 0, 0:4, 0:4] = 255  # 16 px (lower pooled value: not in the top 2)
    images[3, 0, 4:8, 4:8] = 255
    masks[2:, :4, :4] = True
    labels = torch.tensor([0, 1, 0, 1])
    ds = ImageDataset(name="fashion-mnist-clutter", images=images, labels=labels, classes=["a", "b"], masks=masks)
    model = GatedClassifier(_Identity(), "", 2, num_filters=1).eval()
    with torch.no_grad():  # logits (2a - 0.5, -a): images 0 and 2 right, 1 and 3 wrong; zeroed: all say "b"
        model.head.weight.copy_(torch.tensor([[2.0], [-1.0]]))
        model.head.bias.copy_(torch.tensor([-0.5, 0.0]))
    pooled = (images.float() / 255).mean(dim=(2, 3)).numpy()
    inputs = RunInputs(pooled=pooled, labels=labels.numpy(), predictions=labels.numpy(), class_names=["a", "b"],
                       config={"method": "std", "data": "fashion-mnist-clutter"}, metrics={},
                       mi=np.array([[0.1, 0.2]]), correlation=np.ones((1, 1)))
    return atlas_from_parts(model, ds, inputs, top_k=2, sigma=0.0, thumb=4, **options)


def test_dissection_iou_through_the_atlas_equals_the_hand_computed_value():
    atlas = _hand_made_atlas()
    units = atlas.data["layers"][0]["units"]
    assert units["top_images"] == [[0, 1]]
    assert units["level"] == [1.0]
    assert units["top_iou_object"][0] == pytest.approx([20 / 25, 25 / 64], abs=1e-4)
    assert units["top_iou_clutter"][0] == pytest.approx([5 / 41, 0.0], abs=1e-4)
    assert units["iou_object"][0] == pytest.approx((20 / 25 + 25 / 64) / 2, abs=1e-4)
    assert units["iou_clutter"][0] == pytest.approx((5 / 41) / 2, abs=1e-4)
    assert atlas.data["schema"] == "csg.atlas/1" and atlas.data["has_masks"]
    # the tiles: thumbnails of side 4 (thumb=4), the region's coverage of image 0 = its 5 x 5 corner
    tiles = atlas.tiles["(backbone output)"]
    assert tiles["image"].shape == (1, 2, 1, 4, 4)
    # each thumbnail pixel averages a 2 x 2 area: the edge areas of the 5 x 5 corner are half covered,
    # the corner area (4, 4) a quarter
    np.testing.assert_array_equal(tiles["activ_region"][0, 0], np.array(
        [[255, 255, 128, 0], [255, 255, 128, 0], [128, 128, 64, 0], [0, 0, 0, 0]], dtype=np.uint8))


def test_ablation_and_selectivity_are_computed_when_analysis_is_absent():
    atlas = _hand_made_atlas()
    units = atlas.data["layers"][0]["units"]
    assert "ablation_drop" not in atlas.data["sources"]  # no analysis.npz: computed
    # per-class accuracy a: 1, b: 0; with the filter zeroed every image is called "b": a: 0, b: 1
    assert units["drop"] == [[1.0, -1.0]] and units["max_drop"] == [1.0] and units["class_ablation"] == [0]
    # mean activation: a (0.48866 + 0.25) / 2, b (0.390625 + 0.25) / 2
    mu_a, mu_b = ((25 + 16 * 100 / 255) / 64 + 0.25) / 2, (25 / 64 + 0.25) / 2
    assert units["top_class"] == [0]
    assert units["selectivity"][0] == pytest.approx((mu_a - mu_b) / (mu_a + mu_b), abs=1e-4)
    assert units["class_mi"] == [1] and units["agree"] == [0]  # MI (given) says b, ablation a
    assert units["class"] == [1]  # no gate: the card's class is the MI's


# ---- maps: the same as csg localize's ---------------------------------------------------------------
def test_pair_maps_equal_activmap_gradmap_and_their_regions():
    model = tiny_model(k=5, in_ch=1)
    torch.manual_seed(1)
    images = (torch.rand(6, 1, 12, 12) * 255).round().to(torch.uint8)
    x = images.float() / 255
    fit = fit_levels(model, images, ["4"], quantile=0.3, batch_size=4)
    rule = ActivMap(0.3).region_rule()  # what csg localize fits
    while rule.needs_fit:
        for s in range(0, 6, 4):
            rule.update(ActivMap()(model, x[s:s + 4]))
        rule.end_pass()
    np.testing.assert_allclose(fit["levels"]["4"], rule.finish().numpy())
    maps = ActivMap()(model, x).transpose(0, 1).reshape(5, -1).numpy().astype(np.float64)
    np.testing.assert_allclose(fit["levels"]["4"], np.quantile(maps, 0.7, axis=1), rtol=1e-6)
    img = torch.tensor([0, 3, 3, 5, 1])
    filt = torch.tensor([2, 2, 4, 0, 1])
    pm = pair_maps(model, "4", images, img, filt, torch.as_tensor(fit["levels"]["4"]), sigma=1.5, batch_size=2)
    am = ActivMap()(model, x)
    regions = rule.regions(am)
    gm = GradMap(sigma=1.5)
    for p in range(5):
        n, k = int(img[p]), int(filt[p])
        torch.testing.assert_close(pm["activ"][p], am[n, k])
        assert torch.equal(pm["activ_region"][p], regions[n, k])
        ref = gm(model, x[n:n + 1], filters=[k])[0, 0]
        torch.testing.assert_close(pm["grad"][p], ref, rtol=1e-4, atol=1e-5)
        assert torch.equal(pm["grad_region"][p], ref > 1.0)
    assert pm["activ_region"].any() and not pm["activ_region"].all()


def test_extra_layers_and_their_order():
    model = tiny_model(k=5)
    x = torch.rand(2, 1, 8, 8)
    maps = layer_maps(model, x, ["4", "1"])
    assert maps["4"].shape == (2, 5, 4, 4) and maps["1"].shape == (2, 6, 8, 8)
    fit = fit_levels(model, (x * 255).to(torch.uint8), ["4", "1"], pooled_layers=["1"])
    assert fit["pooled"]["1"].shape == (2, 6) and fit["levels"]["1"].shape == (6,)
    big = GatedClassifier(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU()), "1", 2,
                          num_filters=3).eval()
    with pytest.raises(CsgError, match="did not run before the feature layer"):
        layer_maps(big, x, ["1", "3"])


def test_extra_layer_cards_through_the_atlas():
    model = tiny_model(k=4, c=2)
    torch.manual_seed(2)
    images = (torch.rand(12, 1, 8, 8) * 255).to(torch.uint8)
    labels = torch.arange(12) % 2
    ds = ImageDataset(name="x", images=images, labels=labels, classes=["a", "b"])
    with torch.no_grad():
        pooled = model(images.float() / 255).pooled.numpy()
    inputs = RunInputs(pooled=pooled, labels=labels.numpy(), predictions=labels.numpy(), class_names=["a", "b"],
                       config={}, metrics={}, gate=np.array([[1.0, 0.2, 0.5, 0.5], [0.1, 1.0, 0.5, 0.5]]))
    atlas = atlas_from_parts(model, ds, inputs, layers=["0"], top_k=3, thumb=8)
    feat, extra = atlas.data["layers"]
    assert (feat["name"], extra["name"]) == ("4", "0") and extra["num_filters"] == 6
    assert feat["criteria"] == ["gate", "mi", "ablation"] and extra["criteria"] == ["mi"]
    assert feat["units"]["class_gate"] == [0, 1, None, None]
    assert extra["units"]["drop"] is None and extra["units"]["class_gate"] is None
    assert len(extra["units"]["neighbours"][0]) == 5  # the layer's own convolution (6 filters)
    assert feat["units"]["iou_object"] is None  # no masks
    with torch.no_grad():  # the extra layer's top images: its own pooled activations
        a = model.backbone[0](model.normalize(images.float() / 255)).mean(dim=(2, 3)).numpy()
    np.testing.assert_array_equal(extra["units"]["top_images"], top_images(a, 3)[0])
    with pytest.raises(CsgError, match="does not exist"):
        atlas_from_parts(model, ds, inputs, layers=["nope"])
    bad = RunInputs(pooled=pooled[:5], labels=labels.numpy()[:5], predictions=labels.numpy()[:5],
                    class_names=["a", "b"], config={}, metrics={})
    with pytest.raises(CsgError, match="re-run `csg evaluate`"):
        atlas_from_parts(model, ds, bad)


# ---- class criteria -----------------------------------------------------------------------------------
def test_class_criteria_by_hand():
    gate = np.array([[1.0, 0.5, 0.2], [0.3, 0.5, 1.0]])
    assert gate_classes(gate).tolist() == [0, NONE, 1]  # a constant column names no class
    drop = np.array([[0.1, 0.3], [0.0, -0.2], [np.nan, 0.05]])
    best, cls = drop_classes(drop)
    np.testing.assert_allclose(best, [0.3, 0.0, 0.05])
    assert cls.tolist() == [1, NONE, 1]  # no class loses accuracy: none
    agree = agreement({"gate": np.array([0, NONE, 1, 2]), "mi": np.array([0, 1, 1, 0]),
                       "ablation": np.array([0, 1, NONE, NONE])})
    assert agree.tolist() == [1, 1, 1, 0]
    assert agreement({"mi": np.array([0, 1])}).tolist() == [NONE, NONE]  # one criterion: undefined
    corr = np.array([[1.0, 0.2, 0.9, -0.5], [0.2, 1.0, 0.3, 0.3], [0.9, 0.3, 1.0, 0.1], [-0.5, 0.3, 0.1, 1.0]])
    idx, val = neighbours(corr, 2)
    assert idx.tolist() == [[2, 1], [2, 3], [0, 1], [1, 2]]  # ties: lower index first
    np.testing.assert_allclose(val, [[0.9, 0.2], [0.3, 0.3], [0.9, 0.3], [0.3, 0.1]])
