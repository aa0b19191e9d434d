"""``csg explain RUN IMAGE...``: why the model predicted what it did, one figure and JSON per image."""
from __future__ import annotations

import argparse
import math

from . import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain predictions on image files (filters, gates, maps)",
                       description="For each image: the prediction, the filters that contributed most to it "
                                   "(W[c,k] * a_k), their gate classes (CSG runs: G[c,k] > 0.5) and their "
                                   "ActivMap and GradMap, written as NAME.png and NAME.json.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--top", type=int, default=5, help="number of filters to show")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder [RUN/explain]")
    p.add_argument("--sigma", type=float, default=5.0, help="GradMap blur sigma in pixels (0 = none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import CsgError
    from ..explain import explain_run
    from ..runs.rundir import RunDir
    from ..core.device import resolve_device

    if args.top < 1:
        raise CsgError(f"--top must be at least 1, got {args.top}")
    if not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise CsgError(f"--sigma must be >= 0 pixels (0 = no blur), got {args.sigma}")
    records = explain_run(RunDir(args.run), args.images, top=args.top, out_dir=args.out,
                          device=resolve_device(args.device), sigma=args.sigma)
    for r in records:
        fs = ", ".join(f"{f['filter']} ({f['contribution']:+.3f})" for f in r["filters"])
        print(f"{r['image']}: {r['predicted_name']} (p={r['probability']:.2f}); top filters {fs}; {r['figure']}")
    return 0
