"""A network named by import path (``"package.module:factory"``), built with keyword arguments.

``csg train --model package.module:factory --model-kwargs '{"width": 8}' --feature-layer NAME [--head NAME]``
and the Lightning integration record these keys in ``config.json``; every command rebuilds the
network from them (:func:`csg.runs.rebuild.load_model_from_run`).
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import torch
import torch.nn as nn

from .errors import CsgError
from .model import GatedClassifier

#: config.json keys of a run whose model is not a registered backbone: ``"module:QualName"`` of a class or
#: function returning the network, its keyword arguments, and the dotted name of its head inside it (the
#: feature layer is ``feature_layer``, as for every run)
BUILDER_KEY, KWARGS_KEY, HEAD_KEY = "model_builder", "model_kwargs", "head"


def import_builder(target: str):
    """The class or function ``"module:QualName"`` names (a CsgError naming it when it cannot be imported)."""
    module_name, sep, qualname = str(target).partition(":")
    if not sep or not module_name or not qualname:
        raise CsgError(f"model {target!r} is not of the form package.module:factory; e.g. "
                       "--model mypackage.nets:make_net")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CsgError(f"model {target} cannot be imported ({exc}); put its module on PYTHONPATH") from None
    if not callable(obj):
        raise CsgError(f"model {target} is a {type(obj).__name__}, not a class or function returning an nn.Module")
    return obj


def build_named_network(target: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``target(**kwargs)``, checked to be an ``nn.Module``."""
    factory = import_builder(target)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise CsgError(f"model_kwargs of {target} must be a table of keyword arguments, got "
                       f"{type(kwargs).__name__}; e.g. --model-kwargs '{{\"width\": 8}}'")
    try:
        net = factory(**(kwargs or {}))
    except TypeError as exc:
        raise CsgError(f"model {target} does not take the keyword arguments {sorted(kwargs or {})} ({exc}); "
                       "fix --model-kwargs") from None
    if not isinstance(net, nn.Module):
        raise CsgError(f"model {target} returned a {type(net).__name__}, not an nn.Module")
    return net


def infer_num_filters(net: nn.Module, feature_layer: str, in_channels: int, image_size: Sequence[int]) -> int:
    """K: the channel count of ``feature_layer``'s output on one blank image (no training state changes)."""
    probe = GatedClassifier(net, feature_layer, 1, num_filters=1)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            maps = probe.feature_maps(torch.zeros(1, int(in_channels), *[int(s) for s in image_size]))
    except CsgError:
        raise
    except Exception as exc:  # the user's forward pass failed on an image of the data's shape
        raise CsgError(f"the model's forward pass fails on a {in_channels} x {image_size[0]} x {image_size[1]} "
                       f"image ({type(exc).__name__}: {exc}); build it for the data's image shape") from None
    finally:
        net.train(was_training)
    if not torch.is_tensor(maps) or maps.dim() != 4:
        got = tuple(maps.shape) if torch.is_tensor(maps) else type(maps).__name__
        raise CsgError(f"feature layer {feature_layer!r} gives {got}, not feature maps (N, K, H, W); name a "
                       "convolutional layer with --feature-layer")
    return int(maps.shape[1])


def build_named_model(config: dict[str, Any], *, num_classes: int, in_channels: int | None = None,
                      image_size: Sequence[int] | None = None, input_mean=None, input_std=None) -> GatedClassifier:
    """The :class:`GatedClassifier` around the network ``config`` names (``model_builder``, ``model_kwargs``,
    ``feature_layer``, ``head``). Without a head, K is ``config["num_filters"]`` or is read from one probe
    pass on an ``in_channels`` x ``image_size`` image."""
    target = config[BUILDER_KEY]
    net = build_named_network(target, config.get(KWARGS_KEY))
    feature_layer = config.get("feature_layer")
    if not feature_layer:
        raise CsgError(f"model {target} needs the dotted name of its feature layer; pass --feature-layer NAME")
    head = config.get(HEAD_KEY) or None
    num_filters = config.get("num_filters")
    if head is None and num_filters is None:
        if in_channels is None or image_size is None:
            raise CsgError(f"model {target}: the number of filters of {feature_layer!r} is unknown; name the head")
        num_filters = infer_num_filters(net, feature_layer, in_channels, image_size)
    return GatedClassifier(net, feature_layer, int(num_classes), head=head,
                           num_filters=None if head is not None else int(num_filters),
                           input_mean=input_mean, input_std=input_std)


__all__ = ["BUILDER_KEY", "KWARGS_KEY", "HEAD_KEY", "import_builder", "build_named_network", "build_named_model",
           "infer_num_filters"]
