"""Captum: our per-filter input gradients equal Captum's NeuronGradient, and captum:NAME map methods score
like CAM (true class, abs-sum over colour channels, the image's own top 30 %)."""
from __future__ import annotations

import builtins

import pytest
import torch
import torch.nn as nn

from csg.backbones import build_model
from csg.core.errors import CsgError
from csg.core.model import GatedClassifier
from csg.data.dataset import ImageDataset
from csg.localization import localize
from csg.localization.maps import build_method, filter_input_gradients

captum_attr = pytest.importorskip("captum.attr")


def tiny_model(k: int = 5, c: int = 3, in_ch: int = 1, seed: int = 0) -> GatedClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_ch, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, k, 3, padding=1), nn.ReLU())
    return GatedClassifier(net, "4", c, num_filters=k).eval()


def clutter_like(n: int = 6, size: int = 16, c: int = 3, seed: int = 0) -> ImageDataset:
    """A bright square object on a noisy canvas, its mask, labels 0..c-1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (n, 1, size, size), generator=g, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):  # a handful of test images, not a hot path
        top, left = int(torch.randint(0, size - 6, (1,), generator=g)), int(torch.randint(0, size - 6, (1,), generator=g))
        masks[i, top:top + 6, left:left + 6] = True
    images[:, 0][masks] = 230
    return ImageDataset(name="fashion-mnist-clutter", images=images, labels=torch.arange(n) % c,
                        classes=[f"c{j}" for j in range(c)], masks=masks)


@pytest.mark.parametrize("which", ["tiny", "resnet20"])
def test_filter_gradients_equal_captum_neuron_gradient(which):
    torch.manual_seed(1)
    if which == "tiny":
        model, x = tiny_model(), torch.rand(4, 1, 12, 12)
    else:
        model = build_model("resnet20", 10, 1).eval()
        x = torch.rand(2, 1, 16, 16)
    layer = model._feature_module
    ours = filter_input_gradients(model, x)  # N x K x C x H x W
    ng = captum_attr.NeuronGradient(model.logits, layer)
    for k in range(model.num_filters):
        # d mean_hw(A_k) / d x, the quantity GradMap is built from
        theirs = ng.attribute(x, neuron_selector=lambda a, k=k: a[:, k].mean(dim=(1, 2)))
        assert torch.allclose(ours[:, k], theirs, atol=1e-6, rtol=1e-4), k


def test_saliency_map_is_the_abs_sum_of_the_true_class_gradient():
    model, ds = tiny_model(), clutter_like()
    x, y = ds.images.float() / 255, ds.labels
    maps = build_method("captum:Saliency")(model, x, y)
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.logits(xx).gather(1, y[:, None]).sum(), xx)
    assert maps.shape == (6, 16, 16)
    assert torch.allclose(maps, g.abs().sum(dim=1), atol=1e-7)


def test_captum_methods_are_scored_like_cam():
    model, ds = tiny_model(), clutter_like()
    names = ["captum:Saliency", "captum:IntegratedGradients", "captum:GuidedBackprop", "captum:LayerGradCam"]
    res = localize(model, ds, ["cam", *names], quantile=0.3, batch_size=4)
    for m in names:
        assert set(res[m]) >= {"avg_iou", "ap20", "ap30", "total", "per_class"}
        assert 0.0 <= res[m]["avg_iou"] <= 1.0 and "per_filter" not in res[m]
        assert res[m]["settings"]["quantile"] == 0.3 and res[m]["settings"]["target"] == "true class"
    assert res["captum:Saliency"]["settings"]["reduction"] == "abs-sum over channels"
    assert res["captum:LayerGradCam"]["settings"]["reduction"] == "upsampled Grad-CAM"


def test_unknown_captum_name_lists_the_valid_ones(capsys, tmp_path):
    from csg.cli import main

    (tmp_path / "config.json").write_text("{}")
    assert main(["localize", str(tmp_path), "--methods", "cam,captum:Occlusionn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "captum:Occlusionn" in err[0] and "captum:IntegratedGradients" in err[0]
    with pytest.raises(CsgError, match="captum:Saliency"):
        build_method("captum:")


def test_missing_captum_is_one_line_naming_the_extra(capsys, tmp_path, monkeypatch):
    from csg.cli import main

    real_import = builtins.__import__

    def no_captum(name, *args, **kwargs):
        if name.split(".")[0] == "captum":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_captum)
    (tmp_path / "config.json").write_text("{}")
    assert main(["localize", str(tmp_path), "--methods", "captum:Saliency"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "csg[captum]"' in err[0]
