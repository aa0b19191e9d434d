"""White-box attacks against the model's own speed: images x steps per second, in one run.

    python benchmarks/bench_attacks.py [--run RUN] [--batch 256] [--threads 2] [--repeat 3]
        [--cw-steps 10] [--profile] [--detector] [--pairs 0]

The *raw rate* is one forward and backward pass for the input gradient of the
same model on the same batch (``torch.autograd.grad`` of the summed
cross-entropy), in images per second; an attack's rate is its images x model
passes per second (FGSM 1 pass, PGD its steps, CW its iterations; CW runs with
its early stops off here so that every image makes the same passes). The
ratio to the raw rate is what the comparison is about: it says how much the
attack's own work (sign, projection, Adam, tanh, bookkeeping) costs on top of
the model. Rows run interleaved, best of ``--repeat`` rounds; PGD and CW are
compared with a raw row of as many passes (``raw x k``, its own column: its
rate over the one-pass raw rate), so on a shared machine both face the same
odds of an interruption.

Then the black-box attacks: model queries per second (a query is one image
through a forward pass) against the forward-only rate; the attacks stop early
on success, so each call's queries are counted.

``--run`` uses a trained run (ResNet-20 Fashion-MNIST in the docs) and its
test images; without it an untrained ResNet-20 on random 1 x 28 x 28 images.
``--pairs N`` times the detector-pair collection of N images per class for
each attack at its defaults (CW with its early stops: the passes per image it
really makes), ``--detector`` the random forest at 500 pairs per class for 1
and 2 workers, ``--profile`` prints where the time of each piece goes
(cProfile, the top functions by own time). Runs with older code too (options
it lacks are left out), so the same script gives the before and after figures.
"""
from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import pstats
import time

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a trained run directory (default: an untrained resnet20)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds over all rows (interleaved) after a warm-up; each row's best is kept")
    ap.add_argument("--pgd-steps", type=int, default=7)
    ap.add_argument("--cw-steps", type=int, default=10, help="CW iterations for the rate row (1 search step)")
    ap.add_argument("--pairs", type=int, default=0, help="time the pair collection of this many images per class")
    ap.add_argument("--detector", action="store_true", help="time the random forest at 500 pairs per class")
    ap.add_argument("--profile", action="store_true", help="print the top functions of each piece (cProfile)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from csg.adversarial import FGSM, PGD, CarliniWagnerL2

    dev = torch.device(args.device)
    torch.manual_seed(0)
    if args.run:
        from csg.runs.rundir import RunDir

        run = RunDir(args.run)
        model = run.load_model(str(dev)).eval()
        ds = run.load_dataset("test")
        x = (ds.images[:args.batch].float() / 255).to(dev)
        y = ds.labels[:args.batch].long().to(dev)
    else:
        try:
            from csg.backbones import build_model
        except ImportError:  # code before the layering (csg.model), for the "before" figures
            from csg.model import build_model

        model = build_model("resnet20", 10, 1).to(dev).eval()
        x = torch.rand(args.batch, 1, 28, 28, device=dev)
        with torch.no_grad():
            y = model.logits(x).argmax(1)
    for p in model.parameters():
        p.requires_grad_(False)
    f = model.logits
    n = len(x)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def raw():
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(f(xx), y, reduction="sum"), xx)
        return g

    def forward():
        with torch.no_grad():
            return f(x)

    cw_kw = {"steps": args.cw_steps, "search_steps": 1}
    cw_params = inspect.signature(CarliniWagnerL2.__init__).parameters
    for k in ("abort_early", "stop_when_bracketed"):
        if k in cw_params:
            cw_kw[k] = False
    try:  # what csg attack runs the passes through (csg.core.fold); absent in older code
        from csg.core.fold import folded_copy

        fast = folded_copy(model, x[:4], protected=(getattr(model, "_feature_module", None),))[0].logits
    except ImportError:
        fast = None

    def raw_fast():
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(fast(xx), y, reduction="sum"), xx)
        return g

    def raw_times(k):
        return lambda: [raw() for _ in range(k)]

    # Each attack row follows a raw row of the same number of passes, so both face the same chance of being
    # interrupted on a shared machine; the ratio of an attack is to the raw row just above it.
    rows = [("raw forward+backward", 1, raw), ("forward only", 1, forward),
            ("fgsm", 1, lambda: FGSM(f, eps=0.031)(x, y)),
            (f"raw x {args.pgd_steps}", args.pgd_steps, raw_times(args.pgd_steps)),
            (f"pgd ({args.pgd_steps} steps)", args.pgd_steps, lambda: PGD(f, steps=args.pgd_steps)(x, y)),
            (f"raw x {args.cw_steps}", args.cw_steps, raw_times(args.cw_steps)),
            (f"cw ({args.cw_steps} iterations)", args.cw_steps, lambda: CarliniWagnerL2(f, **cw_kw)(x, y))]
    if fast is not None:  # the folded, channels-last copy: its ratio is to the model's raw rate
        rows += [("folded copy forward+backward", 1, raw_fast),
                 ("cw on the folded copy", args.cw_steps, lambda: CarliniWagnerL2(fast, **cw_kw)(x, y))]
    print(f"device {dev}, {'run ' + args.run if args.run else 'untrained resnet20'}, batch {n} x "
          f"{tuple(x.shape[1:])}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print(f"{'piece':28s} {'images x passes / s':>20s} {'/ raw rate':>11s}")
    # Rows interleaved, best of --repeat rounds each: a change of load hits every row alike.
    for _, _, fn in rows:
        fn()  # warm-up (allocator, kernels)
    best = [float("inf")] * len(rows)
    for _ in range(args.repeat):
        for i, (_, _, fn) in enumerate(rows):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - t0)
    raw_rate = n / best[0]
    reference = raw_rate
    for (name, passes, _), seconds in zip(rows, best):
        rate = n * passes / seconds
        if name.startswith("raw"):
            reference = rate
        ratio = rate / raw_rate if name.startswith(("raw x", "folded", "cw on")) else rate / reference
        print(f"{name:28s} {rate:20.1f} {ratio:11.2f}")
    _blackbox_rows(args, f, x, y, best[1], n)
    if args.profile:
        for name, passes, fn in rows:
            if not name.startswith("raw"):
                _profile(name, fn)

    if args.pairs:
        _pairs(args, model, dev, raw_rate)
    if args.detector:
        _detector(args)


