"""``csg attack RUN``: adversarial detection (FGSM, PGD, CW) and black-box attacks (METHOD.md section 6)."""
from __future__ import annotations

import argparse
import math
import sys

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


# (flag, attribute, lowest allowed) for the whole-number options; checked before the run is read.
_COUNTS = (("--test-size", "test_size", 1), ("--repeats", "repeats", 1), ("--batch-size", "batch_size", 1), ("--blackbox-samples", "blackbox_samples", 1),
           ("--pgd-steps", "pgd_steps", 1), ("--cw-steps", "cw_steps", 1), ("--cw-search-steps", "cw_search_steps", 1),
           ("--trees", "trees", 1), ("--op-population", "op_population", 5), ("--op-generations", "op_generations", 0),
           ("--ls-rounds", "ls_rounds", 1), ("--ls-d", "ls_d", 0), ("--ls-t", "ls_t", 1))
# (flag, attribute, low, high, low inclusive) for the real-valued options.
_REALS = (("--eps", "eps", 0.0, 1.0, True), ("--pgd-step-size", "pgd_step_size", 0.0, 1.0, False),
          ("--cw-const", "cw_const", 0.0, math.inf, False), ("--cw-lr", "cw_lr", 0.0, math.inf, False),
          ("--ls-p", "ls_p", 0.0, math.inf, False), ("--ls-r", "ls_r", 0.0, 2.0, True))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "attack", help="adversarial samples: detector error (FGSM/PGD/CW) and black-box success rates",
        description="Attack a trained run: white-box samples for a random-forest detector on pooled block "
                    "features (error rate per training size), their success rate on a fixed sample, and "
                    "black-box attacks at their published settings (success rate). Writes RUN/adversarial.json "
                    "(summary), RUN/adversarial.npz (per-image results) and RUN/figures/adversarial_*.png. "
                    "Adds to what earlier calls wrote: an earlier attack this call does not run is kept when "
                    "the weights are the same (--replace drops it). "
                    "Prints an estimate of the duration after the first batch.")
    p.add_argument("run", metavar="RUN", help="run directory (trained; `csg evaluate` output is reused if present)")
    g = p.add_argument_group("white-box attacks and detector")
    g.add_argument("--attacks", default="fgsm,pgd,cw", help="comma list of fgsm, pgd, cw, or none [%(default)s]")
    g.add_argument("--train-sizes", default="500,1000,2000", help="detector training images per class [%(default)s]")
    g.add_argument("--test-size", type=int, default=100, help="detector test images per class [%(default)s]")
    g.add_argument("--repeats", type=int, default=5, help="seeded repeats of the detector [%(default)s]")
    g.add_argument("--success-samples", type=int, default=None,
                   help="correctly classified test images (the first of the seeded order) on which each attack's "
                        "success rate is measured [test size x classes: 1000 at the defaults]")
    tg = g.add_mutually_exclusive_group()
    tg.add_argument("--targeted", dest="targeted", action="store_true", default=True,
                    help="target a seeded random other class (default, Appendix I)")
    tg.add_argument("--untargeted", dest="targeted", action="store_false", help="untargeted white-box attacks")
    sg = g.add_mutually_exclusive_group()
    sg.add_argument("--successful-only", dest="successful_only", action="store_true", default=True,
                    help="keep only correctly classified images whose attack succeeds (default)")
    sg.add_argument("--all-samples", dest="successful_only", action="store_false",
                    help="keep every attacked image, fooled or not")
    g.add_argument("--eps", type=float, default=0.031, help="L-inf budget of FGSM and PGD, in [0, 1] [%(default)s]")
    g.add_argument("--pgd-steps", type=int, default=7, help="PGD iterations [%(default)s]")
    g.add_argument("--pgd-step-size", type=float, default=2 / 255, help="PGD step size [2/255]")
    g.add_argument("--no-random-start", dest="random_start", action="store_false", default=True,
                   help="start PGD at the clean image")
    g.add_argument("--cw-steps", type=int, default=100, help="CW Adam iterations per value of c [%(default)s]")
    g.add_argument("--cw-search-steps", type=int, default=5, help="CW binary-search steps over c [%(default)s]")
    g.add_argument("--cw-const", type=float, default=1e-2, help="CW initial c [%(default)s]")
    g.add_argument("--cw-lr", type=float, default=1e-2, help="CW Adam learning rate [%(default)s]")
    g.add_argument("--cw-no-abort-early", dest="cw_abort_early", action="store_false", default=True,
                   help="run every CW iteration (default: a sample whose loss stalls for a tenth of the "
                        "iterations ends that c, as Carlini's code)")
    g.add_argument("--cw-full-search", dest="cw_stop_when_bracketed", action="store_false", default=True,
                   help="run every binary-search step (default: a sample's search ends with the first c "
                        "that succeeds)")
    g.add_argument("--blocks", default=None,
                   help="comma list of module names for the detector features [every block up to the feature layer]")
    g.add_argument("--trees", type=int, default=100, help="random-forest trees [%(default)s]")
    g.add_argument("--jobs", type=int, default=None,
                   help="random-forest worker processes [the torch thread count]")
    b = p.add_argument_group("black-box attacks (published settings by default)")
    b.add_argument("--blackbox", default="one-pixel,local-search",
                   help="comma list of one-pixel, local-search, or none [%(default)s]")
    b.add_argument("--blackbox-samples", type=int, default=100,
                   help="correctly classified test images to attack [%(default)s]")
    b.add_argument("--query-budget", type=int, default=None,
                   help="model queries per image, rounded down to whole generations / rounds [no cap: the "
                        "attacks' own generations and rounds]")
    b.add_argument("--op-population", type=int, default=400, help="one-pixel DE population [%(default)s]")
    b.add_argument("--op-generations", type=int, default=100,
                   help="one-pixel DE generations after the initial one [%(default)s]")
    b.add_argument("--ls-p", type=float, default=10.0, help="local search perturbation parameter p [%(default)s]")
    b.add_argument("--ls-r", type=float, default=1.5, help="local search cyclic factor r, in [0, 2] [%(default)s]")
    b.add_argument("--ls-d", type=int, default=5, help="local search neighbourhood half-width d [%(default)s]")
    b.add_argument("--ls-t", type=int, default=5, help="local search pixels per round t [%(default)s]")
    b.add_argument("--ls-rounds", type=int, default=150, help="local search rounds R [%(default)s]")
    r = p.add_argument_group("running")
    r.add_argument("--seed", type=int, default=0, help="seed of sampling, targets and repeats [%(default)s]")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [%(default)s]")
    r.add_argument("--batch-size", type=int, default=256, help="attack batch size [%(default)s]")
    r.add_argument("--replace", dest="keep_earlier", action="store_false", default=True,
                   help="write only this call's attacks (default: keep the earlier attacks it does not run, "
                        "for the same weights)")
    r.add_argument("--no-figures", dest="figures", action="store_false", default=True, help="skip the figures")
    r.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bars")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> None:
    """Every numeric option, with one line naming the flag (before the run directory is read)."""
    for flag, attr, low in _COUNTS:
        value = getattr(args, attr)
        if value < low:
            raise CsgError(f"{flag} must be at least {low}, got {value}")
    for flag, attr, low, high, low_ok in _REALS:
        value = getattr(args, attr)
        inside = math.isfinite(value) and (value >= low if low_ok else value > low) and value <= high
        if not inside:
            bounds = f"{'[' if low_ok else '('}{low:g}, {high:g}]" if math.isfinite(high) else f"> {low:g}"
            raise CsgError(f"{flag} must be {'in ' + bounds if math.isfinite(high) else bounds}, got {value}")
    if args.success_samples is not None and args.success_samples < 1:
        raise CsgError(f"--success-samples must be at least 1, got {args.success_samples}")
    if args.query_budget is not None and args.query_budget < 1:
        raise CsgError(f"--query-budget must be at least 1 model query per image, got {args.query_budget}")
    if (args.query_budget is not None and "one-pixel" in _names(args.blackbox)
            and args.query_budget < args.op_population):
        raise CsgError(f"--query-budget {args.query_budget} is below one one-pixel generation ({args.op_population} "
                       f"queries); the budget is counted in whole generations")
    if args.jobs is not None and args.jobs < 1:
        raise CsgError(f"--jobs must be at least 1, got {args.jobs}")


