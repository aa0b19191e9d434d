"""``csg analyze RUN``: class-filter removal, feature-gate similarity, weight correlation,
cluster centres and single-unit ablation (METHOD.md section 4)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="filter removal, similarity, weight correlation, clusters, unit ablation",
                       description="Run the analyses of METHOD.md section 4 on an evaluated run; writes "
                                   "RUN/analysis.json, RUN/analysis.npz and figures in RUN/figures/.")
    p.add_argument("run", metavar="RUN", help="run directory (after `csg evaluate`)")
    p.add_argument("--classes", default="0,1", help="class set S whose filters are removed [0,1]")
    p.add_argument("--threshold", type=float, default=0.5, help="gate value above which a filter belongs to a "
                   "class (removal, gated runs) [0.5]")
    p.add_argument("--share", type=float, default=0.1, help="share of filters per class removed by the "
                   "activation criterion (runs without a gate) [0.1]")
    p.add_argument("--m", type=int, default=None, help="filters per class in the inter-class correlation [K // C]")
    p.add_argument("--seed", type=int, default=0, help="k-means seed [0]")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto [cpu]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import run_analyses
    from ..core.run_files import ANALYSIS
    from ..runs.rundir import RunDir
    from ..core.device import resolve_device

    run_dir = RunDir(args.run)
    result = run_analyses(run_dir, classes=args.classes, device=resolve_device(args.device), seed=args.seed,
                          threshold=args.threshold, share=args.share, m=args.m)
    rem = result["removal"]
    sel = rem["selections"][rem["primary"]]

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"removal of classes {rem['classes']} ({sel['num_removed']} filters, {sel['criterion']}): "
          f"removed classes {f(sel['removed_classes_accuracy_before'])} -> {f(sel['removed_classes_accuracy_after'])}, "
          f"others {f(sel['other_classes_accuracy_before'])} -> {f(sel['other_classes_accuracy_after'])}")
    print(f"inter-class weight correlation C_IC = {f(result['correlation']['c_ic'])} "
          f"({result['correlation']['layer']})")
    print(f"k-means purity {f(result['clusters']['purity'])}, ARI {f(result['clusters']['ari'])}")
    print(f"ablation: Spearman(selectivity, largest drop) = "
          f"{f(result['ablation']['spearman_selectivity_max_drop'])}")
    for note in result.get("notes", []):
        print(f"note: {note}")
    print(run_dir.file(ANALYSIS))
    return 0
