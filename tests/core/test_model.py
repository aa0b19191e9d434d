"""The classifier wrapper: STD and CSG paths on any nn.Module, by layer name."""
import pytest
import torch
import torch.nn as nn

from csg import ClassSpecificGate, CsgError, GatedClassifier, capture_outputs, resolve_module


class TinyNet(nn.Module):
    def __init__(self, k=4, c=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, k, 3, padding=1), nn.ReLU())
        self.after = nn.Sequential(nn.Conv2d(k, 8, 1), nn.ReLU())  # must be skipped
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(k, c)

    def forward(self, x):
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


def make(k=4, c=3):
    torch.manual_seed(0)
    net = TinyNet(k, c)
    gate = ClassSpecificGate(c, k)
    with torch.no_grad():
        gate.weight.copy_(torch.rand(c, k))
    return net, GatedClassifier(net, "block", c, head="fc", gate=gate)


def test_csg_path_equals_hand_computed_gated_forward():
    net, model = make()
    x = torch.rand(5, 1, 8, 8)
    y = torch.tensor([0, 2, 1, 1, 0])
    out = model(x, y)
    maps = net.block(net.stem(x))
    gated = maps * model.gate.weight[y][:, :, None, None]  # gate the maps, then pool (METHOD.md section 1)
    expected = net.fc(gated.mean(dim=(2, 3)))
    torch.testing.assert_close(out.csg_logits, expected)
    torch.testing.assert_close(out.logits, net(x))
    torch.testing.assert_close(out.maps, maps)


def test_csg_path_has_gradient_for_gate_rows_of_the_batch_labels_only():
    _, model = make()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 0, 2, 2])
    model(x, y).csg_logits.sum().backward()
    grad = model.gate.weight.grad
    assert torch.all(grad[1] == 0) and grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0


def test_layers_after_the_feature_layer_are_skipped_and_hooks_removed():
    net, model = make()
    calls = []
    net.after.register_forward_hook(lambda *a: calls.append(1))
    model(torch.rand(2, 1, 8, 8))
    assert calls == []
    assert len(net.block._forward_hooks) == 0


def test_unknown_layer_lists_names_that_exist():
    net = TinyNet()
    with pytest.raises(CsgError) as err:
        GatedClassifier(net, "blok", 3, head="fc")
    assert "'blok'" in str(err.value) and "block" in str(err.value)
    with pytest.raises(CsgError, match="does not exist"):
        resolve_module(net, "layer4")


def test_head_must_match_class_count_and_be_linear():
    with pytest.raises(CsgError, match="outputs"):
        GatedClassifier(TinyNet(c=3), "block", 5, head="fc")
    with pytest.raises(CsgError, match="not nn.Linear"):
        GatedClassifier(TinyNet(), "block", 3, head="block")


def test_new_head_when_none_named_and_normalisation_inside():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
    model = GatedClassifier(net, "", 2, num_filters=5, input_mean=[0.5, 0.5, 0.5], input_std=[0.25, 0.25, 0.25])
    x = torch.rand(3, 3, 6, 6)
    out = model(x)
    torch.testing.assert_close(out.maps, net((x - 0.5) / 0.25))
    assert out.logits.shape == (3, 2) and out.csg_logits is None


def test_capture_outputs_removes_hooks_even_after_error():
    net = TinyNet()
    with pytest.raises(RuntimeError):
        with capture_outputs(net, ["stem", "block"]) as out:
            net(torch.rand(1, 1, 8, 8))
            assert set(out) == {"stem", "block"}
            raise RuntimeError("boom")
    assert not net.stem._forward_hooks and not net.block._forward_hooks
