"""Adversarial images per second for each attack: batched against one image at a time, in one run.

    python benchmarks/bench_attacks.py [--n 64] [--device cpu|cuda] [--arch resnet20] [--threads 2]
        [--cw-steps 20] [--onepixel-images 2] [--onepixel-population 100] [--onepixel-iters 2]

White-box attacks and local search run on ``n`` images as one batch, then on
the same images one by one; one-pixel runs SciPy's differential evolution per
image with the vectorised objective (one model call per generation) against the
plain objective (one model call per candidate). Reduced iteration counts keep
the run short; they are printed, and the ratio is what the comparison is about.
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cw-steps", type=int, default=20)
    ap.add_argument("--onepixel-images", type=int, default=2)
    ap.add_argument("--onepixel-population", type=int, default=100,
                    help="DE population per image (Su et al.: 400; rounded up to a multiple of 2 + C)")
    ap.add_argument("--onepixel-iters", type=int, default=2, help="DE generations after the initial one")
    ap.add_argument("--only-onepixel", action="store_true", help="skip the white-box and local-search rows")
    ap.add_argument("--onepixel-repeat", type=int, default=1, help="timed runs per one-pixel variant")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per variant; the best is kept")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from csg.adversarial import FGSM, PGD, CarliniWagnerL2, local_search_attack
    from csg.adversarial.blackbox import one_pixel_attack
    from csg.backbones import build_model

    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = build_model(args.arch, 10, 1).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.n, 1, 28, 28, device=dev)
    with torch.no_grad():
        y = model.logits(x).argmax(1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        """Best of ``--repeat`` runs after a warm-up (the minimum is the least disturbed by other load)."""
        fn()  # warm-up (allocator, kernels)
        best = float("inf")
        for _ in range(args.repeat):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    f = model.logits
    cases = {
        "fgsm (eps 0.031)": lambda xs, ys: FGSM(f, eps=0.031)(xs, ys),
        "pgd (7 steps)": lambda xs, ys: PGD(f, steps=7)(xs, ys),
        f"cw ({args.cw_steps} steps x 1 search)": lambda xs, ys: CarliniWagnerL2(f, steps=args.cw_steps,
                                                                                 search_steps=1)(xs, ys),
        "local search (3 rounds)": lambda xs, ys: local_search_attack(f, xs, ys, rounds=3, images_per_batch=len(xs)),
    }
    print(f"device {dev}, {args.arch}, {args.n} images 1x28x28, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeat}")
    print(f"{'attack':32s} {'batched img/s':>14s} {'one-by-one img/s':>17s} {'speed-up':>9s}")
    for name, fn in ({} if args.only_onepixel else cases).items():
        t_batch = timed(lambda: fn(x, y))
        t_single = timed(lambda: [fn(x[i:i + 1], y[i:i + 1]) for i in range(args.n)])
        print(f"{name:32s} {args.n / t_batch:14.1f} {args.n / t_single:17.1f} {t_single / t_batch:8.1f}x")

    # One-pixel: the population scored by one model call per generation vs one call per candidate.
    k = args.onepixel_images
    xs, ys = x[:k], y[:k]

    def op_vectorised():
        return one_pixel_attack(f, xs, ys, max_iter=args.onepixel_iters, population=args.onepixel_population,
                                seed=0)

    def op_plain():
        # The same DE, but the objective calls the model once per candidate (what a non-vectorised objective does).
        calls = {"n": 0}

        def per_candidate(images):
            outs = [f(images[i:i + 1]) for i in range(len(images))]
            calls["n"] += len(images)
            return torch.cat(outs)

        return one_pixel_attack(per_candidate, xs, ys, max_iter=args.onepixel_iters,
                                population=args.onepixel_population, seed=0, batch_size=1)

    args.repeat = args.onepixel_repeat
    t_vec = timed(op_vectorised)
    t_plain = timed(op_plain)
    pop = -(-args.onepixel_population // 3) * 3  # 1x28x28 images: 3 coordinates per pixel
    label = f"one-pixel ({args.onepixel_iters + 1} gen x {pop})"
    print(f"{label:32s} {k / t_vec:14.3f} {k / t_plain:17.4f} {t_plain / t_vec:8.1f}x"
          "   (columns: vectorised objective / per-candidate objective)")


if __name__ == "__main__":
    main()
