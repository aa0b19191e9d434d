"""Filter-class MI matrix: csg's all-classes pass vs one scikit-learn call per class.

Times, in one run, ``csg.metrics.mutual_information_matrix(features, labels,
n_jobs=--jobs)`` against ``[mutual_info_classif(features, labels == c,
n_neighbors=3, random_state=0, n_jobs=-1) for c in classes]``: one warm-up
call of each, then ``--repeats`` rounds that alternate the two (so that a
change in the machine's load hits both), and prints each side's median, their
ratio and the largest absolute difference on the classes both computed, then
csg's peak numpy memory (one traced call). It
also prints the load average before and after, the CPU count and the
``OPENBLAS_*`` / ``OMP_*`` / ``MKL_*`` environment variables that were set.

(a) 10,000 samples x 64 filters x 10 classes: scikit-learn on every class.
(b) 50,000 samples x 512 filters x 1,000 classes: scikit-learn on a sample of
    classes (``--sk-classes``, default 3), its time scaled linearly to all
    1,000 classes; one round.

Features are ReLU-like: ``|N(0, 1)| + shift[y]``, non-negative, with a
class-dependent shift on a few filters per class, float32 like pooled maps.

    python benchmarks/bench_mutual_information.py --quick              # case (a), as in docs/benchmarks.md
    python benchmarks/bench_mutual_information.py --sk-classes 2       # both cases (slow: hours of scikit-learn)
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np


def make_features(n, k, c, seed=0):
    """Non-negative pooled-activation-like features with class-dependent shifts."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    shift = np.where(rng.random((c, k)) < 0.05, rng.uniform(0.5, 2.0, (c, k)), 0.0)
    feats = np.abs(rng.standard_normal((n, k))) + shift[labels]
    return feats.astype(np.float32), labels


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_case(name, n, k, c, sk_classes, seed=0, repeats=5, n_jobs=-1):
    from sklearn.feature_selection import mutual_info_classif

    from csg.metrics import mutual_information_matrix

    feats, labels = make_features(n, k, c, seed)
    classes = np.arange(c) if sk_classes is None else np.linspace(0, c - 1, sk_classes).round().astype(int)
    print(f"== {name}: {n} samples x {k} filters x {c} classes ==")

    def ours():
        return mutual_information_matrix(feats, labels, num_classes=c, n_jobs=n_jobs)

    def theirs():
        return np.stack([mutual_info_classif(feats, labels == cl, n_neighbors=3, random_state=0, n_jobs=-1)
                         for cl in classes], axis=1)

    ours()  # warm-up: imports, thread pools, first-touch allocations
    theirs()
    t_ours, t_theirs = [], []
    for _ in range(repeats):  # alternate, so that a change of load hits both sides
        t, mi = _timed(ours)
        t_ours.append(t)
        t, ref = _timed(theirs)
        t_theirs.append(t)
    ours_med, theirs_med = float(np.median(t_ours)), float(np.median(t_theirs))
    print(f"csg all {c} classes (n_jobs={n_jobs}): median {ours_med:.3f} s of {repeats}: "
          + ", ".join(f"{t:.3f}" for t in t_ours))
    scale = c / len(classes)
    label = f"all {c} classes" if len(classes) == c else f"{len(classes)} classes {classes.tolist()}"
    print(f"sklearn {label} (n_jobs=-1): median {theirs_med:.2f} s of {repeats}: "
          + ", ".join(f"{t:.2f}" for t in t_theirs))
    if scale != 1:
        print(f"sklearn scaled linearly to {c} classes: {theirs_med * scale:.0f} s")
    ratio = theirs_med * scale / ours_med
    per_round = [ts * scale / to for to, ts in zip(t_ours, t_theirs)]
    diff = float(np.abs(mi[:, classes] - ref).max())
    print(f"speed-up (ratio of medians): {ratio:,.0f}x   per round: {', '.join(f'{r:.0f}x' for r in per_round)}")
    print(f"max |csg - sklearn| on {len(classes)} classes: {diff:.2e}")
    print(f"MIS = mean_k max_c M[k, c] = {mi.max(axis=1).mean():.4f}")
    tracemalloc.start()  # after the timings: tracing slows numpy down
    ours()
    print(f"csg peak numpy memory: {tracemalloc.get_traced_memory()[1] / 2**30:.2f} GiB")
    tracemalloc.stop()
    return ours_med, theirs_med * scale, diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="case (a) only")
    ap.add_argument("--sk-classes", type=int, default=3, help="classes sklearn computes in case (b)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating timed rounds in case (a)")
    ap.add_argument("--jobs", type=lambda v: None if v.lower() == "none" else int(v), default=-1,
                    help="n_jobs of csg (threads; default -1: all cores; 'none': the library's default)")
    args = ap.parse_args()
    import sklearn
    import threadpoolctl

    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("OPENBLAS_", "OMP_", "MKL_"))}
    print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, cpus {os.cpu_count()}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    print(f"environment: {env or 'no OPENBLAS_/OMP_/MKL_ variables set'}")
    print(f"BLAS: {[(p['internal_api'], p['version'], p['num_threads']) for p in threadpoolctl.threadpool_info()]}")
    run_case("(a)", 10_000, 64, 10, None, repeats=args.repeats, n_jobs=args.jobs)
    if not args.quick:
        run_case("(b)", 50_000, 512, 1000, args.sk_classes, repeats=1, n_jobs=args.jobs)
    print(f"load average after {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")


if __name__ == "__main__":
    main()
