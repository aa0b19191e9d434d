"""``csg train``: train STD, CSG, CSG with a fixed gate, ICNN or PICNN into a run directory."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..training.config import GATE_LR_DEFAULTS, LAMBDA1_DEFAULTS, METHODS, PRESETS, TrainConfig, resolve_config


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_model_kwargs(text: str | None) -> dict | None:
    """``--model-kwargs`` JSON as a dict (one CsgError line when it is not a JSON object)."""
    import json

    from ..core.errors import CsgError

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CsgError(f"--model-kwargs {text!r} is not valid JSON ({exc.msg}); give an object such as "
                       "'{\"width\": 8}'") from None
    if not isinstance(value, dict):
        raise CsgError(f"--model-kwargs {text!r} is not a JSON object of keyword arguments; give one such as "
                       "'{\"width\": 8}'")
    return value


#: What a default of None means, for the options whose default depends on the run.
NONE_MEANS = {"device": "auto", "threads": "all cores", "rho": "1/C", "gate_lr": None, "csg_lr": "--lr",
              "m1": "K // C", "m2": "K - C*m1", "icnn_layer": "the feature layer", "resize": "the images' common size",
              "subset": "all", "test_subset": "all", "data_dir": "$CSG_DATA_DIR, else the dataset's default",
              "small_input": "by image size", "amp": "on CUDA GPUs with bf16", "workers": "$CSG_DATA_WORKERS, "
              "else cores - 1, at most 8", "freeze_below": "none", "csg_freeze_below": "none",
              "model_builder": "--arch", "model_kwargs": "none", "feature_layer": "the --arch's own",
              "head": "a new linear head"}


def describe_default(name: str) -> str | None:
    """The default of config field ``name`` as ``csg train --help`` shows it (from TrainConfig itself)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    if name not in defaults:
        return None
    value = defaults[name]
    if name == "gate_lr":
        return ", ".join(f"{m} {v:g}" for m, v in GATE_LR_DEFAULTS.items() if m != "csg-fixed")
    if name == "lambda1":
        return ", ".join([f"{m} {v:g}" for m, v in LAMBDA1_DEFAULTS.items()] + ["others 1"])
    if value is None:
        return NONE_MEANS.get(name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class ConfigDefaultsFormatter(argparse.HelpFormatter):
    """Appends ``[default]`` to each option's help, read from :class:`TrainConfig` (never written by hand)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.nargs != 0 and action.dest not in ("out", "config", "preset"):
            shown = describe_default(action.dest)
            if shown is not None:
                text += f" [{shown}]"
        return text


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run directory",
                       description="Train a CNN with class-specific gates (or a baseline) into a run directory. "
                                   "Flags override --config FILE.toml, which overrides --preset.",
                       formatter_class=ConfigDefaultsFormatter, argument_default=None)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    g.add_argument("--resume", action="store_true", default=False, help="continue the run in --out")
    g.add_argument("--config", metavar="FILE.toml", help="TOML file whose keys are these flags")
    g.add_argument("--preset", choices=sorted(PRESETS), help="the paper's settings (e.g. paper-cifar)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--seed", type=int, help="random seed")
    g.add_argument("--no-evaluate", dest="evaluate", action="store_const", const=False,
                   help="skip `csg evaluate` after training")
    g.add_argument("--eval-every", type=int, help="test accuracy every N epochs, 0 = never")
    g.add_argument("--checkpoint-every", type=int, help="also checkpoint every N batches")
    g.add_argument("--tensorboard", dest="tensorboard", action="store_const", const=True,
                   help="write per-epoch scalars, the gate and the MI matrix to RUN/tensorboard/ "
                        '(needs pip install "csg[tensorboard]")')
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar")
    g.add_argument("--channels-last", type=_bool, metavar="BOOL", help="channels-last memory format")
    g.add_argument("--amp", dest="amp", action="store_const", const=True,
                   help="bf16 autocast (default on CUDA GPUs with bf16; on the CPU only when asked)")
    g.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="float32 everywhere")
    g.add_argument("--compile", dest="compile", action="store_const", const=True,
                   help="torch.compile the model (minutes of compilation; for long GPU runs)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="image-folder-stream: decoding processes per rank")
    d = p.add_argument_group("data and model")
    d.add_argument("--data", help="fashion-mnist, fashion-mnist-clutter, cifar10, cifar100, image-folder, "
                                  "image-folder-stream (decoded from disk by --workers processes), "
                                  "voc-animals")
    d.add_argument("--data-dir", help="folder of the data files")
    d.add_argument("--image-size", "--resize", dest="resize", type=int, metavar="N",
                   help="image-folder(-stream): resize every image to N x N")
    d.add_argument("--subset", type=int, metavar="N", help="train on a stratified, seeded subset of N images")
    d.add_argument("--test-subset", type=int, metavar="N", help="evaluate on a stratified subset of N images")
    d.add_argument("--arch", help="backbone: resnet20, resnet18, vgg16_bn, ...")
    d.add_argument("--model", dest="model_builder", metavar="PKG.MODULE:FACTORY",
                   help="your own network instead of --arch: a class or function returning an nn.Module, imported "
                        "from PYTHONPATH (every command rebuilds it so)")
    d.add_argument("--model-kwargs", metavar="JSON",
                   help="--model's keyword arguments as a JSON object, e.g. '{\"width\": 8}' "
                        "(TOML: a model_kwargs table)")
    d.add_argument("--feature-layer", metavar="NAME", help="--model: dotted name of the layer whose output is the "
                                                           "feature maps (e.g. features.3)")
    d.add_argument("--head", metavar="NAME", help="--model: dotted name of its final nn.Linear to reuse as the head")
    d.add_argument("--small-input", type=_bool, metavar="BOOL", help="3x3 stem for small images (ImageNet ResNets)")
    d.add_argument("--method", choices=METHODS, help="training method")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="epochs")
    o.add_argument("--batch-size", type=int, help="batch size")
    o.add_argument("--eval-batch-size", type=int, help="evaluation batch size")
    o.add_argument("--optimizer", choices=("sgd", "adam"), help="optimiser of the weights")
    o.add_argument("--lr", type=float, help="learning rate")
    o.add_argument("--momentum", type=float, help="SGD momentum")
    o.add_argument("--weight-decay", type=float, help="weight decay")
    o.add_argument("--lr-schedule", choices=("constant", "multistep", "cosine"), help="learning-rate schedule")
    o.add_argument("--milestones", type=_floats, help="multistep milestones as fractions of the run")
    o.add_argument("--gamma", type=float, help="multistep factor")
    o.add_argument("--crop-padding", type=int, help="random-crop padding in pixels, 0 = off")
    o.add_argument("--hflip", type=_bool, metavar="BOOL", help="random horizontal flips")
    o.add_argument("--freeze-below", metavar="LAYER", help="freeze every layer before this one")
    c = p.add_argument_group("class-specific gate (METHOD.md section 2)")
    c.add_argument("--rho", type=float, help="target L1-density g/(C*K), >= 1/C")
    c.add_argument("--penalty", choices=("l1", "l2", "smooth-l1"), help="psi of the sparsity penalty")
    c.add_argument("--lambda1", type=float, help="weight of CE on the CSG path")
    c.add_argument("--lambda2", type=float, help="weight of the sparsity penalty")
    c.add_argument("--gate-init", type=float, help="initial gate value")
    c.add_argument("--gate-lr", type=float, help="gate learning rate (Adam)")
    c.add_argument("--gate-optimizer", choices=("sgd", "adam"), help="gate optimiser")
    c.add_argument("--csg-lr", type=float, help="backbone learning rate in CSG epochs")
    c.add_argument("--csg-freeze-below", metavar="LAYER", help="in CSG epochs, freeze every layer before this one")
    c.add_argument("--schedule", choices=("alternate", "joint"),
                   help="alternating STD/CSG epochs (Algorithm 1) or both losses in every step")
    c.add_argument("--period", type=int, help="epochs per period of the alternating schedule")
    c.add_argument("--csg-epochs", type=int, help="CSG epochs at the end of each period")
    c.add_argument("--warmup", type=int, help="STD-only epochs first")
    c.add_argument("--final-csg-epochs", type=int, help="make the last N epochs CSG epochs")
    c.add_argument("--m1", type=int, help="fixed gate: filters owned by each class")
    c.add_argument("--m2", type=int, help="fixed gate: filters shared by all classes")
    cp = p.add_argument_group("CSG+ (docs/methods.md; also takes the gate options above)")
    cp.add_argument("--suppression-weight", type=float,
                    help="weight of the share of each filter's activation on classes its gate closes")
    cp.add_argument("--class-head-weight", type=float,
                    help="weight of CE on the class-specific head (class c's logit from its gate row's filters)")
    cp.add_argument("--gate-follows-activation", type=_bool, metavar="BOOL",
                    help="let the suppression term move the gate too (the gate keeps following the filters)")
    m = p.add_argument_group("ICNN and PICNN")
    m.add_argument("--icnn-layer", metavar="LAYER", help="conv layer for the ICNN filter loss")
    m.add_argument("--icnn-weight", type=float, help="weight of the ICNN filter loss")
    m.add_argument("--icnn-beta", type=float, help="ICNN template beta")
    m.add_argument("--icnn-test-mask", type=_bool, metavar="BOOL",
                   help="keep the ICNN mask in the network at test time, as in Zhang et al.")
    m.add_argument("--picnn-weight", type=float, help="weight of the PICNN interpretation loss")
    m.add_argument("--picnn-v-optimizer", choices=("model", "own"),
                   help="PICNN's V trained with the weights by the model optimiser (as the authors do), or by "
                        "its own --gate-optimizer at --gate-lr")
    p.set_defaults(func=run)


_NOT_CONFIG = {"func", "command", "resume", "config", "preset", "progress"}


def run(args: argparse.Namespace) -> int:
    import contextlib

    from ..core.device import resolve_device
    from ..core.lock import RunLock
    from ..metrics.interpretability import gate_unconverged
    from ..runs.evaluate import evaluate_run
    from ..runs.train import train

    values = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    values["model_kwargs"] = parse_model_kwargs(values.get("model_kwargs"))
    cfg = resolve_config(values, preset=args.preset, toml_path=args.config)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    # rank 0 holds the run's lock from the first epoch to the end of the evaluation
    with RunLock(cfg.out, what="training") if main_rank else contextlib.nullcontext():
        run_dir = train(cfg, resume=args.resume, progress=args.progress)
        if not main_rank:
            return 0  # torchrun: rank 0 evaluates and writes; the other ranks are done
        if cfg.evaluate:
            metrics = evaluate_run(run_dir, device=resolve_device(cfg.device), progress=args.progress)
            line = f"accuracy {metrics['accuracy']:.4f}  MIS {metrics['mis']:.4f}"
            if "l1_density" in metrics:
                line += f"  L1-density {metrics['l1_density']:.4f}"
            print(f"{run_dir.path}: {line}", file=sys.stderr)
            outside = gate_unconverged(metrics)
            if outside is not None:
                density, lo, hi = outside
                print(f"note: the gate has not converged (L1-density {density:.4f} outside [{lo:.2f}, {hi:.2f}]); "
                      "csg localize refuses such a run: train longer, or for CSG+ raise --lambda2 "
                      "(docs/tuning.md: where CSG+'s gate settles)", file=sys.stderr)
    print(run_dir.path)
    return 0
