"""``csg attack RUN``: adversarial detection (FGSM, PGD, CW) and black-box attacks (METHOD.md section 6)."""
from __future__ import annotations

import argparse
import math

from ..core.errors import CsgError


def _names(text: str) -> list[str]:
    text = (text or "").strip()
    if text.lower() in ("", "none"):
        return []
    return [t.strip().lower() for t in text.split(",") if t.strip()]


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise CsgError(f"{flag} takes comma-separated whole numbers, e.g. 500,1000,2000; got {text!r}") from None
    if not values or min(values) < 1:
        raise CsgError(f"{flag} needs positive whole numbers, got {text!r}")
    return values


def add_parser(sub) -> None:
    p = sub.add_parser(
        "attack", help="adversarial samples: detector error (FGSM/PGD/CW) and black-box success rates",
        description="Attack a trained run: white-box samples for a random-forest detector on pooled block "
                    "features (error rate per training size), and black-box attacks (success rate). Writes "
                    "RUN/adversarial.json and RUN/figures/adversarial_*.png.")
    p.add_argument("run", metavar="RUN", help="run directory (trained; `csg evaluate` output is reused if present)")
    g = p.add_argument_group("white-box attacks and detector")
    g.add_argument("--attacks", default="fgsm,pgd,cw", help="comma list of fgsm, pgd, cw, or none [%(default)s]")
    g.add_argument("--train-sizes", default="500,1000,2000", help="detector training images per class [%(default)s]")
    g.add_argument("--test-size", type=int, default=100, help="detector test images per class [%(default)s]")
    g.add_argument("--repeats", type=int, default=5, help="seeded repeats of the detector [%(default)s]")
    tg = g.add_mutually_exclusive_group()
    tg.add_argument("--targeted", dest="targeted", action="store_true", default=True,
                    help="target a seeded random other class (default, Appendix I)")
    tg.add_argument("--untargeted", dest="targeted", action="store_false", help="untargeted white-box attacks")
    sg = g.add_mutually_exclusive_group()
    sg.add_argument("--successful-only", dest="successful_only", action="store_true", default=True,
                    help="keep only correctly classified images whose attack succeeds (default)")
    sg.add_argument("--all-samples", dest="successful_only", action="store_false",
                    help="keep every attacked image, fooled or not")
    g.add_argument("--eps", type=float, default=0.031, help="L-inf budget of FGSM and PGD [%(default)s]")
    g.add_argument("--pgd-steps", type=int, default=7, help="PGD iterations [%(default)s]")
    g.add_argument("--pgd-step-size", type=float, default=2 / 255, help="PGD step size [2/255]")
    g.add_argument("--no-random-start", dest="random_start", action="store_false", default=True,
                   help="start PGD at the clean image")
    g.add_argument("--cw-steps", type=int, default=100, help="CW Adam iterations per search step [%(default)s]")
    g.add_argument("--cw-search-steps", type=int, default=5, help="CW binary-search steps over c [%(default)s]")
    g.add_argument("--cw-const", type=float, default=1e-2, help="CW initial c [%(default)s]")
    g.add_argument("--blocks", default=None,
                   help="comma list of module names for the detector features [every block up to the feature layer]")
    g.add_argument("--trees", type=int, default=100, help="random-forest trees [%(default)s]")
    b = p.add_argument_group("black-box attacks")
    b.add_argument("--blackbox", default="one-pixel,local-search",
                   help="comma list of one-pixel, local-search, or none [%(default)s]")
    b.add_argument("--blackbox-samples", type=int, default=100,
                   help="correctly classified test images to attack [%(default)s]")
    b.add_argument("--query-budget", type=int, default=None, help="model queries per image [the attack's own limit]")
    b.add_argument("--ls-p", type=float, default=10.0, help="local search perturbation parameter p [%(default)s]")
    b.add_argument("--ls-rounds", type=int, default=150, help="local search rounds R [%(default)s]")
    r = p.add_argument_group("running")
    r.add_argument("--seed", type=int, default=0, help="seed of sampling, targets and repeats [%(default)s]")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [%(default)s]")
    r.add_argument("--batch-size", type=int, default=256, help="attack batch size [%(default)s]")
    r.add_argument("--no-figures", dest="figures", action="store_false", default=True, help="skip the figures")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..adversarial.run import attack_run
    from ..runs.rundir import RunDir

    attacks = _names(args.attacks)
    blackbox = _names(args.blackbox)
    train_sizes = _ints(args.train_sizes, "--train-sizes")
    for flag, value in (("--test-size", args.test_size), ("--repeats", args.repeats), ("--batch-size", args.batch_size),
                        ("--blackbox-samples", args.blackbox_samples)):
        if value < 1:
            raise CsgError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--pgd-steps", args.pgd_steps), ("--cw-steps", args.cw_steps),
                        ("--cw-search-steps", args.cw_search_steps), ("--trees", args.trees),
                        ("--ls-rounds", args.ls_rounds)):
        if value < 1:
            raise CsgError(f"{flag} must be at least 1, got {value}")
    if args.query_budget is not None and args.query_budget < 1:
        raise CsgError(f"--query-budget must be at least 1 model query per image, got {args.query_budget}")
    for flag, value in (("--pgd-step-size", args.pgd_step_size), ("--cw-const", args.cw_const), ("--ls-p", args.ls_p)):
        if not (math.isfinite(value) and value > 0):
            raise CsgError(f"{flag} must be a positive number, got {value}")
    if not math.isfinite(args.eps) or args.eps < 0 or args.eps > 1:
        raise CsgError(f"--eps must lie in [0, 1] (images are in [0, 1]), got {args.eps}")
    run_dir = RunDir(args.run)
    attack_options = {
        "fgsm": {"eps": args.eps},
        "pgd": {"eps": args.eps, "steps": args.pgd_steps, "step_size": args.pgd_step_size,
                "random_start": args.random_start},
        "cw": {"steps": args.cw_steps, "search_steps": args.cw_search_steps, "initial_const": args.cw_const},
    }
    blackbox_options = {"local-search": {"p": args.ls_p, "rounds": args.ls_rounds}}
    blocks = [s.strip() for s in args.blocks.split(",") if s.strip()] if args.blocks else None
    result = attack_run(run_dir, attacks=attacks, train_sizes=train_sizes, test_size=args.test_size,
                        repeats=args.repeats, blackbox=blackbox, blackbox_samples=args.blackbox_samples,
                        targeted=args.targeted, successful_only=args.successful_only, seed=args.seed,
                        device=args.device, batch_size=args.batch_size,
                        attack_options={a: attack_options[a] for a in attacks if a in attack_options},
                        blackbox_options={k: v for k, v in blackbox_options.items() if k in blackbox},
                        query_budget=args.query_budget, blocks=blocks, n_estimators=args.trees,
                        figures=args.figures, progress=args.progress)
    print(f"clean accuracy {100 * result['clean_accuracy']:.2f}%")
    for name, per_size in result["detection"].items():
        rate = result["attack_success"][name]["success_rate"]
        cells = ", ".join(f"{k}/class {100 * v['mean']:.2f}% +- {100 * v['std']:.2f}" for k, v in per_size.items())
        print(f"{name}: attack success {100 * rate:.1f}%; detector error {cells or 'n/a'}")
    for name, res in result["blackbox"].items():
        rate = res["success_rate"]
        shown = "n/a" if rate is None or (isinstance(rate, float) and math.isnan(rate)) else f"{100 * rate:.1f}%"
        print(f"{name}: success {shown} of {res['attempted']} images")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {run_dir.path / 'adversarial.json'}")
    return 0
