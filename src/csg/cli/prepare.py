"""``csg prepare voc PATH [--out DIR]``: build a dataset with object masks from its original files."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="prepare a dataset with object masks (PASCAL VOC animals)",
                       description="voc: crop every segmented bird, cat, dog, cow, horse and sheep of PASCAL "
                                   "VOC 2010 to a square around its box, resize to SIZE, split 70/30 by image, "
                                   "and write DIR/voc_animals.npz (train with --data voc-animals --data-dir DIR; "
                                   "with DIR = $CSG_DATA_DIR, the default, no --data-dir is needed).",
                       formatter_class=DefaultsFormatter)
    p.add_argument("kind", choices=("voc",), help="which dataset")
    p.add_argument("path", metavar="PATH", help="the VOC2010 folder (or the VOCdevkit folder above it)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder to write voc_animals.npz into [$CSG_DATA_DIR if set, else the current folder]")
    p.add_argument("--seed", type=int, default=0, help="seed of the 70/30 split by image id")
    p.add_argument("--size", type=int, default=128, help="side of the square object crops in pixels")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.voc import prepare_voc
    from ..core.errors import CsgError

    if args.size < 8:
        raise CsgError(f"--size must be at least 8 pixels, got {args.size}")
    env = os.environ.get("CSG_DATA_DIR", "").strip()
    out = args.out if args.out is not None else (env or ".")
    path = prepare_voc(args.path, out, seed=args.seed, size=args.size, progress=args.progress)
    with np.load(path, allow_pickle=False) as z:
        split = z["split"]
        print(f"wrote {path}: {int((split == 0).sum())} train and {int((split == 1).sum())} test objects")
    same = env and Path(env).expanduser().resolve() == Path(out).expanduser().resolve()
    print("use it with: csg train --data voc-animals" + ("" if same else f" --data-dir {Path(out)}"))
    return 0
