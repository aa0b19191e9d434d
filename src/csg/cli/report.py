"""``csg report RUN``: the run's HTML report (RUN/report/index.html)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write the run's HTML report",
                       description="Write RUN/report/index.html: key numbers, training curves, gate and MI "
                                   "heatmaps, every analysis figure and the metrics. Opens offline.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_run_report
    from ..runs.rundir import RunDir

    print(build_run_report(RunDir(args.run)))
    return 0
