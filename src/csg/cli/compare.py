"""``csg compare RUN... --out DIR``: a Table-1-style comparison page of several runs."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare runs in a Table-1-style HTML page",
                       description="One row per method (seeds aggregated as mean ± std): accuracy, MIS, gap "
                                   "closed vs STD, gate-MI agreement, L1-density, localization and adversarial "
                                   "results when present, the paper's CIFAR-10 rows, and figures side by side.")
    p.add_argument("runs", metavar="RUN", nargs="+",
                   help="run directories, or comparison.json files of earlier comparisons: their recorded runs "
                        "join this one (more seeds, without keeping the old run directories); FILE.json:LABEL,"
                        "LABEL takes only the named runs of a file")
    p.add_argument("--out", required=True, help="output folder for index.html, comparison.json and figures/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import compare_runs

    print(compare_runs(args.runs, args.out))
    return 0
