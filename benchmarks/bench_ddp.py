"""Two-process CPU training throughput (torchrun, gloo) of two source trees, e.g. before and after a change.

    python benchmarks/bench_ddp.py --before /path/to/old/src --after src [--images 3072] [--rounds 3]

Each round trains, with ``torchrun --standalone --nproc_per_node=2``, one STD epoch and one CSG epoch
(``--schedule alternate --period 2 --warmup 0``) of resnet20 on a synthetic Fashion-MNIST-like IDX set
(global batch 128, 64 per rank, one thread per rank) with each tree in turn (before, after, before, ...),
and reads each epoch's ``images_per_second`` from the run's log. Prints the median over rounds per tree
and phase and the after/before ratio of each round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def train(src: Path, data: Path, out: Path, images: int) -> dict[str, float]:
    args = ["--data", "fashion-mnist", "--data-dir", str(data), "--subset", str(images), "--test-subset", "100",
            "--arch", "resnet20", "--method", "csg", "--epochs", "2", "--schedule", "alternate", "--period", "2",
            "--warmup", "0", "--batch-size", "128", "--lr", "0.05", "--no-progress", "--device", "cpu",
            "--no-evaluate", "--eval-every", "0", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "csg", "train",
           *args]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["phase"]: r["images_per_second"] for r in log}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    ap.add_argument("--images", type=int, default=3072)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from conftest import write_tiny_fashion_mnist

    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_fashion_mnist(Path(tmp) / "data", n_train_per_class=a.images // 10)
        got = {"before": [], "after": []}
        for r in range(a.rounds):
            for name, src in (("before", a.before), ("after", a.after)):
                got[name].append(train(src.resolve(), data, Path(tmp) / f"{name}{r}", a.images))
                print(name, r, got[name][-1], flush=True)
    for phase in ("std", "csg"):
        b = [x[phase] for x in got["before"]]
        f = [x[phase] for x in got["after"]]
        ratios = [y / x for x, y in zip(b, f)]
        print(f"{phase}: before {statistics.median(b):.0f} img/s, after {statistics.median(f):.0f} img/s, "
              f"after/before per round {', '.join(f'{q:.3f}' for q in ratios)} (median {statistics.median(ratios):.3f})")


if __name__ == "__main__":
    main()
