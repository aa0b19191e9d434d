"""Filter-class MI matrix: csg's all-classes pass vs one scikit-learn call per class.

Times, in one run, ``csg.metrics.mutual_information_matrix(features, labels)``
(one warm-up call, then the median of ``--repeats`` calls, one thread unless
``--jobs``) against ``[mutual_info_classif(features, labels == c, n_neighbors=3,
random_state=0, n_jobs=-1) for c in classes]`` and prints seconds, the
speed-up and the largest absolute difference on the classes both computed.

(a) 10,000 samples x 64 filters x 10 classes: scikit-learn on every class.
(b) 50,000 samples x 512 filters x 1,000 classes: scikit-learn on a sample of
    classes (default 3), its time scaled linearly to all 1,000 classes.

Features are ReLU-like: ``|N(0, 1)| + shift[y]``, non-negative, with a
class-dependent shift on a few filters per class, float32 like pooled maps.

    python benchmarks/bench_mutual_information.py            # both cases
    python benchmarks/bench_mutual_information.py --quick    # case (a) only
    python benchmarks/bench_mutual_information.py --sk-classes 2   # as in docs/benchmarks.md
"""
from __future__ import annotations

import argparse
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


def run_case(name, n, k, c, sk_classes, seed=0, repeats=3, n_jobs=None):
    from sklearn.feature_selection import mutual_info_classif

    from csg.metrics import mutual_information_matrix

    feats, labels = make_features(n, k, c, seed)
    print(f"== {name}: {n} samples x {k} filters x {c} classes ==")
    # Warm-up (imports, first-touch allocations), then the median of `repeats` timed calls;
    # peak memory from a separate traced call (tracemalloc slows numpy down).
    mi = mutual_information_matrix(feats, labels, num_classes=c, n_jobs=n_jobs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mi = mutual_information_matrix(feats, labels, num_classes=c, n_jobs=n_jobs)
        times.append(time.perf_counter() - t0)
    ours = float(np.median(times))
    tracemalloc.start()
    mutual_information_matrix(feats, labels, num_classes=c, n_jobs=n_jobs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"csg all {c} classes:            {ours:10.3f} s   (median of {repeats} after a warm-up: "
          f"{', '.join(f'{t:.3f}' for t in times)}; n_jobs={n_jobs}; peak numpy memory {peak / 2**30:.2f} GiB)")

    classes = np.arange(c) if sk_classes is None else np.linspace(0, c - 1, sk_classes).round().astype(int)
    t0 = time.perf_counter()
    ref = np.stack([mutual_info_classif(feats, labels == cl, n_neighbors=3, random_state=0, n_jobs=-1)
                    for cl in classes], axis=1)
    sk = time.perf_counter() - t0
    if len(classes) == c:
        sk_all = sk
        print(f"sklearn all {c} classes:        {sk_all:10.2f} s   (n_jobs=-1)")
    else:
        sk_all = sk * c / len(classes)
        print(f"sklearn {len(classes)} classes {list(classes)}: {sk:10.2f} s   (n_jobs=-1);"
              f" scaled linearly to {c} classes: {sk_all:.0f} s")
    diff = float(np.abs(mi[:, classes] - ref).max())
    print(f"speed-up: {sk_all / ours:,.0f}x   max |csg - sklearn| on {len(classes)} classes: {diff:.2e}")
    print(f"MIS = mean_k max_c M[k, c] = {mi.max(axis=1).mean():.4f}")
    return ours, sk_all, diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="case (a) only")
    ap.add_argument("--sk-classes", type=int, default=3, help="classes sklearn computes in case (b)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls of ours (median reported)")
    ap.add_argument("--jobs", type=int, default=None, help="n_jobs of ours (threads; default one)")
    args = ap.parse_args()
    import os

    import sklearn
    print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, cpus {os.cpu_count()}")
    run_case("(a)", 10_000, 64, 10, None, repeats=args.repeats, n_jobs=args.jobs)
    if not args.quick:
        run_case("(b)", 50_000, 512, 1000, args.sk_classes, repeats=args.repeats, n_jobs=args.jobs)


if __name__ == "__main__":
    main()
