"""Layer maps, the normalisation by negatives, the evidence blur and the evaluation measures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.ndimage import gaussian_filter

from csg.graph.evaluate import few_shot_localization, location_instability, raw_filter_units
from csg.graph.features import capture_layers, default_layers, gaussian_blur, negative_spread, prepare_layers


@pytest.mark.parametrize("sd", [1.0, 1.6])
def test_gaussian_blur_matches_scipy(sd):
    x = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(0))
    got = gaussian_blur(x, sd).numpy()
    # scipy: radius int(truncate * sd + 0.5) = ceil(3 sd) for these sd; zeros outside (mode constant)
    ref = gaussian_filter(x.numpy(), sigma=(0, 0, sd, sd), mode="constant", cval=0.0, truncate=3.0)
    assert np.allclose(got, ref, atol=1e-6)


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())


def test_negative_spread_and_evidence_by_hand():
    net = tiny_net().eval()
    neg = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    pos = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sd = negative_spread(net, neg, ["1", "3"], batch_size=4)
    with torch.no_grad():
        a = net[:2](neg).double()
        b = net(neg).double()
    for got, maps in zip(sd, (a, b)):
        ref = maps.std(dim=0, unbiased=False)
        floor = torch.maximum(0.01 * ref.mean(dim=(1, 2), keepdim=True), 0.01 * ref.mean()).clamp_min(1e-8)
        assert torch.allclose(got.double(), torch.maximum(ref, floor), rtol=1e-5, atol=1e-7)
    data = prepare_layers(net, pos, ["1", "3"], sd, evidence_sigma=0.25, batch_size=4, dtype=torch.float32)
    with torch.no_grad():
        top = net(pos)
    norm = (top / sd[1]).clamp_min(0)
    assert data[1].stride == (2.0, 2.0) and data[0].stride == (1.0, 1.0)
    assert torch.allclose(data[1].evidence, gaussian_blur(norm, 0.25 * 4), atol=1e-6)
    peak, idx = norm.flatten(2).max(2)
    assert torch.allclose(data[1].raw_scores, peak.T)
    assert torch.equal(data[1].raw_positions[..., 0], (idx // 4).T.float())
    assert torch.equal(data[1].raw_positions[..., 1], (idx % 4).T.float())


def test_default_layers_of_resnet20_are_its_three_stages():
    from csg.backbones import build_model

    model = build_model("resnet20", 10, 1).eval()
    assert default_layers(model, torch.rand(1, 1, 32, 32)) == ["layer1", "layer2", "layer3"]
    maps = capture_layers(model, torch.rand(2, 1, 32, 32), ["layer1", "backbone.layer3"])
    assert [tuple(m.shape) for m in maps] == [(2, 16, 32, 32), (2, 64, 8, 8)]
    from csg.core.errors import CsgError

    with pytest.raises(CsgError, match="layer2"):
        capture_layers(model, torch.rand(1, 1, 32, 32), ["layer22"])
    # a backbone with one top-level block (VGG's `features`): its last ReLUs, up to the feature layer
    from csg.core.model import GatedClassifier

    convs = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
             nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()]
    vgg_like = GatedClassifier(nn.Sequential(nn.Sequential(*convs)), "0.5", 3, num_filters=4).eval()
    assert default_layers(vgg_like, torch.rand(1, 1, 8, 8)) == ["0.1", "0.3", "0.5"]


def test_location_instability_known_answer():
    n_img = 5
    landmarks = torch.zeros(n_img, 2, 2)
    landmarks[:, 0] = torch.tensor([[10.0, 10.0]]) + torch.arange(n_img)[:, None].float()  # the part moves
    landmarks[:, 1] = torch.tensor([[30.0, 5.0]])
    valid = torch.ones(n_img, 2, dtype=torch.bool)
    # unit 0 moves with part 0 (distance to it constant) and keeps distance 20 + i to part 1 ... by hand below
    pos = torch.zeros(3, n_img, 2)
    pos[0] = landmarks[:, 0] + torch.tensor([2.0, 0.0])
    pos[1] = torch.tensor([10.0, 10.0])  # stays put: distance to part 0 is sqrt(2) i
    pos[2] = torch.tensor([50.0, 50.0])
    scores = torch.tensor([[5.0] * n_img, [4.0] * n_img, [0.1] * n_img])
    out = location_instability(pos, scores, landmarks, valid, diagonal=10.0, top_images=5, top_units=2)
    assert out["units"] == [0, 1]
    d0_part1 = (pos[0] - landmarks[:, 1]).norm(dim=1)
    u0 = (0.0 + float(d0_part1.std(unbiased=True))) / 2
    d1_part0 = math.sqrt(2) * torch.arange(n_img).float()
    u1 = (float(d1_part0.std(unbiased=True)) + 0.0) / 2
    assert out["per_unit"] == pytest.approx([u0 / 10, u1 / 10], rel=1e-5)
    assert out["instability"] == pytest.approx((u0 + u1) / 2 / 10, rel=1e-5)
    # a landmark that is invalid in an image is left out of that image
    valid[0, 0] = False
    part = location_instability(pos[1:2], scores[1:2], landmarks, valid, diagonal=1.0, top_images=5)
    assert part["per_unit"][0] == pytest.approx(float(d1_part0[1:].std(unbiased=True)) / 2, rel=1e-5)


def test_few_shot_localization_exact_for_units_that_track_the_part():
    g = torch.Generator().manual_seed(0)
    n_img = 12
    labels = torch.tensor([0] * 6 + [1] * 6)
    landmarks = torch.rand(n_img, 1, 2, generator=g) * 50
    valid = torch.ones(n_img, 1, dtype=torch.bool)
    tracking = landmarks[:, 0][None] + torch.tensor([[3.0, -2.0]])[:, None]  # 1 unit, a fixed offset
    noise = torch.rand(4, n_img, 2, generator=g) * 60  # units that fire anywhere
    pos = torch.cat([tracking, noise])
    scores = torch.cat([torch.full((1, n_img), 2.0), torch.full((4, n_img), 0.5)])
    units = {"good": (pos, scores), "noise": (noise, torch.full((4, n_img), 2.0))}
    out = few_shot_localization(units, landmarks, valid, labels, diagonal=10.0, shots=(1, 3), repeats=3, voters=1)
    for k in ("1", "3"):
        assert out[k]["good"] == pytest.approx(0.0, abs=1e-5)
        assert out[k]["noise"] > 0.5 and out[k]["fixed"] > 0.5
    assert out["1"]["predictions"] == 2 * 3 * 5 and out["3"]["predictions"] == 2 * 3 * 3
    pos_px, sc = raw_filter_units(torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2, 2))
    assert sc.tolist() == [[0.5, 1.5]]
