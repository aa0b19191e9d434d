"""Training throughput on the CPU: one vs two processes (torchrun, gloo), and each CPU speed option on/off.

    python benchmarks/bench_training_scale.py [--images 256] [--steps 4] [--rounds 3]

Part 1 trains two STD epochs and two CSG epochs (the faster of each kept) of resnet20 on a synthetic
Fashion-MNIST-like IDX set (28 x 28) with ``csg train`` in one process and
with ``torchrun --standalone --nproc_per_node=2`` (global batch 64 in both:
``--batch-size`` is the global batch, 32 per rank) and reads
``images_per_second`` from the run's log.

Part 2 times forward + backward + SGD step of resnet20 at batch 128 in this
process for each CPU option of ``csg.training.speed.SpeedPolicy`` (the
settings are interleaved over ``--rounds`` rounds and the best round is kept,
since the machine is shared) and measures how far a 1-step gradient moves from
a float64 reference under it (``max_p max|g - g64| / max|g64|`` over parameter
tensors).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _train(data: Path, out: Path, nproc: int, batch: int, images: int) -> list[dict]:
    args = ["--data", "fashion-mnist", "--data-dir", str(data), "--subset", str(images), "--test-subset", "100",
            "--arch", "resnet20", "--epochs", "4", "--period", "2", "--batch-size", str(batch), "--lr", "0.05",
            "--no-progress", "--device", "cpu", "--no-evaluate", "--eval-every", "0", "--out", str(out)]
    env = dict(os.environ)
    if nproc == 1:
        env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)  # one process gets every core
        cmd = [sys.executable, "-m", "csg", "train", *args]
    else:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // nproc))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "csg", "train", *args]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def part_processes(images: int) -> None:
    from conftest import write_tiny_fashion_mnist

    with tempfile.TemporaryDirectory() as tmp:
        data = write_tiny_fashion_mnist(Path(tmp) / "data", n_train_per_class=max(images // 10, 1))
        rows = {}
        for nproc, batch in ((1, 64), (2, 64)):
            log = _train(data, Path(tmp) / f"run{nproc}", nproc, batch, images)
            rows[nproc] = {}
            for r in log:  # 2 epochs of each phase; the best (the first pays for start-up)
                rows[nproc][r["phase"]] = max(rows[nproc].get(r["phase"], 0.0), r["images_per_second"])
        print(f"part 1: resnet20, 28x28, {images} images, global batch 64, {os.cpu_count()} cores")
        print(f"{'phase':<6} {'1 process':>12} {'2 processes':>12} {'ratio':>7}")
        for phase in ("std", "csg"):
            a, b = rows[1][phase], rows[2][phase]
            print(f"{phase:<6} {a:>10.1f}/s {b:>10.1f}/s {b / a:>7.2f}")


def _model(dtype=torch.float32):
    from csg.backbones import build_model

    torch.manual_seed(0)
    return build_model("resnet20", 10, 1, input_mean=(0.3,), input_std=(0.3,)).to(dtype)


def _grad_error(policy) -> float:
    torch.manual_seed(1)
    x = torch.rand(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    ref = _model(torch.float64)
    F.cross_entropy(ref(x.double()).logits, y).backward()
    m = policy.prepare_model(_model())
    with policy.autocast():
        loss = F.cross_entropy(m(policy.prepare_batch(x)).logits.float(), y)
    loss.backward()
    return max(float((p.grad.double() - q.grad).abs().max() / q.grad.abs().max())
               for p, q in zip(m.parameters(), ref.parameters()) if q.grad is not None)


def _throughput(policy, steps: int, batch: int = 128) -> float:
    m = policy.prepare_model(_model())
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x = policy.prepare_batch(torch.rand(batch, 1, 28, 28))
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        with policy.autocast():
            loss = F.cross_entropy(m(x).logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def part_options(steps: int, rounds: int) -> None:
    from csg.training.speed import SpeedPolicy, cpu_has_bf16

    cores = os.cpu_count() or 1
    base = SpeedPolicy.choose("cpu", amp=False, channels_last=False, threads=cores)
    variants = [("float32, contiguous", base),
                ("channels-last", SpeedPolicy.choose("cpu", amp=False, channels_last=True, threads=cores)),
                ("bf16 autocast", SpeedPolicy.choose("cpu", amp=True, channels_last=False, threads=cores)),
                ("bf16 + channels-last", SpeedPolicy.choose("cpu", amp=True, channels_last=True, threads=cores)),
                ("1 thread", SpeedPolicy.choose("cpu", amp=False, channels_last=False, threads=1))]
    print(f"\npart 2: resnet20 train step, batch 128, 28x28, CPU bf16 native: {cpu_has_bf16()}")
    print(f"{'setting':<30} {'images/s':>9} {'ratio':>6} {'grad error vs f64':>18}")
    best = {name: 0.0 for name, _ in variants}
    for _ in range(rounds):
        for name, policy in variants:
            torch.set_num_threads(policy.threads or cores)
            best[name] = max(best[name], _throughput(policy, steps))
    ref_speed = best[variants[0][0]]
    for name, policy in variants:
        torch.set_num_threads(policy.threads or cores)
        err = _grad_error(policy)
        print(f"{name:<30} {best[name]:>9.1f} {best[name] / ref_speed:>6.2f} {err:>18.2e}")
    torch.set_num_threads(cores)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="training images in part 1")
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting and round in part 2")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds in part 2 (best kept)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, CUDA available: {torch.cuda.is_available()}")
    part_processes(args.images)
    part_options(args.steps, args.rounds)


if __name__ == "__main__":
    main()
