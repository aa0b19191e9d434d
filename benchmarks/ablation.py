"""Single-unit ablation: one batched pass through the head vs zeroing filters one at a time.

    OMP_NUM_THREADS=1 python benchmarks/ablation.py

Both variants compute the K x C per-class accuracy drop from pooled features
(exact for a linear head after pooling); the loop re-runs the head K times.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from csg.analysis import ablation_drops


def loop_drops(pooled, labels, W, b, C):
    onehot = np.eye(C)[labels]
    counts = onehot.sum(0)
    base = ((pooled @ W.T + b).argmax(1) == labels) @ onehot / counts
    out = np.empty((pooled.shape[1], C))
    for k in range(pooled.shape[1]):
        a = pooled.copy()
        a[:, k] = 0.0
        out[k] = base - ((a @ W.T + b).argmax(1) == labels) @ onehot / counts
    return out


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{'N':>6} {'K':>5} {'C':>4} {'loop s':>9} {'batched s':>10} {'speed-up':>9}")
    for N, K, C in ((10000, 64, 10), (10000, 512, 100), (1700, 2048, 6)):
        pooled = np.abs(rng.normal(size=(N, K)))
        W = rng.normal(size=(C, K)) / np.sqrt(K)
        b = rng.normal(size=C) * 0.1
        labels = rng.integers(0, C, size=N)
        t_loop, ref = best_of(lambda: loop_drops(pooled, labels, W, b, C))
        t_one, (drop, _) = best_of(lambda: ablation_drops(pooled, labels, W, b))
        assert np.allclose(drop, ref, atol=1e-12), "the two variants disagree"
        print(f"{N:>6} {K:>5} {C:>4} {t_loop:>9.3f} {t_one:>10.3f} {t_loop / t_one:>8.1f}x")


if __name__ == "__main__":
    main()
