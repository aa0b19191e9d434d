"""``csg localize RUN --data NAME``: GradMap, ActivMap and CAM scored against object masks."""
from __future__ import annotations

import argparse
import math

from . import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("localize", help="score GradMap / ActivMap / CAM regions against object masks",
                       description="Compute each method's maps on a dataset with object masks, turn them into "
                                   "regions, score IoU and AP20/AP30 per filter and class (METHOD.md section 5) "
                                   "and write RUN/localization.json and overlay figures in RUN/figures/.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", metavar="NAME", default=None,
                   help="dataset with masks: fashion-mnist-clutter or voc-animals [the run's data]")
    p.add_argument("--data-dir", default=None, help="data folder [the run's]")
    p.add_argument("--split", default="test", choices=("train", "test"), help="split to score")
    p.add_argument("--methods", default="gradmap,activmap,cam", help="comma-separated map methods: gradmap, activmap, cam, or a Captum attribution "
                        "captum:Saliency, captum:IntegratedGradients, captum:GuidedBackprop, "
                        "captum:InputXGradient, captum:LayerGradCam (pip install \"csg[captum]\"; "
                        "docs/integrations.md)")
    p.add_argument("--max-images", default="1000", metavar="N|all",
                   help="score a seeded random N images of the split (1000 keeps GradMap of a ResNet-20 within "
                        "minutes on a CPU; 'all' scores the whole split)")
    p.add_argument("--allow-unconverged", action="store_true",
                   help="score a CSG run whose gate L1-density lies outside [1/C, rho + 0.02] (refused by default: "
                        "its filters are not class-specific yet)")
    p.add_argument("--sigma", type=float, default=None,
                   help="GradMap blur sigma in px [5, the paper; the reference code uses 30 on 128 px]")
    p.add_argument("--threshold", type=float, default=None, help="GradMap region: value > THRESHOLD [1]")
    p.add_argument("--quantile", type=float, default=None,
                   help="ActivMap / CAM region: the top QUANTILE share of values [0.3]")
    p.add_argument("--replace", action="store_true",
                   help="drop the map methods of the earlier RUN/localization.json that this call does not score "
                        "(by default they are kept, for the same weights and images)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (lowered for big models)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-images draw")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def _positive_int(text, flag: str) -> int:
    from ..core.errors import CsgError

    try:
        value = int(text)
    except (TypeError, ValueError):
        raise CsgError(f"{flag} must be a positive number of images or 'all', got {text!r}") from None
    if value < 1:
        raise CsgError(f"{flag} must be a positive number of images or 'all', got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..core.errors import CsgError
    from ..core.run_files import LOCALIZATION
    from ..localization.run import localize_run, scored_methods
    from ..runs.rundir import RunDir
    from ..core.device import resolve_device

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise CsgError("--methods is empty; give e.g. gradmap,activmap,cam")
    from ..localization.maps import build_method, check_method_names

    check_method_names(methods)
    for m in methods:
        if m.startswith("captum:"):
            build_method(m)  # a missing captum package is one line now, not after the data is loaded
    if args.batch_size < 1:
        raise CsgError(f"--batch-size must be positive, got {args.batch_size}")
    max_images = None if str(args.max_images).lower() == "all" else _positive_int(args.max_images, "--max-images")
    if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise CsgError(f"--sigma must be >= 0 pixels (0 = no blur), got {args.sigma}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise CsgError(f"--threshold must be a finite number, got {args.threshold}")
    if args.quantile is not None and not 0 < args.quantile < 1:
        raise CsgError(f"--quantile must lie strictly between 0 and 1 (0.3 = top 30%), got {args.quantile}")
    run_dir = RunDir(args.run)
    result = localize_run(run_dir, args.data, methods, data_dir=args.data_dir, split=args.split,
                          device=resolve_device(args.device), sigma=args.sigma, threshold=args.threshold,
                          quantile=args.quantile, max_images=max_images, batch_size=args.batch_size,
                          allow_unconverged=args.allow_unconverged, keep_earlier=not args.replace,
                          seed=args.seed, progress=args.progress)
    w = max(10, *(len(m) for m in methods))  # captum:IntegratedGradients is longer than gradmap
    print(f"{'method':<{w}} {'avg_iou':>8} {'ap20':>7} {'ap30':>7}   ({result['num_images']} images of {result['data']})")
    for m in methods:
        r = result[m]
        print(f"{m:<{w}} {r['avg_iou']:>8.4f} {r['ap20']:>7.4f} {r['ap30']:>7.4f}")
    kept = [m for m in scored_methods(result) if m not in methods]
    for m in kept:
        r = result[m]
        print(f"{m:<{w}} {r['avg_iou']:>8.4f} {r['ap20']:>7.4f} {r['ap30']:>7.4f}   (kept from the earlier call)")
    for note in result.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {run_dir.path / LOCALIZATION}")
    return 0
