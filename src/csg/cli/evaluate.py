"""``csg evaluate RUN``: accuracy, MIS, L1-density, captured features, MI matrix."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a trained run (accuracy, MI matrix, MIS, L1-density)",
                       description="Capture the test split's features once and write features.npz, "
                                   "mi_matrix.npy, gate.npy and metrics.json into the run directory.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, help="evaluation batch size [from the run]")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runs.rundir import RunDir
    from ..runs.evaluate import evaluate_run
    from ..core.device import resolve_device

    run_dir = RunDir(args.run)
    metrics = evaluate_run(run_dir, device=resolve_device(args.device), batch_size=args.batch_size,
                           progress=args.progress)
    shown = {k: v for k, v in metrics.items() if not isinstance(v, list) or k == "l1_interval"}
    print(json.dumps(shown, indent=2))
    return 0