def _print_estimate(estimate: dict) -> None:
    from ..adversarial.progress import format_seconds

    parts = [f"white-box attacks {format_seconds(estimate['white_box_seconds'])}",
             f"detector {format_seconds(estimate['detector_seconds'])}"]
    if estimate["black_box_seconds"] == estimate["black_box_seconds"] and estimate["black_box_seconds"] > 0:
        parts.append(f"black-box at most {format_seconds(estimate['black_box_seconds'])}")
    print(f"estimated time: {format_seconds(estimate['seconds'])} ({', '.join(parts)}; measured on the first "
          "batch)", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..adversarial.experiment import check_settings
    from ..adversarial.run import attack_run
    from ..runs.rundir import RunDir

    attacks = _names(args.attacks)
    blackbox = _names(args.blackbox)
    train_sizes = _ints(args.train_sizes, "--train-sizes")
    check_args(args)
    check_settings(attacks=attacks, train_sizes=train_sizes, test_size=args.test_size, repeats=args.repeats,
                   success_samples=args.success_samples, blackbox=blackbox, blackbox_samples=args.blackbox_samples,
                   batch_size=args.batch_size, n_estimators=args.trees, query_budget=args.query_budget,
                   jobs=args.jobs)
    run_dir = RunDir(args.run)
    attack_options = {
        "fgsm": {"eps": args.eps},
        "pgd": {"eps": args.eps, "steps": args.pgd_steps, "step_size": args.pgd_step_size,
                "random_start": args.random_start},
        "cw": {"steps": args.cw_steps, "search_steps": args.cw_search_steps, "initial_const": args.cw_const,
               "lr": args.cw_lr, "abort_early": args.cw_abort_early,
               "stop_when_bracketed": args.cw_stop_when_bracketed},
    }
    blackbox_options = {"one-pixel": {"population": args.op_population, "max_iter": args.op_generations},
                        "local-search": {"p": args.ls_p, "r": args.ls_r, "d": args.ls_d, "t": args.ls_t,
                                         "rounds": args.ls_rounds}}
    blocks = [s.strip() for s in args.blocks.split(",") if s.strip()] if args.blocks else None
    result = attack_run(run_dir, attacks=attacks, train_sizes=train_sizes, test_size=args.test_size,
                        repeats=args.repeats, success_samples=args.success_samples, blackbox=blackbox,
                        blackbox_samples=args.blackbox_samples, targeted=args.targeted,
                        successful_only=args.successful_only, seed=args.seed, device=args.device,
                        batch_size=args.batch_size,
                        attack_options={a: attack_options[a] for a in attacks if a in attack_options},
                        blackbox_options={k: v for k, v in blackbox_options.items() if k in blackbox},
                        query_budget=args.query_budget, blocks=blocks, n_estimators=args.trees, jobs=args.jobs,
                        figures=args.figures, keep_earlier=args.keep_earlier, progress=args.progress,
                        on_estimate=_print_estimate)
    print(f"clean accuracy {100 * result['clean_accuracy']:.2f}%")
    for name, per_size in result["detection"].items():
        s = result["attack_success"][name]
        lo, hi = s["ci95"]
        cells = ", ".join(f"{k}/class {100 * v['mean']:.2f}% +- {100 * v['std']:.2f}" for k, v in per_size.items())
        print(f"{name}: attack success {100 * s['success_rate']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}, "
              f"{s['attempted']} images); detector error {cells or 'n/a'}")
    for name, res in result["blackbox"].items():
        rate = res["success_rate"]
        budget = res.get("budget", {})
        unit = (f"{budget['generations']} generations x {budget['population']}" if "generations" in budget
                else f"{budget.get('rounds')} rounds")
        if rate is None or (isinstance(rate, float) and math.isnan(rate)):
            print(f"{name}: no images to attack")
            continue
        lo, hi = res["ci95"]
        print(f"{name}: success {100 * rate:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}) of {res['attempted']} "
              f"images; budget {unit} (at most {budget.get('max_queries_per_image')} queries per image)")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"wrote {run_dir.path / 'adversarial.json'} and adversarial.npz")
    return 0
