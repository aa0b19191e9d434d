"""Unit atlas build time and page size for K = 64 and K = 2048 filters (synthetic model, images and masks).

    python benchmarks/bench_atlas.py [--filters 64 2048] [--images 2000] [--level-images N] [--top-k 9]
                                     [--no-gradmap] [--sprite-format auto] [--browser] [--out DIR]

The synthetic model is a two-convolution network on 1 x 28 x 28 images whose feature layer has K filters on a
7 x 7 grid (the shape of ResNet-20's on Fashion-MNIST): conv 1->16 stride 2, ReLU, conv 16->K stride 2, ReLU.
Images are random Gaussian blobs on black (objects with masks, plus dimmer clutter blobs). The pooled
features are captured once before the clock starts (as ``csg evaluate`` would have); then the atlas is
built exactly as ``csg atlas`` does: the ActivMap levels pass, the unit table, the batched pass over the
top (image, filter) pairs (ActivMap + GradMap), then the page (sprite sheets, atlas.json). With ``--browser``
the page is opened in headless Chromium (Selenium) and the time to the first cards is read from the page.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from csg.atlas import atlas_from_parts
from csg.atlas.inputs import RunInputs
from csg.data.dataset import ImageDataset
from csg.core.model import GatedClassifier
from csg.report.atlas_page import page_size, write_atlas_page


def synthetic_data(n: int, classes: int = 10, size: int = 28, seed: int = 0) -> ImageDataset:
    """Blob objects (masks: blob > 0.3) at class-dependent positions, plus two dim clutter blobs each."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy = 6 + (labels % 4).float() * 5 + torch.rand(n, generator=g) * 3
    cx = 6 + (labels // 4).float() * 5 + torch.rand(n, generator=g) * 3
    r = 3 + torch.rand(n, generator=g) * 3
    obj = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * r[:, None, None] ** 2))
    clutter = torch.zeros(n, size, size)
    for _ in range(2):  # two blobs per image, all images at once
        py, px = torch.rand(n, generator=g) * size, torch.rand(n, generator=g) * size
        clutter += 0.4 * torch.exp(-((yy - py[:, None, None]) ** 2 + (xx - px[:, None, None]) ** 2) / 8.0)
    masks = obj > 0.3
    img = torch.where(masks, obj, clutter * (obj <= 0.3)).clamp(0, 1)
    images = (img * 255).round().to(torch.uint8)[:, None]
    return ImageDataset(name="synthetic", images=images, labels=labels, classes=[f"class {c}" for c in range(classes)],
                        masks=masks, mean=(0.1,), std=(0.2,))


def synthetic_model(k: int, classes: int = 10, seed: int = 0) -> GatedClassifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(16, k, 3, stride=2, padding=1), nn.ReLU())
    return GatedClassifier(net, "3", classes, num_filters=k, input_mean=(0.1,), input_std=(0.2,)).eval()


def first_cards_ms(page: Path) -> dict:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(
        executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        t = time.perf_counter()
        driver.get(page.resolve().as_uri())
        while driver.execute_script("return document.body.dataset.ready") != "yes":
            time.sleep(0.01)
        load = time.perf_counter() - t
        script_ms = float(driver.execute_script("return document.body.dataset.firstCardsMs"))
        t = time.perf_counter()
        driver.execute_script("var s = document.getElementById('sort'); s.value = 'mi_max';"
                              "s.dispatchEvent(new Event('change'));")
        resort = time.perf_counter() - t
        return {"page_load_s": load, "first_cards_script_ms": script_ms, "resort_s": resort,
                "cards": int(driver.execute_script("return document.body.dataset.cards"))}
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, nargs="+", default=[64, 2048])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--level-images", type=int, default=None)
    ap.add_argument("--top-k", type=int, default=9)
    ap.add_argument("--no-gradmap", dest="gradmap", action="store_false")
    ap.add_argument("--sprite-format", default="auto", choices=("auto", "png", "jpeg"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    ap.add_argument("--out", default=None, help="keep the pages here (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-atlas-"))
    dataset = synthetic_data(args.images)
    rows = []
    for k in args.filters:
        model = synthetic_model(k)
        with torch.no_grad():  # what features.npz holds (not timed)
            out = [model(dataset.images[s:s + 500].float() / 255) for s in range(0, len(dataset), 500)]
        pooled = torch.cat([o.pooled for o in out]).numpy()
        predictions = torch.cat([o.logits for o in out]).argmax(1).numpy()
        labels = dataset.labels.numpy()
        gate = np.random.default_rng(0).random((10, k))
        gate /= gate.max(axis=0, keepdims=True)
        inputs = RunInputs(pooled=pooled, labels=labels, predictions=predictions, class_names=dataset.classes,
                           config={"method": "synthetic", "data": "synthetic", "arch": f"2-conv K={k}"},
                           metrics={}, gate=gate)
        t, c = time.perf_counter(), time.process_time()
        atlas = atlas_from_parts(model, dataset, inputs, top_k=args.top_k, level_images=args.level_images,
                                 gradmap=args.gradmap, batch_size=args.batch_size,
                                 run_info={"label": f"synthetic K={k}"})
        t_data, c_data = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        page = write_atlas_page(atlas, root / f"K{k}", sprite_format=args.sprite_format)
        t_page, c_page = time.perf_counter() - t, time.process_time() - c
        size = page_size(page.parent)
        row = {"K": k, "images": len(dataset), "level_images": args.level_images or len(dataset), "top_k": args.top_k,
               "gradmap": args.gradmap, "build_s": t_data + t_page, "data_s": t_data, "page_s": t_page,
               "build_cpu_s": c_data + c_page,
               **{k_: round(v, 3) for k_, v in atlas.data["timing"].items()},
               "sprite_format": atlas_format(page.parent), "size": size}
        if args.browser:
            row["browser"] = first_cards_ms(page)
        rows.append(row)
        print(json.dumps(row))
    print()
    print(f"{'K':>5} {'build s':>8} {'cpu s':>7} {'levels s':>9} {'maps s':>7} {'page s':>7} {'total MiB':>10} {'json MiB':>9} "
          f"{'sprites MiB':>12} {'files':>6}" + ("  first cards ms  load s  resort s" if args.browser else ""))
    for r in rows:
        s = r["size"]
        line = (f"{r['K']:>5} {r['build_s']:>8.1f} {r['build_cpu_s']:>7.1f} {r['levels_s']:>9.1f} {r['maps_s']:>7.1f} {r['page_s']:>7.1f} "
                f"{s['total'] / 2**20:>10.2f} {s['json'] / 2**20:>9.2f} {s['sprites'] / 2**20:>12.2f} {s['files']:>6}")
        if args.browser:
            b = r["browser"]
            line += f"  {b['first_cards_script_ms']:>14.0f} {b['page_load_s']:>7.2f} {b['resort_s']:>9.2f}"
        print(line)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"K {b['K']} / K {a['K']}: build time x{b['build_s'] / a['build_s']:.1f}, CPU time "
              f"x{b['build_cpu_s'] / a['build_cpu_s']:.1f}, page size x{b['size']['total'] / a['size']['total']:.1f} "
              f"(filters x{b['K'] / a['K']:.0f})")
    print(f"pages in {root}")


def atlas_format(folder: Path) -> str:
    return json.loads((folder / "atlas.json").read_text())["layers"][0]["sprites"]["format"]


if __name__ == "__main__":
    main()