def _blackbox_rows(args, f, x, y, forward_seconds: float, n: int) -> None:
    """Queries per second of the black-box attacks against the forward-only rate (a query is one forward)."""
    from csg.adversarial import local_search_attack, one_pixel_attack

    forward_rate = n / forward_seconds
    counted = {}

    def counting(images):
        counted["q"] = counted.get("q", 0) + len(images)
        return f(images)

    print(f"\n{'black-box (unbeatable budget)':28s} {'queries / s':>20s} {'/ forward':>11s}")
    cases = [("one-pixel (1 image, 4 gen.)", lambda: one_pixel_attack(counting, x[:1], y[:1], max_iter=3, seed=0)),
             ("local search (16 img, 3 rnd)", lambda: local_search_attack(counting, x[:16], y[:16], rounds=3,
                                                                           images_per_batch=16))]
    for name, fn in cases:
        fn()  # warm-up
        counted.clear()
        t0 = time.perf_counter()
        fn()
        rate = counted["q"] / (time.perf_counter() - t0)
        print(f"{name:28s} {rate:20.1f} {rate / forward_rate:11.2f}")


def _profile(name: str, fn) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    print(f"\n--- {name}: top functions by own time")
    print("\n".join(lines[start:start + 13]))


def _pairs(args, model, dev, raw_rate) -> None:
    """Pairs per second of the collection at each attack's defaults (targeted, successful pairs only)."""
    from csg.adversarial import BlockFeatures, build_attack, random_targets

    try:
        from csg.adversarial.collect import AttackCost, PairCollector
    except ImportError:  # older code
        AttackCost = PairCollector = None
    from csg.runs.rundir import RunDir

    if not args.run:
        print("--pairs needs --run (a trained model: success depends on it)")
        return
    ds = RunDir(args.run).load_dataset("test")
    images, labels = ds.images, ds.labels.long()
    order = np.random.default_rng([0, 1]).permutation(len(labels))
    targets = random_targets(labels, 10, seed=1)
    feats = BlockFeatures(model)
    print(f"\npair collection, {args.pairs} pairs per class, test split, targeted, successful pairs only")
    print(f"{'attack':8s} {'seconds':>9s} {'images':>7s} {'passes/img':>11s} {'pairs/s':>8s} {'passes/s / raw':>15s}")
    for name in ("fgsm", "pgd", "cw"):
        attack = build_attack(name, model.logits, batch_size=args.batch)
        t0 = time.perf_counter()
        if PairCollector is not None:
            c = PairCollector(feats, attack, images, labels, targets, order, per_class=args.pairs, num_classes=10,
                              cost=AttackCost(10, attack.budget_passes), batch_size=args.batch, device=dev)

            def once():
                c.run()
                return c.pool()["labels"], c.images_attacked, attack.passes
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                pool_labels, attacked, passes = once()
                prof.disable()
            else:
                pool_labels, attacked, passes = once()
        else:
            from csg.adversarial.run import collect_pairs

            pool = collect_pairs(feats, attack, images, labels, targets, order, args.pairs, 10,
                                 batch_size=args.batch, device=dev)
            pool_labels, attacked = pool["labels"], pool["attempted"]
            passes = attacked * {"fgsm": 1, "pgd": 7, "cw": 500}[name]
        dt = time.perf_counter() - t0
        print(f"{name:8s} {dt:9.1f} {attacked:7d} {passes / max(attacked, 1):11.1f} {len(pool_labels) / dt:8.2f} "
              f"{passes / dt / raw_rate:15.2f}")
        if args.profile and PairCollector is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(8)
            print(out.getvalue().split("ncalls", 1)[-1][:1500])


def _detector(args) -> None:
    """Seconds of one random forest (100 trees) at 500 pairs per class of 336 features, for 1 and 2 workers."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    n, d = 500 * 10, 336
    clean = rng.normal(size=(n, d)).astype(np.float32)
    adv = clean + rng.normal(0.3, 1.0, size=(n, d)).astype(np.float32)
    x = np.concatenate([clean, adv])
    y = np.repeat([0, 1], n)
    print(f"\nrandom forest, 100 trees, {2 * n} x {d} features (500 pairs per class)")
    for jobs in (1, 2):
        t0 = time.perf_counter()
        RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=jobs).fit(x, y)
        print(f"n_jobs {jobs}: {time.perf_counter() - t0:.1f} s per fit")


if __name__ == "__main__":
    main()
