"""Rebuilding a trained model from its run directory (``config.json`` + the checkpoint)."""
from __future__ import annotations

import importlib
from typing import Any

import torch.nn as nn

from ..backbones import build_model
from ..core.errors import CsgError
from ..core.model import GatedClassifier
from ..methods import build_method
from ..training.checkpoint import restore_checkpoint
from ..training.config import TrainConfig

#: config.json keys of a run whose model is not a registered backbone (csg.integrations.lightning writes
#: them): ``"module:QualName"`` of a class or function returning the network, its keyword arguments, and
#: the dotted name of its head inside it (the feature layer is ``feature_layer``, as for every run)
BUILDER_KEY, KWARGS_KEY, HEAD_KEY = "model_builder", "model_kwargs", "head"


def build_named_model(raw: dict[str, Any]) -> nn.Module:
    """The network a run's ``config.json`` names by import path, built with its saved keyword arguments."""
    module_name, _, qualname = str(raw[BUILDER_KEY]).partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CsgError(f"the run's model {raw[BUILDER_KEY]} cannot be imported ({exc}); put its module on "
                       "PYTHONPATH") from None
    return obj(**(raw.get(KWARGS_KEY) or {}))


def load_model_from_run(run, device: str = "cpu"):
    """Rebuild a run's model from ``config.json`` and load its checkpoint (eval mode)."""
    raw = run.config
    cfg = TrainConfig.from_dict(raw)
    if raw.get(BUILDER_KEY):
        model = GatedClassifier(build_named_model(raw), raw["feature_layer"], raw["num_classes"],
                                head=raw[HEAD_KEY], input_mean=raw["input_mean"], input_std=raw["input_std"])
    else:
        model = build_model(cfg.arch, raw["num_classes"], raw["in_channels"], input_mean=raw["input_mean"],
                            input_std=raw["input_std"], small_input=cfg.small_input)
    method = build_method(cfg, raw["num_classes"])
    method.attach(model)
    restore_checkpoint(run.checkpoint_path, model, restore_rng=False)
    model.to(device).eval()
    return model
