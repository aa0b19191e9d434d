"""Explanatory-graph mining: time against layers, nodes and images; memory against the image chunk.

    python benchmarks/bench_graph.py [--device cpu|cuda] [--part all|estep|scale|memory] [--threads 2]

Maps are synthetic (each filter's map: a few Gaussian blobs at random, jittered positions) with the shapes
of a CIFAR ResNet-20 on the 64 px fashion-mnist-clutter canvases: layer1 16 x 64 x 64, layer2 32 x 32 x 32,
layer3 64 x 16 x 16, so the timings are those of ``csg graph`` on such a run minus the model's forward pass.

- ``estep``: one E-step of every node of a layer (default rho .05/.1/.2: about 3,300 nodes per layer) on a
  chunk of images, against the same E-step called once per (node, image) in a Python loop, taken on a
  sample of nodes and images in the same run; the ratio is per node-image.
- ``scale``: mining time (``--iterations`` E/M rounds, links included) against the number of layers, of
  nodes per filter and of images, each varied alone.
- ``memory``: peak resident memory of mining N images in chunks of C, each in a fresh process, minus the
  process's resident memory after building the maps: grows with C, not with N.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

SHAPES = {"layer1": (16, 64, 64), "layer2": (32, 32, 32), "layer3": (64, 16, 16)}
STRIDES = {"layer1": (1.0, 1.0), "layer2": (2.0, 2.0), "layer3": (4.0, 4.0)}
RHO = {"layer1": 0.05, "layer2": 0.1, "layer3": 0.2}


def synthetic_maps(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """n x K x H x W: per filter 3 blobs at filter-specific places, jittered image by image."""
    k, h, w = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, 3, 2, generator=g) * torch.tensor([h - 1.0, w - 1.0])
    jitter = torch.randn(n, k, 3, 2, generator=g) * (0.05 * h)
    c = centres[None] + jitter  # n x K x 3 x 2
    rows = torch.arange(h, dtype=torch.float32)
    cols = torch.arange(w, dtype=torch.float32)
    sd = max(1.0, 0.04 * h)
    gy = torch.exp(-(rows - c[..., 0, None]) ** 2 / (2 * sd * sd))  # n x K x 3 x H
    gx = torch.exp(-(cols - c[..., 1, None]) ** 2 / (2 * sd * sd))
    maps = torch.einsum("nkbh,nkbw->nkhw", gy, gx)
    return (maps + 0.05 * torch.rand(maps.shape, generator=g)).to(torch.float16)


def bench_estep(device, images: int) -> list[dict]:
    from csg.graph.mining import MiningSettings, e_step, filter_node_count, initial_nodes

    rows = []
    st = MiningSettings()
    for name in SHAPES:
        k, h, w = SHAPES[name]
        npf = filter_node_count((h, w), RHO[name])
        ev = synthetic_maps(name, images).to(device, torch.float32)
        mu = initial_nodes(k, npf, (h, w), torch.Generator().manual_seed(0)).to(device).reshape(k, npf, 2)
        sig = torch.full((k, npf), 0.15 * h, device=device)
        e_step(ev, mu, sig, None, 0.15 * h, 1.0, st)  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            e_step(ev, mu, sig, None, 0.15 * h, 1.0, st)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        vec = best / (k * npf * images)
        # the loop: the same E-step once per (node, image), on 40 nodes x 2 images
        sample = [(f, j) for f in range(min(k, 8)) for j in range(min(npf, 5))]
        t = time.perf_counter()
        for f, j in sample:  # the baseline being measured: a Python loop over nodes and images
            for i in range(2):
                e_step(ev[i:i + 1, f:f + 1], mu[f:f + 1, j:j + 1], sig[f:f + 1, j:j + 1], None, 0.15 * h, 1.0, st)
        loop = (time.perf_counter() - t) / (len(sample) * 2)
        rows.append({"layer": name, "nodes": k * npf, "images": images, "seconds_per_chunk": best,
                     "us_per_node_image": 1e6 * vec, "loop_us_per_node_image": 1e6 * loop, "speedup": loop / vec})
    return rows


def bench_scale(device, iterations: int) -> list[dict]:
    from csg.graph.mining import MiningSettings, mine_graph

    def run(names, npf_scale, n):
        maps = [synthetic_maps(nm, n, seed=i) for i, nm in enumerate(names)]
        npf = [max(1, round(npf_scale * RHO[nm] * SHAPES[nm][1] * SHAPES[nm][2])) for nm in names]
        st = MiningSettings(iterations=iterations)
        t, c = time.perf_counter(), time.process_time()
        mine_graph(maps, [STRIDES[nm] for nm in names], names=names, nodes_per_filter=npf, settings=st,
                   device=device)
        return {"layers": ",".join(names), "nodes": sum(SHAPES[nm][0] * p for nm, p in zip(names, npf)),
                "images": n, "iterations": iterations, "seconds": time.perf_counter() - t,
                "cpu_seconds": time.process_time() - c}

    rows = []
    for names in (["layer3"], ["layer2", "layer3"], ["layer1", "layer2", "layer3"]):
        rows.append({"varied": "layers", **run(names, 1.0, 64)})
    for scale in (0.25, 0.5, 1.0):
        rows.append({"varied": "nodes", **run(["layer2", "layer3"], scale, 64)})
    for n in (32, 64, 128, 256):
        rows.append({"varied": "images", **run(["layer2", "layer3"], 1.0, n)})
    return rows


def _memory_child(n: int, chunk: int) -> None:
    from csg.graph.mining import MiningSettings, mine_graph

    names = ["layer2", "layer3"]
    maps = [synthetic_maps(nm, n, seed=i) for i, nm in enumerate(names)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mine_graph(maps, [STRIDES[nm] for nm in names], names=names, settings=MiningSettings(iterations=1, chunk=chunk))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stored = sum(m.numel() * m.element_size() for m in maps)
    print(json.dumps({"images": n, "chunk": chunk, "maps_MiB": stored / 2 ** 20,
                      "peak_over_maps_MiB": (peak - base) / 1024.0}))


def bench_memory() -> list[dict]:
    rows = []
    for n, chunk in ((64, 8), (64, 16), (64, 32), (64, 64), (128, 16), (256, 16)):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), str(chunk)], check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--part", default="all", choices=("all", "estep", "scale", "memory"))
    ap.add_argument("--images", type=int, default=32, help="images per E-step chunk (estep)")
    ap.add_argument("--iterations", type=int, default=3, help="E/M rounds per layer (scale)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(*args.memory_child)
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}")
    if args.part in ("all", "estep"):
        print("\nE-step, vectorised vs one call per (node, image)\n" + table(bench_estep(device, args.images)))
    if args.part in ("all", "scale"):
        print(f"\nmining time ({args.iterations} iterations)\n" + table(bench_scale(device, args.iterations)))
    if args.part in ("all", "memory"):
        print("\npeak memory of mining (1 iteration, layer2 + layer3)\n" + table(bench_memory()))


if __name__ == "__main__":
    main()
