"""`explain`: the prediction, the filters that gave most, their gates and maps; `csg explain` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from csg.core.errors import CsgError
from csg.explain import explain, explanation_figure, load_image
from csg.core.gate import ClassSpecificGate
from csg.core.model import GatedClassifier


def square_model() -> GatedClassifier:
    """4 filters on a grey image; filter 2 fires on bright 3x3 patches (a bright square), filter 0 on dark
    ones; class 1's head weight favours filter 2, class 0's favours filter 0."""
    conv = nn.Conv2d(1, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[2] = 1.0
        conv.bias[2] = -4.5  # > 0 only where the 3x3 mean is above 0.5
        conv.weight[0] = -1.0
        conv.bias[0] = 1.0  # 1 on black, 0 on white
        conv.weight[1] = 0.1  # weak, everywhere the image is bright
        conv.bias[3] = -1.0  # dead
    net = nn.Sequential(conv, nn.ReLU())
    gate = ClassSpecificGate(2, 4)
    model = GatedClassifier(net, "1", 2, num_filters=4, gate=gate)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 8.0, 0.0]]))
        model.head.bias.zero_()
        gate.weight.copy_(torch.tensor([[1.0, 0.2, 0.1, 0.0], [0.0, 1.0, 1.0, 1.0]]))
    return model.eval()


def square_image(size: int = 16, top: int = 3, left: int = 8, side: int = 6) -> torch.Tensor:
    x = torch.zeros(1, size, size)
    x[:, top:top + side, left:left + side] = 1.0
    return x


def test_explain_names_the_filter_built_to_fire():
    model = square_model()
    x = square_image()
    e = explain(model, x, top=3, class_names=["dark", "square"])
    assert e.predicted == 1 and e.predicted_name == "square"
    assert e.filters[0].filter == 2
    # contribution = W[c, k] * a_k, with a_k the pooled activation computed by hand
    a2 = torch.relu(torch.nn.functional.conv2d(x[None], model.backbone[0].weight[2:3], model.backbone[0].bias[2:3],
                                               padding=1)).mean().item()
    assert e.filters[0].activation == pytest.approx(float(a2), rel=1e-5)
    assert e.filters[0].contribution == pytest.approx(8.0 * float(a2), rel=1e-5)
    assert e.filters[0].gate_classes == ["square"]  # G[:, 2] = (0.1, 1.0)
    assert e.filters[1].filter == 1 and e.filters[1].gate_classes == ["square"]
    # the maps of filter 2 sit on the square
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[3:9, 8:14] = True
    am = torch.from_numpy(e.activ_maps[0])
    assert am[inside].mean() > 5 * am[~inside].mean()
    gm = torch.from_numpy(e.grad_maps[0])
    assert gm[inside].mean() > gm[~inside].mean()
    d = e.to_dict()
    assert d["rest_contribution"] == pytest.approx(0.0, abs=1e-5)  # filters 0, 3 give nothing here
    json.dumps(d)


def test_explain_without_gate_and_figure(tmp_path):
    model = square_model()
    model.gate = None
    e = explain(model, square_image(), top=2)
    assert e.filters[0].gate_classes is None
    png = explanation_figure(e, square_image(), tmp_path / "x.png")
    assert png.is_file() and png.stat().st_size > 1000
    with pytest.raises(CsgError):
        explain(model, torch.zeros(2, 1, 16, 16))


def test_load_image_converts_channels_and_size(tmp_path):
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 1, (8, 8))
    assert x.shape == (1, 8, 8) and x[0, 4, 0] == 1.0 and x[0, 4, 7] == 0.0
    assert load_image(tmp_path / "a.png", 3, [5, 6]).shape == (3, 5, 6)
    with pytest.raises(CsgError, match="does not exist"):
        load_image(tmp_path / "missing.png", 1, (8, 8))


def test_cli_explain(tiny_csg_run, tmp_path):
    from csg.cli import main

    img = np.zeros((28, 28), dtype=np.uint8)
    img[8:12, 4:24] = 230  # a bar like the tiny set's
    Image.fromarray(img).save(tmp_path / "bar.png")
    out = tmp_path / "expl"
    assert main(["explain", str(tiny_csg_run), str(tmp_path / "bar.png"), "--top", "3", "--out", str(out),
                 "--device", "cpu"]) == 0
    rec = json.loads((out / "bar.json").read_text())
    assert len(rec["filters"]) == 3 and (out / "bar.png").is_file()
    assert rec["predicted_name"] in rec["probabilities"]
    assert all(isinstance(f["gate_classes"], list) for f in rec["filters"])  # a CSG run has a gate
    assert main(["explain", str(tiny_csg_run), str(tmp_path / "nope.png"), "--out", str(out)]) == 2


def test_cli_explain_names_a_missing_image_before_loading_the_model(tmp_path, capsys):
    from csg.cli import main

    (tmp_path / "config.json").write_text("{}")  # no model here: the image check must come first
    assert main(["explain", str(tmp_path), str(tmp_path / "nope.png"), str(tmp_path / "nope2.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.png does not exist (and 1 more)" in err and len(err.splitlines()) == 1
    assert main(["explain", str(tmp_path), str(tmp_path / "x.png"), "--sigma", "-2"]) == 2
