"""The resolved training configuration: defaults < preset < TOML file < command line."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import CsgError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHODS = ("std", "csg", "csg-fixed", "icnn", "picnn")


#: Adam learning rate of the gate-like parameter when ``--gate-lr`` is not given. CSG: 0.05 lets the
#: gate reach its density interval within the few CSG epochs of a short run (docs/tuning.md); PICNN:
#: the reference code's 1e-3 for its correspondence matrix (docs/methods.md).
GATE_LR_DEFAULTS = {"csg": 0.05, "csg-fixed": 0.05, "picnn": 1e-3}


@dataclass
class TrainConfig:
    """Every knob of a training run; ``config.json`` stores it resolved."""

    # data and model
    data: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    test_subset: int | None = None
    arch: str = "resnet20"
    small_input: bool | None = None
    method: str = "csg"
    seed: int = 0
    # optimisation
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    crop_padding: int = 2
    hflip: bool = True
    freeze_below: str | None = None
    # CSG (METHOD.md section 2)
    schedule: str = "joint"      # docs/tuning.md: joint after a short STD warm-up, measured best here
    period: int = 3
    csg_epochs: int = 1
    warmup: int = 2
    final_csg_epochs: int = 0
    rho: float | None = None
    penalty: str = "l1"
    lambda1: float = 1.0
    lambda2: float = 1e-3
    gate_init: float = 0.5
    gate_lr: float | None = None   # None: the method's own default (GATE_LR_DEFAULTS)
    gate_optimizer: str = "adam"
    csg_lr: float | None = None
    csg_freeze_below: str | None = None
    m1: int | None = None
    m2: int | None = None
    # ICNN (METHOD.md section 7) and PICNN (section 8)
    icnn_layer: str | None = None
    icnn_weight: float = 1.0
    icnn_beta: float = 4.0
    icnn_test_mask: bool = True
    picnn_weight: float = 2.0
    picnn_v_optimizer: str = "model"   # "model": V trained with the weights (the authors' one optimiser)
    # running
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = True
    # speed and data loading (csg.training.speed; docs/distributed.md): None = the device's default
    amp: bool | None = None
    compile: bool = False
    workers: int | None = None
    resize: int | None = None
    checkpoint_every: int = 0
    evaluate: bool = True
    eval_every: int = 1
    out: str | None = None

    def __post_init__(self) -> None:
        if self.gate_lr is None:
            self.gate_lr = GATE_LR_DEFAULTS.get(self.method, GATE_LR_DEFAULTS["csg"])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        if "milestones" in known and known["milestones"] is not None:
            known["milestones"] = tuple(float(m) for m in known["milestones"])
        return cls(**known)


# The paper's settings as one flag (METHOD.md section 2; Appendix B).
PRESETS: dict[str, dict[str, Any]] = {
    # CIFAR-10 / ResNet-20: 200 epochs, SGD momentum 0.9, lr 0.1, batch 256, 1 CSG epoch in 3.
    "paper-cifar": dict(data="cifar10", arch="resnet20", epochs=200, batch_size=256, optimizer="sgd", lr=0.1,
                        lr_schedule="multistep", milestones=(0.5, 0.75), period=3, csg_epochs=1, rho=0.1,
                        crop_padding=4, hflip=True, schedule="alternate", warmup=0),
    # The same schedule length on the built-in Fashion-MNIST.
    "paper-fashion-mnist": dict(data="fashion-mnist", arch="resnet20", epochs=200, batch_size=256, lr=0.1,
                                lr_schedule="multistep", milestones=(0.5, 0.75), period=3, csg_epochs=1,
                                schedule="alternate", warmup=0),
    # ImageNet / ResNet-18, 1000 classes (Appendix B): batch 256, 90 epochs, lr 0.1 steps at 30/60, rho 0.1.
    # The images are streamed from DIR/train/<class>/ and DIR/val/<class>/ and resized to 224 x 224.
    "imagenet": dict(data="image-folder-stream", resize=224, arch="resnet18", small_input=False, epochs=90,
                     batch_size=256,
                     optimizer="sgd", lr=0.1, weight_decay=1e-4, lr_schedule="multistep",
                     milestones=(1 / 3, 2 / 3), period=3, csg_epochs=1, rho=0.1, crop_padding=0, hflip=True,
                     schedule="alternate", warmup=0,
                     eval_batch_size=256),
    # VOC fine-tuning (Appendix B and the reference code): 10 STD warm-up epochs, 1 CSG epoch in 3, Adam,
    # lr 1e-5 for STD and 1e-3 for CSG epochs, layers below stage 3 (STD) / 4 (CSG) frozen, rho 0.2.
    "voc": dict(data="voc-animals", arch="resnet152", optimizer="adam", lr=1e-5, csg_lr=1e-3, weight_decay=0.0,
                schedule="alternate", warmup=10, period=3, csg_epochs=1, rho=0.2, lr_schedule="constant", freeze_below="layer3",
                csg_freeze_below="layer4", epochs=100, batch_size=32, crop_padding=0),
}


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise CsgError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise CsgError(f"config file {path} is not valid TOML: {exc}") from None
    raw = raw.get("train", raw)  # accept a [train] table or top-level keys
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names:
            raise CsgError(f"config file {path}: unknown key {key!r}; keys are the `csg train` flags, e.g. "
                           "epochs, lr, rho")
        out[name] = value
    return out


def resolve_config(cli_values: dict[str, Any], preset: str | None = None, toml_path: str | None = None) -> TrainConfig:
    """Merge defaults, a preset, a TOML file and the flags the user gave (``None`` = not given)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise CsgError(f"unknown --preset {preset!r}; presets: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    if toml_path:
        values.update(load_toml(toml_path))
    values.update({k: v for k, v in cli_values.items() if v is not None})
    cfg = TrainConfig.from_dict(values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def positive(name: str, value: float) -> None:
        if value is None or value <= 0:
            raise CsgError(f"--{name.replace('_', '-')} must be positive, got {value}")

    if cfg.method not in METHODS:
        raise CsgError(f"unknown --method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    for name in ("epochs", "batch_size", "lr", "period", "eval_batch_size"):
        positive(name, getattr(cfg, name))
    if cfg.schedule not in ("alternate", "joint"):
        raise CsgError(f"unknown --schedule {cfg.schedule!r}; choose alternate or joint")
    if not 1 <= cfg.csg_epochs <= cfg.period:
        raise CsgError(f"--csg-epochs {cfg.csg_epochs} must be between 1 and --period {cfg.period}")
    if cfg.warmup < 0 or cfg.final_csg_epochs < 0:
        raise CsgError("--warmup and --final-csg-epochs must be >= 0")
    if cfg.optimizer not in ("sgd", "adam"):
        raise CsgError(f"unknown --optimizer {cfg.optimizer!r}; choose sgd or adam")
    if cfg.picnn_v_optimizer not in ("model", "own"):
        raise CsgError(f"unknown --picnn-v-optimizer {cfg.picnn_v_optimizer!r}; choose model (V trained with the "
                       "weights, as the authors do) or own (V by its own --gate-optimizer at --gate-lr)")
    if cfg.gate_optimizer not in ("sgd", "adam"):
        raise CsgError(f"unknown --gate-optimizer {cfg.gate_optimizer!r}; choose sgd or adam")
    if cfg.lr_schedule not in ("constant", "multistep", "cosine"):
        raise CsgError(f"unknown --lr-schedule {cfg.lr_schedule!r}; choose constant, multistep or cosine")
    if cfg.subset is not None and cfg.subset < 1:
        raise CsgError(f"--subset must be a positive number of images, got {cfg.subset}")
    if cfg.gate_lr < 0:
        raise CsgError(f"--gate-lr must be >= 0, got {cfg.gate_lr}")
    if cfg.workers is not None and cfg.workers < 0:
        raise CsgError(f"--workers must be >= 0 (0 decodes in the training process), got {cfg.workers}")
    if cfg.resize is not None and cfg.resize < 1:
        raise CsgError(f"--image-size must be a positive number of pixels, got {cfg.resize}")
    if cfg.threads is not None and cfg.threads < 1:
        raise CsgError(f"--threads must be >= 1, got {cfg.threads}")
