"""Data layer speed: loading Fashion-MNIST (decode vs in-process cache) and one augmented epoch.

Compares the batched augmentation (one gather per batch) with a plain
per-sample loop (pad, slice, flip per image) on the same random draws, and
the cold IDX decode with the cached load.

    OMP_NUM_THREADS=1 python benchmarks/bench_data.py [--data-dir DIR] [--device cpu] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from csg.data import Augment, load_dataset
from csg.data import fashion_mnist


def per_sample_augment(images: torch.Tensor, p: int, generator: torch.Generator) -> torch.Tensor:
    """The loop a batched version replaces: same draws (offsets, then flips), one image at a time."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator) == 1
    out = torch.empty_like(images)
    for i in range(n):
        x = F.pad(images[i], (p, p, p, p))
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        x = x[:, dy:dy + h, dx:dx + w]
        out[i] = x.flip(2) if flips[i] else x
    return out


def epoch(dataset, batch_size: int, device: str, augment_fn=None, augment=None) -> float:
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    total = 0.0
    for images, _ in dataset.batches(batch_size, shuffle=True, generator=generator, device=device, augment=augment):
        if augment_fn is not None:
            images = augment_fn(images, generator)
        total += float(images[:, :, 0, 0].sum())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--padding", type=int, default=2)
    args = parser.parse_args()

    fashion_mnist._read_idx_cached.cache_clear()
    t0 = time.perf_counter()
    train = load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_dataset("fashion-mnist", "train", data_dir=args.data_dir)
    warm = time.perf_counter() - t0
    print(f"load fashion-mnist train ({len(train)} images): decode {cold:.3f} s, cached {warm:.3f} s, "
          f"ratio {cold / warm:.1f}x")

    augment = Augment(crop_padding=args.padding, hflip=True)
    t_batched = epoch(train, args.batch_size, args.device, augment=augment)  # as the trainer does (on uint8)
    t_loop = epoch(train, args.batch_size, args.device, lambda x, g: per_sample_augment(x, args.padding, g))
    t_none = epoch(train, args.batch_size, args.device)
    print(f"one epoch, batch {args.batch_size}, crop pad {args.padding} + hflip, device {args.device}, "
          f"threads {torch.get_num_threads()}:")
    print(f"  no augmentation     {t_none:.3f} s ({len(train) / t_none:,.0f} img/s)")
    print(f"  batched (one gather) {t_batched:.3f} s ({len(train) / t_batched:,.0f} img/s)")
    print(f"  per-sample loop     {t_loop:.3f} s ({len(train) / t_loop:,.0f} img/s)")
    print(f"  speed-up of the batched augmentation over the loop: {t_loop / t_batched:.1f}x")


if __name__ == "__main__":
    main()
