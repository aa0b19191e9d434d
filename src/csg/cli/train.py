"""``csg train``: train STD, CSG, CSG with a fixed gate, ICNN or PICNN into a run directory."""
from __future__ import annotations

import argparse
import os
import sys

from ..training.config import METHODS, PRESETS, resolve_config


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


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run directory",
                       description="Train a CNN with class-specific gates (or a baseline) into a run directory. "
                                   "Flags override --config FILE.toml, which overrides --preset.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=None)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    g.add_argument("--resume", action="store_true", default=False, help="continue the run in --out")
    g.add_argument("--config", metavar="FILE.toml", help="TOML file whose keys are these flags")
    g.add_argument("--preset", choices=sorted(PRESETS), help="the paper's settings (e.g. paper-cifar)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N [auto]")
    g.add_argument("--threads", type=int, help="CPU threads for torch [all cores]")
    g.add_argument("--seed", type=int, help="random seed [0]")
    g.add_argument("--no-evaluate", dest="evaluate", action="store_const", const=False,
                   help="skip `csg evaluate` after training")
    g.add_argument("--eval-every", type=int, help="test accuracy every N epochs, 0 = never [1]")
    g.add_argument("--checkpoint-every", type=int, help="also checkpoint every N batches [0 = each epoch]")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar")
    g.add_argument("--channels-last", type=_bool, metavar="BOOL", help="channels-last memory format [true]")
    g.add_argument("--amp", dest="amp", action="store_const", const=True,
                   help="bf16 autocast (default on CUDA GPUs with bf16; on the CPU only when asked)")
    g.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="float32 everywhere")
    g.add_argument("--compile", dest="compile", action="store_const", const=True,
                   help="torch.compile the model (minutes of compilation; for long GPU runs)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="image-folder-stream: decoding processes per rank [$CSG_DATA_WORKERS, else cores - 1, "
                        "at most 8]")
    d = p.add_argument_group("data and model")
    d.add_argument("--data", help="fashion-mnist, fashion-mnist-clutter, cifar10, cifar100, image-folder, "
                                  "image-folder-stream (decoded from disk by --workers processes), "
                                  "voc-animals [fashion-mnist]")
    d.add_argument("--data-dir", help="folder of the data files (else $CSG_DATA_DIR, else the default)")
    d.add_argument("--image-size", "--resize", dest="resize", type=int, metavar="N",
                   help="image-folder(-stream): resize every image to N x N [the images' common size]")
    d.add_argument("--subset", type=int, metavar="N", help="train on a stratified, seeded subset of N images")
    d.add_argument("--test-subset", type=int, metavar="N", help="evaluate on a stratified subset of N images")
    d.add_argument("--arch", help="backbone: resnet20, resnet18, vgg16_bn, ... [resnet20]")
    d.add_argument("--small-input", type=_bool, metavar="BOOL", help="3x3 stem for small images (ImageNet ResNets)")
    d.add_argument("--method", choices=METHODS, help="training method [csg]")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="epochs [30]")
    o.add_argument("--batch-size", type=int, help="batch size [128]")
    o.add_argument("--eval-batch-size", type=int, help="evaluation batch size [512]")
    o.add_argument("--optimizer", choices=("sgd", "adam"), help="[sgd]")
    o.add_argument("--lr", type=float, help="learning rate [0.1]")
    o.add_argument("--momentum", type=float, help="SGD momentum [0.9]")
    o.add_argument("--weight-decay", type=float, help="[5e-4]")
    o.add_argument("--lr-schedule", choices=("constant", "multistep", "cosine"), help="[cosine]")
    o.add_argument("--milestones", type=_floats, help="multistep milestones as fractions of the run [0.5,0.75]")
    o.add_argument("--gamma", type=float, help="multistep factor [0.1]")
    o.add_argument("--crop-padding", type=int, help="random-crop padding in pixels, 0 = off [2]")
    o.add_argument("--hflip", type=_bool, metavar="BOOL", help="random horizontal flips [true]")
    o.add_argument("--freeze-below", metavar="LAYER", help="freeze every layer before this one")
    c = p.add_argument_group("class-specific gate (METHOD.md section 2)")
    c.add_argument("--rho", type=float, help="target L1-density g/(C*K), >= 1/C [1/C]")
    c.add_argument("--penalty", choices=("l1", "l2", "smooth-l1"), help="psi of the sparsity penalty [l1]")
    c.add_argument("--lambda1", type=float, help="weight of CE on the CSG path [1]")
    c.add_argument("--lambda2", type=float, help="weight of the sparsity penalty [1e-3]")
    c.add_argument("--gate-init", type=float, help="initial gate value [0.5]")
    c.add_argument("--gate-lr", type=float, help="gate learning rate (Adam) [csg 0.05, picnn 0.001]")
    c.add_argument("--gate-optimizer", choices=("sgd", "adam"), help="gate optimiser [adam]")
    c.add_argument("--csg-lr", type=float, help="backbone learning rate in CSG epochs [--lr]")
    c.add_argument("--csg-freeze-below", metavar="LAYER", help="in CSG epochs, freeze every layer before this one")
    c.add_argument("--schedule", choices=("alternate", "joint"), help="[alternate]")
    c.add_argument("--period", type=int, help="epochs per period of the alternating schedule [3]")
    c.add_argument("--csg-epochs", type=int, help="CSG epochs at the end of each period [1]")
    c.add_argument("--warmup", type=int, help="STD-only epochs first [0]")
    c.add_argument("--final-csg-epochs", type=int, help="make the last N epochs CSG epochs [0]")
    c.add_argument("--m1", type=int, help="fixed gate: filters owned by each class [K // C]")
    c.add_argument("--m2", type=int, help="fixed gate: filters shared by all classes [K - C*m1]")
    m = p.add_argument_group("ICNN and PICNN")
    m.add_argument("--icnn-layer", metavar="LAYER", help="conv layer for the ICNN filter loss [the feature layer]")
    m.add_argument("--icnn-weight", type=float, help="weight of the ICNN filter loss [1]")
    m.add_argument("--icnn-beta", type=float, help="ICNN template beta [4]")
    m.add_argument("--icnn-test-mask", type=_bool, metavar="BOOL",
                   help="keep the ICNN mask in the network at test time, as in Zhang et al. [true]")
    m.add_argument("--picnn-weight", type=float, help="weight of the PICNN interpretation loss [2]")
    m.add_argument("--picnn-v-optimizer", choices=("model", "own"),
                   help="PICNN's V trained with the weights by the model optimiser (as the authors do), or by "
                        "its own --gate-optimizer at --gate-lr [model]")
    p.set_defaults(func=run)


_NOT_CONFIG = {"func", "command", "resume", "config", "preset", "progress"}


def run(args: argparse.Namespace) -> int:
    from ..runs.rundir import RunDir
    from ..runs.evaluate import evaluate_run
    from ..training.trainer import train

    values = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    cfg = resolve_config(values, preset=args.preset, toml_path=args.config)
    run_dir = train(cfg, resume=args.resume, progress=args.progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # torchrun: rank 0 evaluates and writes; the other ranks are done
    if cfg.evaluate:
        from ..training.trainer import resolve_device

        device = resolve_device(cfg.device)
        metrics = evaluate_run(RunDir(run_dir.path), device=device, progress=args.progress)
        line = f"accuracy {metrics['accuracy']:.4f}  MIS {metrics['mis']:.4f}"
        if "l1_density" in metrics:
            line += f"  L1-density {metrics['l1_density']:.4f}"
        print(f"{run_dir.path}: {line}", file=sys.stderr)
    print(run_dir.path)
    return 0
