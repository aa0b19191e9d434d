"""Batch norm folded into its convolution for attacks: the same function and input gradient, or no folding."""
import pytest
import torch
import torch.nn as nn

from csg.backbones import build_model
from csg.core.fold import folded_copy


def _with_running_stats(model: nn.Module) -> nn.Module:
    # untrained batch norms are the identity in eval mode; give them statistics that folding must carry
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("arch,convs", [("resnet20", 19), ("vgg11_bn", 8)])
def test_folded_copy_has_the_same_logits_and_input_gradient(arch, convs):
    torch.manual_seed(0)
    size = 28 if arch == "resnet20" else 32
    model = _with_running_stats(build_model(arch, 10, 1))
    probe = torch.rand(4, 1, size, size)
    folded, n = folded_copy(model, probe, protected=(model._feature_module,))
    assert n == convs and folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) >= convs  # the model is untouched
    x = torch.rand(16, 1, size, size, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    grads = []
    for m in (model, folded):
        out = m.logits(x)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(out, y), x)
        grads.append((out.detach(), g))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-3, atol=1e-7)


class _ConvUsedTwice(nn.Module):
    """y = BN(conv(x)) + conv(x): the convolution's output is used beside its batch norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def logits(self, x):
        a = self.conv(x)
        return self.head((self.bn(a) + a).mean(dim=(2, 3)))


class _SharedConv(nn.Module):
    """One convolution called twice, each time followed by its own batch norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(1), nn.BatchNorm2d(1)
        self.head = nn.Linear(1, 3)

    def logits(self, x):
        return self.head(self.bn2(self.conv(self.bn1(self.conv(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("cls", [_ConvUsedTwice, _SharedConv])
def test_a_pair_that_folding_would_change_is_left_alone(cls):
    model = _with_running_stats(cls())
    probe = torch.rand(3, 1, 8, 8)
    folded, n = folded_copy(model, probe)
    assert n == 0 and not any(isinstance(m, nn.Identity) for m in folded.modules())
    torch.testing.assert_close(folded.logits(probe), model.logits(probe))


def test_a_protected_module_and_training_mode():
    model = _with_running_stats(build_model("resnet20", 10, 1))
    probe = torch.rand(2, 1, 28, 28)
    _, n_all = folded_copy(model, probe)
    b = model.backbone
    _, n_kept = folded_copy(model, probe, protected=(b.conv1, b.layer1[0].bn1))
    assert n_kept == n_all - 2
    # a batch norm that is the feature layer itself: its hook must still find it in the copy
    features = build_model("resnet20", 10, 1)
    from csg import GatedClassifier

    features = _with_running_stats(GatedClassifier(features.backbone, "layer3.2.bn2", 10, num_filters=64))
    folded, n = folded_copy(features, probe, protected=(features._feature_module,))
    assert n == n_all - 1
    torch.testing.assert_close(folded.logits(probe), features.logits(probe), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        folded_copy(model.train(), probe)
