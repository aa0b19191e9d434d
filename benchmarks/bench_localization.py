"""Maps per second for GradMap, ActivMap and CAM: batched (as csg computes them) against a per-filter /
per-image Python loop, in one run; plus the clutter generation time.

    python benchmarks/bench_localization.py [--device cpu|cuda] [--images 8] [--size 64] [--arch resnet20]

A "map" is one filter's map of one image (GradMap, ActivMap) or one image's CAM. GradMap rows: "gradmap" is
csg's default (strategy "auto": "shared" on CPU, "replicate" on CUDA), "gm-repl" forces the replicated
one-backward-per-chunk strategy, "gm-vmap" is the former is_grads_batched path; every row's loop is one
autograd.grad per filter over the whole image batch.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from csg.localization.maps import CAM, ActivMap, GradMap
from csg.localization.regions import gaussian_blur
from csg.backbones import build_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeat=3):
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def timeit_pair(fa, fb, device, repeat=3):
    """Best time of each of two functions, runs alternated so that a change in the machine's load hits both."""
    fa(), fb()  # warm-up
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for i, fn in enumerate((fa, fb)):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def gradmap_loop(model, x, sigma):
    """One autograd.grad call per filter (the batch of images stays batched)."""
    xx = x.clone().requires_grad_(True)
    pooled = model.feature_maps(xx).mean(dim=(2, 3))
    out = []
    for k in range(pooled.shape[1]):
        (g,) = torch.autograd.grad(pooled[:, k].sum(), xx, retain_graph=k + 1 < pooled.shape[1])
        mag = g.pow(2).sum(1).sqrt()
        rms = mag.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
        out.append(gaussian_blur(mag / rms.clamp(min=1e-30), sigma))
    return torch.stack(out, 1)


def gradmap_vmap(model, x, sigma, chunk):
    """The former batched path: is_grads_batched=True over one-hot grad outputs (kept for comparison)."""
    xx = x.clone().requires_grad_(True)
    pooled = model.feature_maps(xx).mean(dim=(2, 3))
    n, k = pooled.shape
    per = max(1, chunk // n)
    gs = []
    for s in range(0, k, per):
        sel = torch.arange(s, min(k, s + per))
        oh = torch.zeros(sel.numel(), n, k)
        oh[torch.arange(sel.numel()), :, sel] = 1.0
        (g,) = torch.autograd.grad(pooled, xx, grad_outputs=oh, is_grads_batched=True, retain_graph=True)
        gs.append(g.transpose(0, 1))
    mag = torch.cat(gs, 1).pow(2).sum(2).sqrt()
    rms = mag.pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
    return gaussian_blur(mag / rms.clamp(min=1e-30), sigma)


@torch.no_grad()
def activmap_loop(model, x):
    a = model.feature_maps(x)
    return torch.stack([F.interpolate(a[:, k:k + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                        for k in range(a.shape[1])], 1)


@torch.no_grad()
def cam_loop(model, x, labels):
    out = []
    for i in range(x.shape[0]):
        a = model.feature_maps(x[i:i + 1])[0]
        cam = (model.head.weight[labels[i]][:, None, None] * a).sum(0)
        out.append(F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--chunk", type=int, default=None,
                   help="image-filter pairs per replicated GradMap pass (default: from a memory budget)")
    p.add_argument("--clutter", action="store_true", help="also time 60k+10k clutter generation (real data)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch, 10, 1).to(device).eval()
    x = torch.rand(args.images, 1, args.size, args.size, device=device)
    labels = torch.arange(args.images, device=device) % 10
    k = model.num_filters
    n = args.images
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.arch} (K={k}), "
          f"{n} images of {args.size}x{args.size}")
    gm = GradMap(sigma=5.0, chunk=args.chunk)  # strategy "auto": shared on CPU, replicate on CUDA
    gm_rep = GradMap(sigma=5.0, chunk=args.chunk, strategy="replicate")
    gm_vmap = GradMap(sigma=5.0, chunk=args.chunk, strategy="replicate")
    gm_vmap.compute = lambda model, images, labels=None, filters=None: gradmap_vmap(model, images, 5.0,
                                                                                  args.chunk or 512)
    rows = [
        ("gradmap", n * k, lambda: gm(model, x), lambda: gradmap_loop(model, x, 5.0)),
        ("gm-repl", n * k, lambda: gm_rep(model, x), lambda: gradmap_loop(model, x, 5.0)),
        ("gm-vmap", n * k, lambda: gm_vmap(model, x), lambda: gradmap_loop(model, x, 5.0)),
        ("activmap", n * k, lambda: ActivMap()(model, x), lambda: activmap_loop(model, x)),
        ("cam", n, lambda: CAM()(model, x, labels), lambda: cam_loop(model, x, labels)),
    ]
    ref = {"gradmap": gm(model, x), "gm-repl": gm_rep(model, x), "gm-vmap": gm_vmap(model, x), "activmap": ActivMap()(model, x), "cam": CAM()(model, x, labels)}
    loops = {"gradmap": gradmap_loop(model, x, 5.0), "gm-repl": gradmap_loop(model, x, 5.0),
             "gm-vmap": gradmap_loop(model, x, 5.0), "activmap": activmap_loop(model, x),
             "cam": cam_loop(model, x, labels)}
    print(f"{'method':<9} {'maps':>6} {'batched maps/s':>15} {'loop maps/s':>12} {'speed-up':>9} {'max |diff|':>11}")
    for name, count, batched, loop in rows:
        tb, tl = timeit_pair(batched, loop, device)
        diff = float((ref[name] - loops[name]).abs().max())
        print(f"{name:<9} {count:>6} {count / tb:>15.1f} {count / tl:>12.1f} {tl / tb:>8.2f}x {diff:>11.2e}")
    if args.clutter:
        from csg.data import load_dataset
        from csg.data.clutter import _split_seed, make_clutter

        tr = load_dataset("fashion-mnist", "train").images
        te = load_dataset("fashion-mnist", "test").images
        t = time.perf_counter()
        make_clutter(tr, _split_seed(0, "train"))
        make_clutter(te, _split_seed(0, "test"))
        print(f"clutter generation, 60000 + 10000 images on 64x64: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
