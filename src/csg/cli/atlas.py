"""``csg atlas RUN``: one interactive page with a card per filter (top images, maps, classes, causal effect)."""
from __future__ import annotations

import argparse
import math

from . import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("atlas", help="a page with one card per filter: top images, maps, class, ablation effect",
                       description="Build the unit atlas of an evaluated run: for every filter of the feature layer "
                                   "(and of --layers), its top-k test images with the ActivMap region drawn over them, "
                                   "its class by each criterion (gate, MI argmax, largest ablation drop) and whether "
                                   "they agree, its MI row, selectivity and per-class ablation drop, and, on data with "
                                   "object masks, its dissection IoU with the object and with the clutter. Writes "
                                   "RUN/atlas/index.html (opens offline from the file system).",
                       formatter_class=DefaultsFormatter)
    p.add_argument("run", metavar="RUN", help="run directory (after `csg evaluate`; `csg analyze` results are reused)")
    p.add_argument("--out", metavar="DIR", default=None, help="page folder [RUN/atlas]")
    p.add_argument("--layers", default="", metavar="L1,L2",
                   help="more layers to show besides the feature layer (dotted names, e.g. layer2)")
    p.add_argument("--top-k", type=int, default=9, help="top-activating test images per filter")
    p.add_argument("--quantile", type=float, default=0.3,
                   help="ActivMap region: the filter's top QUANTILE share of values over the test split")
    p.add_argument("--level-images", type=int, default=None, metavar="N",
                   help="fit the ActivMap levels on a seeded random N test images [all]")
    p.add_argument("--no-gradmap", dest="gradmap", action="store_false", help="no GradMaps in the detail view")
    p.add_argument("--sigma", type=float, default=None,
                   help="GradMap blur sigma in px [METHOD.md's 5 px per 128 px, scaled to the image: 1.1 at 28 px]")
    p.add_argument("--threshold", type=float, default=1.0, help="GradMap region: value > THRESHOLD")
    p.add_argument("--neighbours", type=int, default=5, help="weight-correlation neighbours per filter")
    p.add_argument("--thumb", type=int, default=64, help="largest thumbnail side in the sprite sheets (px)")
    p.add_argument("--sprite-format", choices=("auto", "png", "jpeg"), default="auto",
                   help="sprite sheets: png, jpeg, or auto (png up to 8M tile pixels per layer, else jpeg)")
    p.add_argument("--title", default=None, help="page title [Unit atlas: RUN name]")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the --level-images draw")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atlas import build_atlas
    from ..core.errors import CsgError
    from ..report.atlas_page import page_size, write_atlas_page
    from ..runs.rundir import RunDir
    from ..core.device import resolve_device

    if args.top_k < 1:
        raise CsgError(f"--top-k must be at least 1, got {args.top_k}")
    if not 0 < args.quantile < 1:
        raise CsgError(f"--quantile must lie strictly between 0 and 1 (0.3 = top 30%), got {args.quantile}")
    if args.level_images is not None and args.level_images < 1:
        raise CsgError(f"--level-images must be positive, got {args.level_images}")
    if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise CsgError(f"--sigma must be >= 0 pixels (0 = no blur), got {args.sigma}")
    if not math.isfinite(args.threshold):
        raise CsgError(f"--threshold must be a finite number, got {args.threshold}")
    if args.neighbours < 0:
        raise CsgError(f"--neighbours must be >= 0, got {args.neighbours}")
    if args.thumb < 4:
        raise CsgError(f"--thumb must be at least 4 px, got {args.thumb}")
    if args.batch_size < 1:
        raise CsgError(f"--batch-size must be positive, got {args.batch_size}")
    run_dir = RunDir(args.run)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    atlas = build_atlas(run_dir, device=resolve_device(args.device), layers=layers, top_k=args.top_k,
                        quantile=args.quantile, level_images=args.level_images, gradmap=args.gradmap,
                        sigma=args.sigma, threshold=args.threshold, num_neighbours=args.neighbours,
                        thumb=args.thumb, batch_size=args.batch_size, seed=args.seed, progress=args.progress)
    out = args.out if args.out is not None else run_dir.path / "atlas"
    page = write_atlas_page(atlas, out, title=args.title, sprite_format=args.sprite_format)
    for layer in atlas.data["layers"]:
        agree = [a for a in layer["units"]["agree"] if a is not None]
        line = f"{layer['name']}: {layer['num_filters']} filters"
        if agree:
            line += f", criteria ({', '.join(layer['criteria'])}) agree on {sum(agree)} of {len(agree)}"
        iou = layer["units"]["iou_object"]
        if iou is not None:
            line += f", mean object IoU {sum(iou) / len(iou):.3f}"
        print(line)
    for note in atlas.data.get("notes", []):
        print(f"note: {note}")
    size = page_size(out)
    print(f"wrote {page} ({size['total'] / 2 ** 20:.1f} MiB in {size['files']} files)")
    return 0
