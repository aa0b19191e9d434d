"""Training speed: STD vs CSG epochs, and csg's STD epoch vs a plain PyTorch loop.

All three are timed in one process, interleaved (STD, CSG, plain, STD, ...),
on the same model architecture, batches and augmentation, and the medians'
ratios are printed:

    python benchmarks/bench_training.py --subset 4096 --repeats 5

Targets (issue 3): CSG/STD images/s >= 0.97; csg STD epoch overhead vs the
plain loop <= 5%.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from csg.data import Augment, load_dataset
from csg.backbones import build_model
from csg.training.config import resolve_config
from csg.training.trainer import Trainer, epoch_seed


def plain_epoch(backbone, optimizer, dataset, batch_size, seed, epoch, mean, std, channels_last):
    """What a user would write by hand: batches, forward, cross-entropy, backward, step."""
    backbone.train()
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    augment = Augment(crop_padding=2, hflip=True)
    n = 0
    start = time.perf_counter()
    for images, labels in dataset.batches(batch_size, shuffle=True, generator=generator, augment=augment):
        x = (images - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(backbone(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += labels.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--arch", default="resnet20")
    args = ap.parse_args()

    train_set = load_dataset("fashion-mnist", "train", subset=args.subset, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(dict(method="csg", arch=args.arch, subset=args.subset, batch_size=args.batch_size,
                                  epochs=3, schedule="alternate", warmup=0, period=3, csg_epochs=1, eval_every=0,
                                  evaluate=False, out=tmp))
        trainer = Trainer(cfg, progress=False, train_set=train_set, test_set=train_set)
        torch.manual_seed(0)
        plain = build_model(args.arch, train_set.num_classes, train_set.in_channels).backbone
        plain.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        mean = torch.tensor(train_set.mean).view(1, -1, 1, 1)
        std = torch.tensor(train_set.std).view(1, -1, 1, 1)
        speeds = {"std": [], "csg": [], "plain": []}
        # warm-up: one of each
        trainer._train_epoch(0)
        trainer._train_epoch(2)
        plain_epoch(plain, opt, train_set, args.batch_size, 0, 0, mean, std, True)
        for r in range(args.repeats):
            speeds["std"].append(trainer._train_epoch(0)["images_per_second"])   # epoch 0: a STD epoch
            speeds["csg"].append(trainer._train_epoch(2)["images_per_second"])   # epoch 2: a CSG epoch
            speeds["plain"].append(plain_epoch(plain, opt, train_set, args.batch_size, 0, 0, mean, std, True))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"{args.arch}, Fashion-MNIST subset {args.subset}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats (median images/s)")
    for k in ("std", "csg", "plain"):
        print(f"  {k:<6} {med[k]:8.1f} img/s   (min {min(speeds[k]):.1f}, max {max(speeds[k]):.1f})")
    print(f"  CSG/STD images/s ratio: {med['csg'] / med['std']:.3f}  (target >= 0.97)")
    print(f"  csg STD epoch overhead vs plain loop: {(med['plain'] / med['std'] - 1) * 100:+.1f}%  (target <= 5%)")


if __name__ == "__main__":
    main()
