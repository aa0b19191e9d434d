"""``csg experiment``: the whole protocol over methods x seeds, from a named profile, resumable."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..experiment.profiles import PARTS, PROFILES

    p = sub.add_parser(
        "experiment", help="the whole protocol: methods x seeds, train, analyze, localize, attack, compare",
        description="Train every method with every seed, evaluate, analyze, localize (clutter), attack "
                    "(Fashion-MNIST) and write one comparison page per part, at the sizes of a profile: "
                    + "; ".join(f"{n}: {p.description}" for n, p in PROFILES.items())
                    + ". Run again to resume: finished tasks are skipped, interrupted trainings continue.")
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES), help="the sizes [%(default)s]")
    p.add_argument("--out", default="runs", help="folder of the runs and pages [%(default)s]")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of " + ", ".join(PARTS) + " [%(default)s]")
    p.add_argument("--methods", default=None, help="comma list of methods [the profile's]")
    p.add_argument("--seeds", default=None, help="comma list of seeds [the profile's: 0,1,2]")
    p.add_argument("--stages", default=None, help="comma list of train, analyze, report, localize, attack [all]")
    p.add_argument("--jobs", type=int, default=1, help="tasks at a time (local processes) [%(default)s]")
    p.add_argument("--executor", default="local", choices=("local", "slurm"),
                   help="local processes, or SLURM through submitit (csg[slurm]) [%(default)s]")
    p.add_argument("--slurm", default="", metavar="KEY=VALUE,...",
                   help="submitit parameters for --executor slurm, e.g. slurm_partition=gpu,timeout_min=240,gpus_per_node=1")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run, and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.errors import CsgError
    from ..experiment import PARTS, build_plan, get_profile, run_local, run_slurm

    profile = get_profile(args.profile, methods=args.methods, seeds=args.seeds)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise CsgError(f"--parts {args.parts!r}: choose from {', '.join(PARTS)}")
    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else None
    valid = {"train", "analyze", "report", "localize", "attack"}
    if stages and not set(stages) <= valid:
        raise CsgError(f"--stages {args.stages!r}: choose from {', '.join(sorted(valid))}")
    out = Path(args.out)
    tasks = build_plan(profile, out, parts, stages)
    if args.dry_run:
        for t in tasks:
            mark = "done   " if t.is_done() else "to run "
            print(f"{mark}{t.shell()}")
        return 0
    if args.executor == "slurm":
        options = {}
        for item in filter(None, (s.strip() for s in args.slurm.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise CsgError(f"--slurm takes KEY=VALUE pairs, got {item!r}")
            options[key] = int(value) if value.isdigit() else value
        state = run_slurm(tasks, out, profile=profile.name, options=options)
    else:
        state = run_local(tasks, out, jobs=args.jobs, profile=profile.name)
    failed = [k for k, v in state.items() if v == "failed"]
    for part in parts:
        page = out / part / "compare" / "index.html"
        if page.is_file():
            print(f"comparison page: {page}")
    if failed:
        raise CsgError(f"{len(failed)} task(s) failed ({', '.join(failed[:3])}{'...' if len(failed) > 3 else ''}); "
                       f"see {out / 'experiment.json'}, fix and run the same command again to resume")
    return 0
