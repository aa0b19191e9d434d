"""Rebuilding a trained model from its run directory (``config.json`` + the checkpoint)."""
from __future__ import annotations

from ..backbones import build_model
from ..methods import build_method
from ..training.checkpoint import restore_checkpoint
from ..training.config import TrainConfig


def load_model_from_run(run, device: str = "cpu"):
    """Rebuild a run's model from ``config.json`` and load its checkpoint (eval mode)."""
    raw = run.config
    cfg = TrainConfig.from_dict(raw)
    model = build_model(cfg.arch, raw["num_classes"], raw["in_channels"], input_mean=raw["input_mean"],
                        input_std=raw["input_std"], small_input=cfg.small_input)
    method = build_method(cfg, raw["num_classes"])
    method.attach(model)
    restore_checkpoint(run.checkpoint_path, model, restore_rng=False)
    model.to(device).eval()
    return model
