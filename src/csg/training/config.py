"""The resolved training configuration: defaults < preset < TOML file < command line."""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..core.errors import CsgError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHODS = ("std", "csg", "csg-fixed", "icnn", "picnn", "csg-plus")


#: Adam learning rate of the gate-like parameter when ``--gate-lr`` is not given. CSG: 0.05 lets the
#: gate reach its density interval within the few CSG epochs of a short run (docs/tuning.md); PICNN:
#: the reference code's 1e-3 for its correspondence matrix (docs/methods.md).
GATE_LR_DEFAULTS = {"csg": 0.05, "csg-fixed": 0.05, "picnn": 1e-3, "csg-plus": 0.05}
#: Weight of CE on the label-reading CSG path when ``--lambda1`` is not given: CSG's 1 (the reference code);
#: CSG+ replaces that path by its class-specific head (docs/methods.md), so its default is 0.
LAMBDA1_DEFAULTS = {"csg-plus": 0.0}


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
    # a user's network instead of a registered --arch (csg.core.named_model; docs/integrations.md)
    model_builder: str | None = None       # "package.module:factory"
    model_kwargs: dict[str, Any] | None = None
    feature_layer: str | None = None       # dotted name of the feature layer inside the network
    head: str | None = None                # dotted name of its final nn.Linear (None: a new head)
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
    lambda1: float | None = None   # None: the method's own default (LAMBDA1_DEFAULTS, else 1)
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
    # CSG+ (docs/methods.md)
    suppression_weight: float = 1.0
    class_head_weight: float = 1.0
    gate_follows_activation: bool = True
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
    tensorboard: bool = False   # per-epoch scalars and heatmaps into RUN/tensorboard/ (csg[tensorboard])
    out: str | None = None

    def __post_init__(self) -> None:
        if self.gate_lr is None:
            self.gate_lr = GATE_LR_DEFAULTS.get(self.method, GATE_LR_DEFAULTS["csg"])
        if self.lambda1 is None:
            self.lambda1 = LAMBDA1_DEFAULTS.get(self.method, 1.0)

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


#: TOML keys that name a field by its flag (``model = "pkg.mod:factory"`` as ``--model``)
TOML_ALIASES = {"model": "model_builder"}


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
        if name not in names and name not in TOML_ALIASES:
            raise CsgError(f"config file {path}: unknown key {key!r}; keys are the `csg train` flags, e.g. "
                           "epochs, lr, rho")
        out[TOML_ALIASES.get(name, name)] = value
    check_types(out, f"config file {path}")
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


#: choices of the options that take one of a few words
CHOICES = {"method": METHODS, "schedule": ("alternate", "joint"), "optimizer": ("sgd", "adam"),
           "gate_optimizer": ("sgd", "adam"), "lr_schedule": ("constant", "multistep", "cosine"),
           "penalty": ("l1", "l2", "smooth-l1"), "picnn_v_optimizer": ("model", "own")}
#: numeric ranges: (low, high, low inclusive, high inclusive); None: unbounded on that side
RANGES = {
    "epochs": (1, None, True, True), "batch_size": (1, None, True, True), "eval_batch_size": (1, None, True, True),
    "lr": (0, None, False, True), "momentum": (0, 1, True, False), "weight_decay": (0, None, True, True),
    "gamma": (0, 1, False, True), "crop_padding": (0, None, True, True), "period": (1, None, True, True),
    "csg_epochs": (1, None, True, True), "warmup": (0, None, True, True), "final_csg_epochs": (0, None, True, True),
    "rho": (0, 1, False, True), "lambda1": (0, None, True, True), "lambda2": (0, None, True, True),
    "gate_init": (0, 1, False, True), "gate_lr": (0, None, True, True), "csg_lr": (0, None, False, True),
    "m1": (1, None, True, True), "m2": (0, None, True, True), "icnn_weight": (0, None, True, True),
    "icnn_beta": (0, None, False, True), "picnn_weight": (0, None, True, True),
    "suppression_weight": (0, None, True, True), "class_head_weight": (0, None, True, True),
    "subset": (1, None, True, True), "test_subset": (1, None, True, True), "seed": (0, None, True, True),
    "threads": (1, None, True, True), "workers": (0, None, True, True), "resize": (1, None, True, True),
    "checkpoint_every": (0, None, True, True), "eval_every": (0, None, True, True),
}


def _field_kind(name: str) -> str:
    """``int``, ``float``, ``bool``, ``str`` or ``floats`` (a tuple of numbers) for a config field."""
    annotation = str({f.name: f.type for f in fields(TrainConfig)}[name])
    for kind in ("bool", "int", "float", "str"):
        if annotation.startswith(kind):
            return kind
    if annotation.startswith("dict"):
        return "dict"
    return "floats" if "tuple" in annotation else "any"


def check_types(values: dict[str, Any], where: str) -> None:
    """Each value has its field's type (an int where an int is meant, ...); ``where`` names the source."""
    for name, value in values.items():
        if value is None or name not in {f.name for f in fields(TrainConfig)}:
            continue
        kind = _field_kind(name)
        ok = {"bool": isinstance(value, bool),
              "int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "str": isinstance(value, str),
              "floats": isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 for v in value),
              "dict": isinstance(value, dict) and all(isinstance(k, str) for k in value)}.get(kind, True)
        if not ok:
            want = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a text value",
                    "floats": "a list of numbers", "dict": "a table of keyword arguments"}[kind]
            raise CsgError(f"{where}: {name} = {value!r} is not {want}; e.g. {name} = "
                           f"{ {'bool': 'true', 'int': '12', 'float': '0.1', 'str': chr(34) + 'csg' + chr(34), 'floats': '[0.5, 0.75]', 'dict': '{ width = 8 }'}[kind] }")


def validate(cfg: TrainConfig) -> None:
    """Every option in its type, choices and range, and the options that depend on each other."""
    values = cfg.to_dict()
    check_types(values, "the configuration")
    for name, choices in CHOICES.items():
        if values[name] not in choices:
            raise CsgError(f"unknown --{name.replace('_', '-')} {values[name]!r}; choose one of {', '.join(choices)}")
    for name, (lo, hi, lo_in, hi_in) in RANGES.items():
        value = values.get(name)
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, float) and not math.isfinite(value):
            raise CsgError(f"{flag} must be a finite number, got {value}")
        below = lo is not None and (value < lo if lo_in else value <= lo)
        above = hi is not None and (value > hi if hi_in else value >= hi)
        if below or above:
            span = (("[" if lo_in else "(") + (f"{lo:g}" if lo is not None else "-inf") + ", "
                    + (f"{hi:g}" if hi is not None else "inf") + ("]" if hi_in else ")"))
            raise CsgError(f"{flag} must lie in {span}, got {value:g}")
    if cfg.model_builder is None:
        given = [f"--{n.replace('_', '-')}" for n in ("model_kwargs", "feature_layer", "head")
                 if getattr(cfg, n) is not None]
        if given:
            raise CsgError(f"{given[0]} names a part of your own network and needs --model package.module:factory")
    elif not cfg.feature_layer:
        raise CsgError(f"--model {cfg.model_builder} needs --feature-layer NAME, the dotted name of the layer whose "
                       "output is the feature maps (e.g. features.3)")
    if not 1 <= cfg.csg_epochs <= cfg.period:
        raise CsgError(f"--csg-epochs {cfg.csg_epochs} must be between 1 and --period {cfg.period}")
    if any(not 0 < m < 1 for m in cfg.milestones):
        raise CsgError(f"--milestones are fractions of the run in (0, 1), got {','.join(f'{m:g}' for m in cfg.milestones)}")
