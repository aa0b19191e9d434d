"""Backbones: published parameter counts, shapes, the head-follows-the-pool contract, init, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from csg.backbones import (BackboneSpec, CifarBasicBlock, available_backbones, build_backbone)
from csg.core.errors import CsgError
from csg.core.model import GatedClassifier

CIFAR = ["resnet20", "resnet32", "resnet56", "resnet110"]
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
BIG = {"resnet50", "resnet101", "resnet152"}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_lists_every_name_of_the_contract():
    assert set(available_backbones()) == set(CIFAR + IMAGENET + ["alexnet", "vgg11_bn", "vgg16_bn"])


# ---------------------------------------------------------------- parameter counts (known answers)

@pytest.mark.parametrize("name, count", [
    # torchvision's published counts (1000 classes, 3 channels, 224 px stem).
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
])
def test_imagenet_resnet_parameter_counts_equal_torchvision(name, count):
    torch.manual_seed(0)
    assert n_params(build_backbone(name, 1000).module) == count


def test_resnet20_parameter_count_by_hand():
    # Option A (parameter-free shortcuts), 10 classes; 3x3 convs have no bias, BN has 2 params per channel:
    #   stem   conv 3*16*9 = 432, bn 32                                                  ->     464
    #   layer1 3 blocks x (2 x 16*16*9 = 4608 conv + 2 x 32 bn = 64)                     ->  14,016
    #   layer2 16*32*9 + 32*32*9 + 128 = 13,952; 2 x (2 x 9216 + 128) = 37,120           ->  51,072
    #   layer3 32*64*9 + 64*64*9 + 256 = 55,552; 2 x (2 x 36,864 + 256) = 147,968        -> 203,520
    #   fc     64*10 + 10                                                                ->     650
    #   total                                                                               269,722  (the quoted "0.27M")
    # The brief's 272,474 is option B: + (16*32 + 2*32) + (32*64 + 2*64) = 576 + 2,176 = 2,752 for the two
    # 1x1-conv + BN shortcuts; 269,722 + 2,752 = 272,474.
    assert n_params(build_backbone("resnet20", 10).module) == 269_722
    assert n_params(build_backbone("resnet20", 10, shortcut="B").module) == 272_474


@pytest.mark.parametrize("name, millions", [("resnet32", 0.46), ("resnet56", 0.85), ("resnet110", 1.7)])
def test_deeper_cifar_resnets_match_the_quoted_sizes(name, millions):
    # He et al. 2016 Table 6 quotes 0.46M / 0.85M / 1.7M.
    assert round(n_params(build_backbone(name, 10).module) / 1e6, 2 if millions < 1 else 1) == millions


def test_resnet_stem_variants_change_only_conv1():
    base = 11_689_512
    # One input channel: conv1 loses 2 * 64 * 7 * 7 weights.
    assert n_params(build_backbone("resnet18", 1000, in_channels=1).module) == base - 2 * 64 * 49
    # Small stem: 7x7 -> 3x3 kernel on 3 channels.
    assert n_params(build_backbone("resnet18", 1000, small_input=True).module) == base - 64 * 3 * 49 + 64 * 3 * 9


def test_alexnet_and_vgg_feature_stacks_equal_torchvision():
    # torchvision alexnet 61,100,840 minus its classifier 9216*4096+4096 + 4096*4096+4096 + 4096*1000+1000.
    tv_classifier_alex = (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    alex = build_backbone("alexnet", 1000, small_input=False).module
    assert n_params(alex.features) == 61_100_840 - tv_classifier_alex
    # torchvision vgg*_bn totals minus the VGG classifier 25088*4096+4096 + 4096*4096+4096 + 4096*1000+1000.
    tv_classifier_vgg = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert n_params(build_backbone("vgg11_bn", 10).module.features) == 132_868_840 - tv_classifier_vgg
    assert n_params(build_backbone("vgg16_bn", 10).module.features) == 138_365_992 - tv_classifier_vgg


def test_imagenet_resnet_uses_torchvision_names():
    net = build_backbone("resnet18", 1000).module
    keys = set(net.state_dict())
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean",
              "layer4.1.conv2.weight", "fc.weight", "fc.bias"]:
        assert k in keys
    # 62 parameter tensors: conv1 1 + bn1 2 + 8 blocks x 6 + 3 downsamples x 3 + fc 2; plus 3 buffers for
    # each of the 20 BNs (1 + 16 + 3) = 60 -> 122 state_dict entries, as torchvision's resnet18.
    assert len(list(net.named_parameters())) == 62
    assert len(keys) == 122
    for attr in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]:
        assert hasattr(net, attr)


def test_bottleneck_strides_on_the_3x3_conv():
    net = build_backbone("resnet50", 10).module
    block = net.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.conv3.out_channels == 512 and block.downsample[0].stride == (2, 2)


# ---------------------------------------------------------------- shapes

def _input_cases(name):
    if name in BIG:
        return [(1, 1, 28, 28), (1, 3, 32, 32)]
    return [(2, 1, 28, 28), (2, 3, 32, 32)]


# Spatial size of the feature maps, derived from the strides (28 px, 32 px), with small_input=True.
EXPECTED_HW = {
    **{n: (7, 8) for n in CIFAR},           # /4: 28 -> 14 -> 7; 32 -> 16 -> 8
    **{n: (4, 4) for n in IMAGENET},        # /8, ceil: 28 -> 14 -> 7 -> 4; 32 -> 4
    "alexnet": (7, 8),                      # two 2x2 pools
    "vgg11_bn": (3, 4), "vgg16_bn": (3, 4),  # three pools (4th and 5th gone): 28 -> 3; 32 -> 4
}


@pytest.mark.parametrize("name", sorted(EXPECTED_HW))
def test_output_and_feature_shapes(name):
    for shape in _input_cases(name):
        torch.manual_seed(0)
        n, c, h, _ = shape
        spec = build_backbone(name, 7, in_channels=c, small_input=True)
        assert isinstance(spec, BackboneSpec)
        net = spec.module.eval()
        x = torch.rand(shape)
        wrapped = GatedClassifier(net, spec.feature_layer, 7, head=spec.head)
        with torch.no_grad():
            out = wrapped(x)
            logits = net(x)
        hw = EXPECTED_HW[name][0 if h == 28 else 1]
        assert logits.shape == (n, 7)
        assert out.maps.shape == (n, spec.num_filters, hw, hw)
        assert out.pooled.shape == (n, spec.num_filters)
        # The wrapper's head(pool(A)) is the module's own forward: nothing sits between pool and head.
        torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
        # The feature layer ends at a ReLU, and it is not dead at init.
        assert out.maps.min() >= 0 and (out.maps > 0).any()


@pytest.mark.parametrize("name, k", [("resnet20", 64), ("resnet18", 512), ("resnet50", 2048),
                                     ("alexnet", 256), ("vgg16_bn", 512)])
def test_spec_names_and_k(name, k):
    spec = build_backbone(name, 5)
    assert spec.num_filters == k
    head = spec.module.get_submodule(spec.head)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (k, 5)
    feat = spec.module.get_submodule(spec.feature_layer)
    last = feat[-1] if isinstance(feat, nn.Sequential) else None
    if spec.feature_layer == "features":  # VGG/AlexNet: the stack ends at its ReLU
        assert isinstance(last, nn.ReLU)


def test_default_stems_at_larger_inputs():
    # ImageNet stem (default): /32 -> a 64 px image gives 2 x 2 maps; AlexNet's ImageNet stem on 67 px:
    # conv 11/4 p2 -> 15, pool 3/2 -> 7, pool 3/2 -> 3.
    spec = build_backbone("resnet18", 3)
    assert not spec.small_input and isinstance(spec.module.maxpool, nn.MaxPool2d)
    wrapped = GatedClassifier(spec.module.eval(), spec.feature_layer, 3, head=spec.head)
    with torch.no_grad():
        assert wrapped.feature_maps(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    spec = build_backbone("alexnet", 3, small_input=False)
    wrapped = GatedClassifier(spec.module.eval(), spec.feature_layer, 3, head=spec.head)
    with torch.no_grad():
        assert wrapped.feature_maps(torch.rand(1, 3, 67, 67)).shape == (1, 256, 3, 3)
    assert build_backbone("alexnet", 3).small_input is True  # None -> small stem for AlexNet
    assert build_backbone("resnet20", 3, small_input=True).small_input is False  # CIFAR nets ignore it


# ---------------------------------------------------------------- shortcut option A, init

def test_option_a_shortcut_is_subsample_and_centered_zero_padding():
    torch.manual_seed(0)
    block = CifarBasicBlock(16, 32, stride=2, shortcut="A").eval()
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv2.weight.zero_()  # residual branch = bn2(0) = 0 in eval mode (running mean 0, bias 0)
    x = torch.randn(2, 16, 8, 8)
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = torch.relu(x[:, :, ::2, ::2])
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0


def test_init_kaiming_normal_and_unit_bn():
    torch.manual_seed(0)
    net = build_backbone("resnet50", 10).module
    w = net.layer4[0].conv2.weight  # 512 x 512 x 3 x 3; fan_out = 512 * 9
    assert abs(w.std().item() / (2 / (512 * 9)) ** 0.5 - 1) < 0.01
    assert abs(w.mean().item()) < 1e-3
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    alex = build_backbone("alexnet", 10).module
    w = alex.features[8].weight  # 256 x 384 x 3 x 3; fan_out = 256 * 9
    assert abs(w.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.03


# ---------------------------------------------------------------- errors and names

def test_unknown_name_suggests_a_close_one():
    with pytest.raises(CsgError) as err:
        build_backbone("resnet19", 10)
    msg = str(err.value)
    assert "resnet18" in msg and "did you mean" in msg and "vgg16_bn" in msg and "\n" not in msg
    with pytest.raises(CsgError, match="vgg16_bn"):
        build_backbone("vgg16", 10)


def test_aliases_and_bad_arguments():
    assert build_backbone("ResNet-20", 10).name == "resnet20"
    assert build_backbone("VGG16-BN", 10).name == "vgg16_bn"
    with pytest.raises(CsgError, match="num_classes"):
        build_backbone("resnet20", 0)
    with pytest.raises(CsgError, match="in_channels"):
        build_backbone("resnet20", 10, in_channels=0)
    with pytest.raises(CsgError, match="shortcut"):
        build_backbone("resnet18", 10, shortcut="B")
    with pytest.raises(CsgError, match="shortcut"):
        build_backbone("resnet20", 10, shortcut="C")


def test_trains_one_step_through_the_wrapper():
    # Gradients reach the stem through the feature layer and the reused head (train-mode BN, batch 4).
    torch.manual_seed(0)
    spec = build_backbone("resnet20", 4, in_channels=1)
    wrapped = GatedClassifier(spec.module, spec.feature_layer, 4, head=spec.head)
    loss = nn.functional.cross_entropy(wrapped(torch.rand(4, 1, 28, 28)).logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert spec.module.conv1.weight.grad.abs().sum() > 0
    assert spec.module.fc.weight.grad.abs().sum() > 0
