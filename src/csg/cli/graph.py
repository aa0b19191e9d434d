"""``csg graph RUN``: mine the explanatory graph (Zhang et al. 2018) and score it against part landmarks."""
from __future__ import annotations

import argparse
import math

from . import DefaultsFormatter


def _floats(text: str, flag: str) -> list[float]:
    from ..core.errors import CsgError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CsgError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise CsgError(f"{flag} takes positive numbers, got {text!r}")
    return values


def add_parser(sub) -> None:
    p = sub.add_parser("graph", help="mine the explanatory graph: patterns per filter, parent links, parts",
                       description="Mine the explanatory graph of a trained run (METHOD.md section 9): each "
                                   "filter's map as a mixture of patterns (nodes with a position and spread), "
                                   "linked top-down to co-activated patterns of the layer above; then score "
                                   "location instability and 1-/3-shot part localization against the data's "
                                   "landmarks (fashion-mnist-clutter), nodes against raw filters. Writes "
                                   "RUN/graph.json, RUN/graph.npz and RUN/figures/graph_*.png.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names of the backbone, bottom to top [its last three blocks, "
                        "e.g. layer1,layer2,layer3]")
    p.add_argument("--images", type=int, default=300, help="test images to mine and evaluate on (stratified)")
    p.add_argument("--negatives", default="auto",
                   help="normalisation set: auto (clutter canvases without objects on fashion-mnist-clutter, "
                        "else self), self (the mined images), or a .npy file of N x C x H x W images")
    p.add_argument("--num-negatives", type=int, default=200, help="generated negative canvases (auto)")
    p.add_argument("--iterations", type=int, default=20, help="E/M iterations per layer")
    p.add_argument("--rho", default=None,
                   help="nodes per filter as a share of map cells, one per layer [.05,.1,.2 for 3 layers]")
    p.add_argument("--nodes-per-filter", type=int, default=None, help="nodes per filter in every layer (over --rho)")
    p.add_argument("--parents", type=int, default=15, help="parents per node")
    p.add_argument("--parent-candidates", type=int, default=600, help="upper nodes that may be parents")
    p.add_argument("--relink-every", type=int, default=1, help="re-choose parents every N iterations")
    p.add_argument("--chunk", type=int, default=32, help="images per E-step block (memory ~ chunk)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop before mining when the estimate (after one timed chunk per layer) is longer")
    p.add_argument("--top-nodes", type=int, default=None,
                   help="units per layer scored for instability [as many as the layer has filters]")
    p.add_argument("--shots", default="1,3", help="annotated images for part localization")
    p.add_argument("--repeats", type=int, default=10, help="draws of the shots per class and landmark")
    p.add_argument("--voters", type=int, default=10, help="units that vote for a part")
    p.add_argument("--seed", type=int, default=0, help="seed of the images, nodes, negatives and shots")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (1: on a busy shared machine more threads were measured slower; "
                        "raise it on an idle multi-core machine)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the pictures")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..core.errors import CsgError
    from ..graph.mining import MiningSettings
    from ..graph.run import graph_run
    from ..runs.rundir import RunDir
    from ..core.device import resolve_device

    positive = {"--images": args.images, "--num-negatives": args.num_negatives, "--iterations": args.iterations,
                "--parents": args.parents, "--parent-candidates": args.parent_candidates,
                "--relink-every": args.relink_every, "--chunk": args.chunk, "--repeats": args.repeats,
                "--voters": args.voters, "--threads": args.threads}
    if args.nodes_per_filter is not None:
        positive["--nodes-per-filter"] = args.nodes_per_filter
    if args.top_nodes is not None:
        positive["--top-nodes"] = args.top_nodes
    for flag, value in positive.items():
        if value < 1:
            raise CsgError(f"{flag} must be at least 1, got {value}")
    if args.max_minutes is not None and not (math.isfinite(args.max_minutes) and args.max_minutes > 0):
        raise CsgError(f"--max-minutes must be a positive number, got {args.max_minutes}")
    layers = [x.strip() for x in args.layers.split(",") if x.strip()] if args.layers else None
    if layers is not None and not 2 <= len(layers) <= 4:
        raise CsgError(f"--layers takes 2-4 layer names, got {len(layers)}")
    rho = _floats(args.rho, "--rho") if args.rho else None
    shots = [int(s) for s in _floats(args.shots, "--shots")]
    settings = MiningSettings(iterations=args.iterations, parents=args.parents,
                              parent_candidates=args.parent_candidates, relink_every=args.relink_every,
                              chunk=args.chunk, seed=args.seed)
    run_dir = RunDir(args.run)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = graph_run(run_dir, layers, images=args.images, negatives=args.negatives,
                           num_negatives=args.num_negatives, rho=rho, nodes_per_filter=args.nodes_per_filter,
                           settings=settings, top_units=args.top_nodes, shots=shots, repeats=args.repeats,
                           voters=args.voters, device=resolve_device(args.device), progress=args.progress,
                           max_minutes=args.max_minutes, figures=args.figures, log=print)
    finally:
        torch.set_num_threads(threads)  # a caller's own setting (main() is also called in-process)
    for lay in result["layers"]:
        print(f"{lay['name']:<10} {lay['num_nodes']:>6} nodes ({lay['filters']} filters x {lay['nodes_per_filter']}), "
              f"map {lay['map_size'][0]}x{lay['map_size'][1]}, mean sigma {lay['mean_sigma']:.2f} cells")
    ev = result.get("evaluation")
    if ev:
        inst = ev["instability"]
        print(f"{'':<22} {'nodes':>8} {'raw filters':>12}")
        for name, v in inst["nodes"]["per_layer"].items():
            print(f"instability {name:<10} {_f(v):>8} {_f(inst['raw_filters']['per_layer'][name]):>12}")
        print(f"instability {'mean':<10} {_f(inst['nodes']['mean']):>8} {_f(inst['raw_filters']['mean']):>12}")
        for k, v in ev["few_shot"].items():
            print(f"{k}-shot part error      {_f(v['nodes']):>8} {_f(v['raw_filters']):>12}   "
                  f"(fixed position {_f(v['fixed'])})")
    s = result["seconds"]
    print(f"features {s['features']:.0f} s, mining {s['mining']:.0f} s, evaluation {s['evaluation']:.0f} s, "
          f"figures {s['figures']:.0f} s, total {s['total']:.0f} s")
    print(f"wrote {run_dir.path / 'graph.json'} and graph.npz")
    return 0


def _f(x) -> str:
    return "–" if x is None or x != x else f"{x:.4f}"
