"""Rebuilding a trained model from its run directory (``config.json`` + the checkpoint)."""
from __future__ import annotations

from ..backbones import build_model
from ..core.errors import CsgError
from ..core.named_model import BUILDER_KEY, HEAD_KEY, KWARGS_KEY, build_named_model
from ..methods import build_method
from ..training.checkpoint import restore_checkpoint
from ..training.config import TrainConfig

__all__ = ["BUILDER_KEY", "KWARGS_KEY", "HEAD_KEY", "load_model_from_run"]


def load_model_from_run(run, device: str = "cpu"):
    """Rebuild a run's model from ``config.json`` and load its checkpoint (eval mode).

    A run whose ``config.json`` names its network by import path (``model_builder``: ``csg train --model``
    or the Lightning integration) is rebuilt by importing it; any other from its registered ``arch``.
    """
    raw = run.config
    cfg = TrainConfig.from_dict(raw)
    if raw.get("model_object") and not raw.get(BUILDER_KEY):
        raise CsgError(f"{run.path} was trained with a network object passed from Python ({raw['model_object']}), "
                       "which commands cannot rebuild; train it with TrainConfig(model_builder='module:factory', "
                       "model_kwargs={...}, feature_layer=..., head=...) or csg train --model, so that they can")
    if raw.get(BUILDER_KEY):
        model = build_named_model(raw, num_classes=raw["num_classes"], in_channels=raw.get("in_channels"),
                                  image_size=raw.get("image_size"), input_mean=raw["input_mean"],
                                  input_std=raw["input_std"])
    else:
        model = build_model(cfg.arch, raw["num_classes"], raw["in_channels"], input_mean=raw["input_mean"],
                            input_std=raw["input_std"], small_input=cfg.small_input)
    method = build_method(cfg, raw["num_classes"])
    method.attach(model)
    restore_checkpoint(run.checkpoint_path, model, restore_rng=False)
    model.to(device).eval()
    return model
