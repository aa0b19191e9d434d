"""The filter-class mutual-information matrix, for every class in one pass.

``M[k, c] = MI(a_k ; 1[y = c])`` by the k-nearest-neighbour estimator for a
continuous against a discrete variable (Ross 2014), reproducing
``sklearn.feature_selection.mutual_info_classif(features, labels == c,
n_neighbors=3, random_state=0)`` for each class ``c`` without calling
scikit-learn, and without one call per class.

What scikit-learn (1.9.1) does, per call, and how it is reproduced here:

1. ``X = features.astype(float64)``; each column is divided by its standard
   deviation (``np.nanstd``, ddof=0; a std below ``10 * eps`` is replaced by 1).
2. Noise ``1e-10 * max(1, mean|X[:, k]|) * z`` is added, ``z`` drawn by
   ``RandomState(random_state).standard_normal((n, K))``. The draw does not
   depend on the target, so it is identical for every class: done once here.
3. Per binary label ``l`` with ``n_l > 1`` members: ``k_l = min(n_neighbors,
   n_l - 1)``, ``d_i`` = distance from ``x_i`` to its ``k_l``-th nearest
   neighbour among the other members of its label (duplicates count as
   distinct neighbours at distance 0), radius ``r_i = nextafter(d_i, 0)``.
   Labels with a single member are dropped from the whole computation.
4. ``m_i = #{j kept : |x_i - x_j| <= r_i}`` (``x_i`` itself included).
5. ``MI = psi(n) + <psi(k_i)> - <psi(n_{l_i})> - <psi(m_i)>``, clipped at 0,
   ``n`` and the means over the kept samples.

The sums of step 5 for every class are computed by a compiled walk over each
sorted row (``_mi_kernel``, numba) where numba is installed, and otherwise by the
whole-array numpy passes below (``CSG_MI_KERNEL=numpy`` forces them); both give
scikit-learn's counts exactly.

In one dimension the neighbours are order statistics: each column is sorted
once (an int64 sort of packed keys; rows padded with -inf / +inf so that
distances past a row's ends are inf) and reused for every class.

For the label ``y == c`` the k-th distance ``d`` inside class ``c`` comes from
the class-sorted order (a stable sort of the labels of the value-sorted
samples, all classes at once) and ``k`` class neighbours on each side.
Without ties one member lies at distance ``d``, on the "defining" side, and
every sample between it and ``x_i`` is within the radius: that side's count is
a difference of positions. On the other side the boundary lies between the
last member nearer than ``d`` and the next one, and a short search in that gap
(interpolate, probe next to it, bisect) finds it. Ties, ``d = 0`` and classes
of at most ``2k + 1`` members search both sides.

For the label ``y != c`` a sample keeps the all-sample radius, and without
ties ``m = k``, unless a member of ``c`` is among its ``k`` nearest
neighbours; then the radius is that of the ``k``-th entry outside ``c`` in its
list of ``2k + 1`` nearest neighbours (merged from the two sides), at index
``p``, and ``m = 1 + p``. So the sum over the label is ``(n - n_c) psi(k)``
plus a histogram of those (sample, class, ``p``) corrections. Samples with
ties in their list count the entries nearer than the radius exactly; pairs
whose list holds too many members of ``c`` scan further.

Filters are processed in blocks of ~65,536 samples x filters (bounded memory;
arrays of 512 KiB are reused by malloc, larger ones were faulted in afresh on
every block) on worker threads: ``n_jobs`` of them (default: every available
core from 2^18 samples x filters on), a multiple of ``n_jobs`` equal blocks.
numpy releases the GIL inside its kernels. Each block scales its own filters
(steps 1-2 per filter: the same bits as one whole-array pass) and adds its
columns of the noise, which is one stream and so is drawn on the calling
thread; while it is drawn, the workers sort their first blocks without the
noise, and those blocks are then re-sorted from that order by a stable sort
that is near-linear on nearly sorted rows. The result does not depend on the
blocks or threads, bit for bit.

Floating point is reproduced exactly: scikit-learn's KD-tree distance in 1-D
is ``|fl(x_i - x_j)|``; its brute-force search (used when a label has at most
``2 * n_neighbors + 1`` members) uses ``sqrt(max(0, (x_i^2 - 2 x_i x_j) +
x_j^2))``, and that is what is used for such labels here.
"""
from __future__ import annotations

import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import digamma

from ..core.errors import CsgError

__all__ = ["mutual_information_matrix", "prepare_features"]

_NOISE = 1e-10            # scikit-learn's noise amplitude (Kraskov et al.)
_BLOCK_ELEMENTS = 1 << 16  # samples x filters per block: bounds the working memory (arrays of 512 KiB
                           # stay inside malloc's reused memory; 1 MiB ones were faulted in per block)
_PAIR_CHUNK = 1 << 20      # (sample, class) correction pairs handled at once
_NOISE_ROWS = 4096         # rows of noise drawn at a time (same stream as one draw)
_PARALLEL_MIN = 1 << 18    # samples x filters from which n_jobs=None uses every available core
_PRESORT_ELEMENTS = 1 << 22  # samples x filters sorted (without noise) while the noise is drawn, at most


# ----------------------------------------------------------------------------------------------
# Input handling


def _check_random_state(seed) -> np.random.RandomState:
    """``sklearn.utils.check_random_state``: None, an int or a RandomState."""
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.RandomState(int(seed))
    if isinstance(seed, np.random.RandomState):
        return seed
    raise CsgError(f"random_state must be None, an int or a numpy RandomState, got {seed!r}")


def _validate(features, labels, n_neighbors, num_classes, chunk_size):
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 2:
        raise CsgError(f"features must be a 2-D array (samples x filters), got shape {x.shape}")
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise CsgError(f"features must be real numbers (float), got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise CsgError("features has no columns (filters); pass an N x K array with K >= 1")
    if y.ndim != 1:
        raise CsgError(f"labels must be a 1-D array of class indices, got shape {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise CsgError(f"labels has {y.shape[0]} entries but features has {x.shape[0]} rows; "
                       "pass one label per sample")
    if x.shape[0] < 3:
        raise CsgError(f"mutual information needs at least 3 samples, got {x.shape[0]}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise CsgError(f"labels must be integer class indices, got dtype {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise CsgError("features contain NaN or infinite values; remove or replace them first")
    if (not isinstance(n_neighbors, numbers.Integral) or isinstance(n_neighbors, bool)
            or n_neighbors < 1):
        raise CsgError(f"n_neighbors must be an integer >= 1, got {n_neighbors!r}")
    if chunk_size is not None and (not isinstance(chunk_size, numbers.Integral) or chunk_size < 1):
        raise CsgError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise CsgError(f"labels must be in [0, num_classes), found {int(y.min())}")
    if num_classes is None:
        num_classes = int(y.max()) + 1
    elif not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise CsgError(f"num_classes must be a positive integer, got {num_classes!r}")
    if y.max() >= num_classes:
        raise CsgError(f"labels must be in [0, num_classes={num_classes}), found {int(y.max())}; "
                       "pass the right num_classes")
    return x, y, int(num_classes), int(n_neighbors)


def prepare_features(features, random_state=0) -> np.ndarray:
    """Scaled, noised float64 copy of ``features``, bit for bit as scikit-learn makes it.

    ``X = features / std(features, axis=0)`` (ddof=0; a std below ``10 * eps``
    counts as 1), then ``X += 1e-10 * max(1, mean|X|) * z`` with
    ``z = RandomState(random_state).standard_normal((n, K))``.
    """
    x = np.asarray(features)
    n, k = x.shape
    X = x.astype(np.float64, copy=True)
    # scikit-learn scales and averages X[:, all-true mask], a copy whose layout (Fortran order for a
    # C-ordered X) sets the summation order of the reductions: the same copy gives the same bits.
    Xc = X[:, np.ones(k, dtype=bool)]
    std = np.nanstd(Xc, axis=0)
    std[std < 10 * np.finfo(np.float64).eps] = 1.0
    Xc /= std
    X /= std  # elementwise: the same values as writing Xc back
    amp = _NOISE * np.maximum(1, np.mean(np.abs(Xc), axis=0))
    del Xc
    rng = _check_random_state(random_state)
    # Drawing the (n, K) normals in row blocks continues the same stream (row-major fill).
    for start in range(0, n, _NOISE_ROWS):
        stop = min(n, start + _NOISE_ROWS)
        X[start:stop] += amp * rng.standard_normal(size=(stop - start, k))
    return X


# ----------------------------------------------------------------------------------------------
# Order-statistic kernels (rows = filters, columns = samples)


def _kth_of_two_sorted(left: np.ndarray, right: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest of the union of two ascending lists (along axis 0, length >= k).

    ``min_{t=0..k} max(left[t-1], right[k-t-1])`` with an empty prefix as -inf.
    """
    best = np.minimum(left[k - 1], right[k - 1])
    pair = np.empty_like(best)
    for t in range(1, k):
        np.minimum(best, np.maximum(left[t - 1], right[k - t - 1], out=pair), out=best)
    return best


def _side_distances(vals, width, lo=None, hi=None):
    """Distances to the ``width`` sorted neighbours on each side: lists ``left``, ``right`` of (B, N).

    ``left[t-1][b, p] = vals[b, p] - vals[b, p-t]`` and ``right[t-1][b, p] =
    vals[b, p+t] - vals[b, p]`` (``fl(x_i - x_j)``, ascending in ``t``); ``inf``
    past the row or past the segment ``[lo[p], hi[p])`` (1-D, shared by all rows).
    """
    B, n = vals.shape
    pos = np.arange(n)
    left, right = [], []
    for t in range(1, width + 1):
        lt = np.full((B, n), np.inf)
        rt = np.full((B, n), np.inf)
        if t < n:  # shifted slices: no gathers
            diff = vals[:, t:] - vals[:, :-t]
            lt[:, t:] = diff
            rt[:, :-t] = diff
        if lo is not None:
            np.copyto(lt, np.inf, where=(pos - t < lo)[None, :])
            np.copyto(rt, np.inf, where=(pos + t >= hi)[None, :])
        left.append(lt)
        right.append(rt)
    return left, right


def _brute_kth(vals, pos, seg_lo, seg_len, k_pos, width):
    """k-th neighbour distance of ``vals[:, pos]`` inside its segment, by scikit-learn's brute force.

    Its Euclidean brute force computes ``sqrt(max(0, (x_i^2 + (-2 x_i x_j)) + x_j^2))``
    (squared norms plus a GEMM middle term), which differs from ``|x_i - x_j|``
    in the last bits; the k-th smallest over ``j != i`` of that is the radius.
    """
    mem = seg_lo[:, None] + np.arange(width)                 # (P, width) member positions
    ok = (np.arange(width) < seg_len[:, None]) & (mem != pos[:, None])
    mem = np.minimum(mem, vals.shape[1] - 1)
    xi = vals[:, pos][:, :, None]
    xj = vals[:, mem]
    d2 = (xi * xi + (-2.0 * (xi * xj))) + xj * xj
    d = np.sqrt(np.maximum(d2, 0.0))
    d[:, ~ok] = np.inf
    d.sort(axis=2)
    return np.take_along_axis(d, np.broadcast_to((k_pos - 1)[None, :, None], (d.shape[0], d.shape[1], 1)),
                              axis=2)[..., 0]


def _segment_radius(vals, seg_id, seg_lo, seg_len, n_neighbors):
    """``nextafter(d_k, 0)`` for every sample of ``vals`` (B, N), segments sorted by value.

    ``d_k`` is the distance to the ``k = min(n_neighbors, len - 1)``-th nearest
    other member of the sample's segment. Segments of one member get NaN. Also
    returns the side distances (``_side_distances`` with width ``n_neighbors``).
    """
    K = n_neighbors
    lo = seg_lo[seg_id]
    ln = seg_len[seg_id]
    hi = lo + ln
    out = np.full(vals.shape, np.nan)
    left, right = _side_distances(vals, K, lo, hi)
    tree = ln > 2 * K + 1  # scikit-learn's KD-tree path: exact |x_i - x_j|
    if tree.any():
        kth = _kth_of_two_sorted(left, right, K)
        out[:, tree] = kth[:, tree]
    small = (ln >= 2) & ~tree  # brute-force path
    if small.any():
        pos = np.flatnonzero(small)
        out[:, pos] = _brute_kth(vals, pos, lo[pos], ln[pos], np.minimum(K, ln[pos] - 1), 2 * K + 1)
    return np.nextafter(out, 0), left, right


def _count_within(sorted_vals: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``#{j : |fl(x - s_j)| <= r}`` per query, rows of ``sorted_vals`` (B, N) ascending.

    ``searchsorted`` at ``x -/+ r`` then exact fix-ups: the predicate is
    monotone along the sorted row, so a boundary that the rounded ``x + r``
    misplaced is stepped to where the exact predicate flips.
    """
    sorted_vals = np.ascontiguousarray(sorted_vals)
    x = np.ascontiguousarray(x)
    r = np.ascontiguousarray(r)
    B, N = sorted_vals.shape
    s_t = torch.from_numpy(sorted_vals)
    hi = torch.searchsorted(s_t, torch.from_numpy(x + r), right=True).numpy().astype(np.int64)
    lo = torch.searchsorted(s_t, torch.from_numpy(x - r), right=False).numpy().astype(np.int64)
    flat = sorted_vals.ravel()
    base = (np.arange(B) * N)[:, None]
    xf, rf = x.ravel(), r.ravel()
    hi_f, lo_f = hi.ravel(), lo.ravel()
    basef = np.broadcast_to(base, x.shape).ravel()
    idx = np.arange(hi_f.size)
    # Upper boundary: hi = first j with s_j - x > r.
    while idx.size:
        h = hi_f[idx]
        up = (h < N) & (flat[basef[idx] + np.minimum(h, N - 1)] - xf[idx] <= rf[idx])
        down = (h > 0) & (flat[basef[idx] + np.maximum(h - 1, 0)] - xf[idx] > rf[idx])
        hi_f[idx[up]] += 1
        hi_f[idx[down]] -= 1
        idx = idx[up | down]
    idx = np.arange(lo_f.size)
    # Lower boundary: lo = first j with x - s_j <= r.
    while idx.size:
        l_ = lo_f[idx]
        down = (l_ > 0) & (xf[idx] - flat[basef[idx] + np.maximum(l_ - 1, 0)] <= rf[idx])
        up = (l_ < N) & (xf[idx] - flat[basef[idx] + np.minimum(l_, N - 1)] > rf[idx])
        lo_f[idx[down]] -= 1
        lo_f[idx[up]] += 1
        idx = idx[up | down]
    return (hi_f - lo_f).reshape(x.shape)


def _equal_run_length(s: np.ndarray) -> np.ndarray:
    """For each entry of the row-sorted ``s``, how many entries of its row equal it."""
    B, n = s.shape
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    run = np.cumsum(new.ravel()) - 1  # runs never span rows: each row starts a run
    return np.bincount(run)[run].reshape(B, n)


# ----------------------------------------------------------------------------------------------
# One binary target, directly (rare classes: singletons, or a class that is nearly everything)


def _binary_mi(Xb: np.ndarray, z: np.ndarray, n_neighbors: int, psi: np.ndarray) -> np.ndarray:
    """scikit-learn's ``_compute_mi_cd`` for one binary target ``z`` on every row of ``Xb``."""
    groups = [g for g in (np.flatnonzero(z), np.flatnonzero(~z)) if g.size >= 2]
    kept = np.sort(Xb[:, np.concatenate(groups)], axis=1)
    n_s = kept.shape[1]
    acc = np.zeros(Xb.shape[0])
    for g in groups:  # at most two label groups
        v = np.sort(Xb[:, g], axis=1)
        m = g.size
        k = min(n_neighbors, m - 1)
        r, _, _ = _segment_radius(v, np.zeros(m, dtype=np.int64), np.zeros(1, np.int64), np.array([m]),
                                  n_neighbors)
        cnt = _count_within(kept, v, r)
        acc += m * (digamma(k) - psi[m]) - psi[cnt].sum(axis=1)
    return np.maximum(0.0, psi[n_s] + acc / n_s)


# ----------------------------------------------------------------------------------------------
# All classes of a block of filters


@dataclass(frozen=True)
class _Layout:
    """What every block of filters shares: the label layout, in class-sorted columns, and digamma."""
    n: int
    C: int
    K: int
    counts: np.ndarray      # (C,) members per class
    seg_lo: np.ndarray      # (C,) first class-sorted column of each class
    col_lo: np.ndarray      # (n,) first column of the class of each class-sorted column
    col_hi: np.ndarray      # (n,) one past its class's last column
    col_fast: np.ndarray    # (n,) in a class of more than 2K + 1 members (KD-tree radius)
    col_valid: np.ndarray   # (n,) in a class of at least 2 members
    small_cols: np.ndarray  # columns of classes of 2 .. 2K + 1 members (brute-force radius)
    small_k: np.ndarray     # their k = min(K, members - 1)
    edge_left: tuple        # edge_left[t - 1]: columns whose class has no member t places left
    edge_right: tuple
    special: np.ndarray     # (C,) classes computed one binary target at a time
    regular: np.ndarray     # (C,) the others
    psi: np.ndarray         # digamma(0 .. n)


def _layout(y: np.ndarray, C: int, K: int) -> _Layout:
    n = y.size
    counts = np.bincount(y, minlength=C)
    seg_lo = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    size = np.repeat(counts, counts)  # class size, per class-sorted column
    col_lo = np.repeat(seg_lo, counts)
    col_hi = col_lo + size
    j = np.arange(n)
    small = (size >= 2) & (size <= 2 * K + 1)
    special = (counts == 1) | (n - counts <= 2 * K + 1)
    return _Layout(n=n, C=C, K=K, counts=counts, seg_lo=seg_lo, col_lo=col_lo, col_hi=col_hi,
                   col_fast=size > 2 * K + 1, col_valid=size >= 2, small_cols=np.flatnonzero(small),
                   small_k=np.minimum(K, size[small] - 1),
                   edge_left=tuple(np.flatnonzero(j - t < col_lo) for t in range(1, K + 1)),
                   edge_right=tuple(np.flatnonzero(j + t >= col_hi) for t in range(1, K + 1)),
                   special=special, regular=~special, psi=digamma(np.arange(n + 1, dtype=np.float64)))


def _prev_float(d: np.ndarray) -> np.ndarray:
    """``nextafter(d, 0)`` for ``d >= 0`` (the bit pattern minus one; np.nextafter is far slower)."""
    return (d.view(np.int64) - (d > 0)).view(np.float64)


_MAGNITUDE_BITS = np.int64(0x7FFFFFFFFFFFFFFF)


def _sort_rows(X: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Argsort of each row of ``X`` (B, n), writing the sorted rows into ``out``.

    An int64 sort of packed keys (numpy's SIMD sort, about twice as fast as a
    float argsort plus the gather): the float's order-preserving integer image
    with its lowest ``ceil(log2 n)`` bits replaced by the column index. Values
    that agree in all the other bits come out in index order, not necessarily
    in value order; rows where that happened are argsorted directly. The order
    among equal values is arbitrary (only distances matter downstream).
    """
    B, n = X.shape
    bits = max(1, (n - 1).bit_length())
    if bits > 24:  # too few value bits would be left
        order = np.argsort(X, axis=1)
        out[...] = np.take_along_axis(X, order, axis=1)
        return order
    k = X.view(np.int64)
    key = k ^ ((k >> 63) & _MAGNITUDE_BITS)  # negative floats: reverse the order of their magnitudes
    index_bits = np.int64((1 << bits) - 1)
    key &= ~index_bits
    key |= np.arange(n, dtype=np.int64)
    key.sort(axis=1)
    order = key
    order &= index_bits
    out[...] = np.take_along_axis(X, order, axis=1)
    unsorted = np.flatnonzero((out[:, 1:] < out[:, :-1]).any(axis=1))
    if unsorted.size:
        order[unsorted] = np.argsort(X[unsorted], axis=1)
        out[unsorted] = np.take_along_axis(X[unsorted], order[unsorted], axis=1)
    return order


def _resort_rows(X: np.ndarray, order0: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Argsort of each row of ``X`` (B, n) from ``order0``, an argsort of nearly the same rows
    (the values before the noise), writing the sorted rows into ``out``.

    In ``order0``'s order a row is nearly sorted (the noise moves only values that were tied or
    within ~1e-9 of each other), and a stable sort (timsort) of a nearly sorted row is about
    linear: ~20x cheaper than ``_sort_rows``. Rows with many values out of place (runs of
    equal values before the noise, such as a ReLU's zeros) are sorted from scratch. The order
    among equal values may differ from ``_sort_rows``'s; nothing downstream depends on it.
    """
    B, n = X.shape
    Xp = np.take_along_axis(X, order0, axis=1)
    heavy = np.count_nonzero(Xp[:, 1:] < Xp[:, :-1], axis=1) > n // 64
    if not heavy.any():
        fix = np.argsort(Xp, axis=1, kind="stable")
        out[...] = np.take_along_axis(Xp, fix, axis=1)
        return np.take_along_axis(order0, fix, axis=1)
    order = np.empty_like(order0)
    light, heavy = np.flatnonzero(~heavy), np.flatnonzero(heavy)
    if light.size:
        fix = np.argsort(Xp[light], axis=1, kind="stable")
        order[light] = np.take_along_axis(order0[light], fix, axis=1)
        out[light] = np.take_along_axis(Xp[light], fix, axis=1)
    buf = np.empty((heavy.size, n))
    order[heavy] = _sort_rows(X[heavy], buf)
    out[heavy] = buf
    return order


def _search(flat, x, r, inside, outside, step):
    """First position from ``inside`` towards ``outside`` whose distance to ``x`` exceeds ``r``.

    Along the sorted rows of ``flat`` (flat indices): ``step`` (+1 or -1 per
    query) is the direction, ``inside`` is within ``r`` of ``x`` and
    ``outside`` beyond it (a sample or the +-inf padding). The distance is the
    KD-tree's ``|fl(x - s)|``, exactly. Probes: where linear interpolation of
    the values puts the boundary, next to that probe on the side the boundary
    lies, then bisection.
    """
    out = outside.copy()
    todo = np.arange(inside.size)  # no compaction yet: nearly all are open at first
    a, b, xx, rr = inside.copy(), outside.copy(), x, r
    st = step.astype(np.int64)
    sf = step.astype(np.float64)
    da = (flat.take(a) - xx) * sf
    db = (flat.take(b) - xx) * sf
    length = np.abs(b - a)
    frac = (rr - da) / (db - da)  # 0 where b is the padding (inf)
    # settled brackets (length 1) probe their inside end and stay settled
    mid = a + st * np.clip((frac * length).astype(np.int64), 1, np.maximum(length - 1, 1))
    del da, db, frac, length
    # One round is a few same-type, in-place passes (mixed bool/int arithmetic and fresh
    # temporaries cost several times more): the probe's test as a sign mask, the bracket update
    # as xor blends.
    dist = np.empty(a.size)
    mask = dist.view(np.int64)  # -1 where the probe is beyond r, else 0
    tmp = np.empty_like(a)
    probe = 1
    while True:
        flat.take(mid, out=dist, mode="clip")  # indices are valid; "clip" avoids a buffered copy
        dist -= xx
        dist *= sf
        np.subtract(rr, dist, out=dist)  # r - dist < 0 exactly when dist > r (+-inf included)
        mask >>= 63
        # b = beyond ? mid : b, a = beyond ? a : mid
        np.bitwise_xor(b, mid, out=tmp)
        tmp &= mask
        b ^= tmp
        np.bitwise_xor(a, mid, out=tmp)
        tmp &= mask
        np.bitwise_xor(mid, tmp, out=a)
        if probe == 1:  # next to the interpolated probe, on the boundary's side: beyond ? b - st : a + st
            np.add(a, st, out=mid)
            np.subtract(b, st, out=tmp)
            tmp ^= mid
            tmp &= mask
            mid ^= tmp
        else:  # bisection
            np.add(a, b, out=mid)
            mid >>= 1
        np.subtract(b, a, out=tmp)
        tmp += 1
        open_ = tmp.view(np.uint64) > 2  # |b - a| > 1
        n_open = np.count_nonzero(open_)
        if n_open <= open_.size // 2:  # write back the settled ones, go on with the others
            out[todo] = b
            if not n_open:
                return out
            keep = np.flatnonzero(open_)
            todo, a, b, xx, rr, st, sf, mid = (v.take(keep) for v in (todo, a, b, xx, rr, st, sf, mid))
            dist = np.empty(a.size)
            mask = dist.view(np.int64)
            tmp = np.empty_like(a)
        probe += 1


def _positive_sums(s, flat, row_start, ys, lay: _Layout) -> np.ndarray:
    """``SP[b, c] = sum over members i of c of psi(m_i)`` for the label ``y == c`` (B, C).

    In the class-sorted order (a stable sort of the labels of the value-sorted
    samples, all classes at once) the k-th distance inside the class is
    ``d = min_t max(L_t, R_{k-t})`` over the sorted side distances. Without
    ties exactly one member lies at distance ``d``, on the "defining" side:
    every sample strictly between it and ``x_i`` is within the radius, so that
    side's count is a difference of positions. On the other side the boundary
    lies between the last member nearer than ``d`` and the next member (or the
    row's end): a short search. Ties, ``d = 0`` and classes of at most
    ``2K + 1`` members (brute-force radius) take the two-sided search of
    ``_positive_counts_general``.
    """
    B, n = s.shape
    K = lay.K
    perm = np.argsort(ys, axis=1, kind="stable")  # small-integer keys: numpy's radix sort
    cs = np.take_along_axis(s, perm, axis=1)
    L = np.empty((K, B, n))  # L[t - 1] = x - (t-th member to the left), inf past the class
    R = np.empty((K, B, n))
    for t in range(1, K + 1):
        Lt, Rt = L[t - 1], R[t - 1]
        if t < n:
            np.subtract(cs[:, t:], cs[:, :-t], out=Lt[:, t:])
            Rt[:, :-t] = Lt[:, t:]
        Lt[:, :min(t, n)] = np.inf
        Rt[:, max(n - t, 0):] = np.inf
        Lt[:, lay.edge_left[t - 1]] = np.inf
        Rt[:, lay.edge_right[t - 1]] = np.inf
    d = _kth_of_two_sorted(L, R, K)
    if lay.small_cols.size:
        c = lay.small_cols
        d[:, c] = _brute_kth(cs, c, lay.col_lo[c], lay.col_hi[c] - lay.col_lo[c], lay.small_k, 2 * K + 1)
    r = _prev_float(d)
    # side distances below d (a) and up to d (b), as int8 counts
    aL, bL = (L[0] < d).view(np.int8), (L[0] <= d).view(np.int8)
    aR, bR = (R[0] < d).view(np.int8), (R[0] <= d).view(np.int8)
    for t in range(1, K):
        aL, bL = aL + (L[t] < d).view(np.int8), bL + (L[t] <= d).view(np.int8)
        aR, bR = aR + (R[t] < d).view(np.int8), bR + (R[t] <= d).view(np.int8)
    regular = (aL + aR == K - 1) & (bL + bR == K) & (d > 0) & lay.col_fast
    def_right = bR > aR  # the member at distance d is on the right
    sg = def_right.view(np.int8) * np.int8(2) - np.int8(1)  # direction of the defining side
    a_other = aR + (aL - aR) * def_right  # members nearer than d on the other side
    off_def = sg * (aL + aR - a_other + 1)  # class-sorted offsets (int8) of: the defining member,
    off_in = -sg * a_other  # the last member nearer than d on the other side,
    off_out = off_in - sg  # and the member after it
    del aL, bL, aR, bR, def_right
    # their flat positions in the padded value-sorted rows (offsets past the block's ends only occur
    # for irregular samples, whose values are not used: clipped)
    pos = (perm + row_start).ravel()
    del perm
    at = np.arange(B * n).reshape(B, n)
    idx = np.empty_like(at)
    q_def = pos.take(np.add(at, off_def, out=idx), mode="clip")
    # a tie if the sample next to the defining member is not nearer than d
    regular &= np.abs(flat.take(q_def - sg) - cs) < d
    irregular = np.flatnonzero(~regular & lay.col_valid)
    general = (irregular, L.reshape(K, -1)[:, irregular], R.reshape(K, -1)[:, irregular])
    del L, R, d, regular, off_def
    q_in = pos.take(np.add(at, off_in, out=idx), mode="clip")
    q_out = pos.take(np.add(at, off_out, out=idx), mode="clip")
    # no member after it in the class: the row's padding (-1 or n) is the outer end
    j_out = np.arange(n) + off_out
    no_out = np.flatnonzero((j_out < lay.col_lo) | (j_out >= lay.col_hi))
    del at, idx, j_out, off_in, off_out, a_other
    rs = row_start.ravel()
    q_out.flat[no_out] = rs[no_out // n] + np.where(sg.flat[no_out] > 0, -1, n)
    xf, rf = cs.ravel(), r.ravel()
    q_out.flat[irregular] = q_in.flat[irregular] - sg.flat[irregular]  # a settled bracket: no search
    q_other = _search(flat, xf, rf, q_in.ravel(), q_out.ravel(), -sg.ravel())
    m = np.abs(q_def.ravel() - q_other) - 1  # both sides and x_i itself
    del q_in, q_out, q_other, q_def, sg
    if irregular.size:
        m[irregular] = _positive_counts_general(flat, pos, row_start, xf, rf, general, lay)
    if not lay.col_valid.all():  # one-member classes: terms dropped (the class is special)
        m.reshape(B, n)[:, ~lay.col_valid] = 1
    w = lay.psi[m].reshape(B, n)
    SP = np.zeros((B, lay.C))
    present = lay.counts > 0
    SP[:, present] = np.add.reduceat(w, lay.seg_lo[present], axis=1)
    return SP


def _positive_counts_general(flat, pos, row_start, xf, rf, general, lay: _Layout) -> np.ndarray:
    """``m`` for the class-sorted entries ``ix`` (flat) by a search on both sides.

    On each side the members within ``r`` come first; the boundary lies between
    the last of them and the next member (or the row's padding when there is
    none, or when all ``K`` listed members are within ``r``).
    """
    ix, L_ix, R_ix = general
    K, n = lay.K, lay.n
    jj = ix % n
    first = ix - jj  # the row's first class-sorted entry
    rs = row_start.ravel()[ix // n]
    x, r = xf[ix], rf[ix]
    q = []
    for dist, step in ((R_ix, 1), (L_ix, -1)):
        a = (dist <= r).sum(axis=0)
        inner = pos[ix + step * a]
        nxt = jj + step * (a + 1)
        exists = (a < K) & ((nxt < lay.col_hi[jj]) if step > 0 else (nxt >= lay.col_lo[jj]))
        outer = np.where(exists, pos[first + np.clip(nxt, 0, n - 1)], rs + n if step > 0 else rs - 1)
        q.append(_search(flat, x, r, inner, outer, np.full(ix.size, step)))
    return q[0] - q[1] - 1


def _nearest_neighbours(flat, cls_flat, x, pos, width):
    """The ``width`` nearest other samples of each sample, nearest first: (width, N) each.

    A merge of the sorted neighbours on the two sides, walking outwards from
    ``pos`` (flat indices into rows padded with ``-inf`` / ``+inf`` of class -1).
    Returns distances and classes; equal distances may come in either order.
    After ``j`` steps the two fronts are ``j + 2`` apart, so one index tracks both.
    """
    N = x.size
    d_nb = np.empty((width, N))
    c_nb = np.empty((width, N), dtype=cls_flat.dtype)
    q_left = pos - 1
    left, right = x - flat.take(q_left), flat.take(pos + 1) - x
    for j in range(width):
        take_right = left > right
        np.minimum(left, right, out=d_nb[j])
        cls_flat.take(q_left + take_right * (j + 2), out=c_nb[j])  # the sample just listed
        if j + 1 < width:  # step past it on its side; only that side's distance changes
            q_left -= ~take_right
            v = flat.take(q_left + take_right * (j + 3))  # the next sample on that side
            # x - v <= 0 <= left when the right side moved (and v - x <= 0 <= right the other way)
            np.maximum(left, x - v, out=left)
            np.maximum(right, v - x, out=right)
    return d_nb, c_nb


def _negative_sums(s, flat, cls_flat, row_start, ys, lay: _Layout) -> np.ndarray:
    """``SQ[b, c] = sum over non-members i of c of psi(m_i)`` for the label ``y != c`` (B, C).

    Without ties among its ``2K + 1`` nearest neighbours (and none at distance
    0), a sample outside ``c`` has ``m = K`` unless a member of ``c`` is among
    its ``K`` nearest; then the radius is the distance of the ``K``-th
    non-member in its nearest-first list, at index ``p``, and ``m = 1 + p``. So
    ``SQ = (n - n_c) psi(K) + sum of psi(1 + p) - psi(K)`` over those pairs,
    counted in a (row, class, p) histogram. Samples with ties count the entries
    below the radius exactly (``_tied_corrections``); pairs whose list holds
    too many members of ``c`` scan further (``_far_corrections``).
    """
    B, n = s.shape
    K, C, psi = lay.K, lay.C, lay.psi
    W = 2 * K + 1  # neighbours listed: room for K + 1 skipped members
    ysf = ys.ravel()
    d_nb, c_nb = _nearest_neighbours(flat, cls_flat, s.ravel(), (row_start + np.arange(n)).ravel(), W)
    tied = d_nb[0] == 0
    for j in range(1, W):
        tied |= d_nb[j] == d_nb[j - 1]
    untied = ~tied
    check_regular = not lay.regular.all()
    regular_ext = np.append(lay.regular, False)
    key_base = np.repeat(np.arange(B) * (C * (W + 1)), n)
    hist = np.zeros(B * C * (W + 1), dtype=np.int64)  # corrections by (row, class, p); p = W: none
    far = []
    for t in range(K):  # the class of the t-th nearest neighbour, once per sample
        c_t = c_nb[t]
        hit = (c_t != ysf) & untied
        for u in range(t):
            hit &= c_nb[u] != c_t
        if check_regular:
            hit &= regular_ext[c_t]
        # p = index of the K-th list entry outside class c_t: #{j : fewer than K non-members up to j}
        seen = (c_nb[0] != c_t).view(np.int8)
        p = (seen < K).view(np.int8)
        for j in range(1, W):
            seen = seen + (c_nb[j] != c_t).view(np.int8)
            p = p + (seen < K).view(np.int8)
        found = seen >= K
        if not found.all():
            far_t = np.flatnonzero(hit & ~found)
            far.append((far_t, c_t[far_t], np.full(far_t.size, psi[K])))
        hit &= found
        p += (W - p) * ~hit
        hist += np.bincount(key_base + c_t * np.int64(W + 1) + p, minlength=hist.size)
    gain = np.append(psi[1:W + 1] - psi[K], 0.0)  # psi(1 + p) - psi(K), by p
    delta = hist.reshape(B * C, W + 1) @ gain
    adj_total = np.zeros(B)
    adj_own = np.zeros(B * C)
    if tied.any():
        far += _tied_corrections(s, d_nb, c_nb, ysf, np.flatnonzero(tied), lay, regular_ext, check_regular,
                                 delta, adj_total, adj_own)
    if any(f[0].size for f in far):
        ix, cc, base = (np.concatenate(parts) for parts in zip(*far))
        _far_corrections(s, ys, ix, cc, base, lay, delta)
    return (((n - lay.counts) * psi[K])[None, :] + adj_total[:, None] - adj_own.reshape(B, C)
            + delta.reshape(B, C))


def _tied_corrections(s, d_nb, c_nb, ysf, ix, lay: _Layout, regular_ext, check_regular,
                      delta, adj_total, adj_own):
    """The samples ``ix`` with ties (or zeros) among their listed distances, counted exactly.

    ``m = 1 + #{list entries nearer than the radius}``, the radius set by list
    entry ``p`` (the all-sample radius: ``p = K - 1``); a radius of 0 counts
    the run of equal values. Adds their terms to ``delta``, ``adj_total`` and
    ``adj_own`` in place and returns the pairs that need a further scan.
    """
    B, n = s.shape
    K, C, psi = lay.K, lay.C, lay.psi
    W = d_nb.shape[0]
    d, cl, y = d_nb[:, ix], c_nb[:, ix], ysf[ix]
    M = ix.size
    # tie_start[j]: index of the first entry equal to entry j, so #{entries < d_j} = tie_start[j]
    tie_start = np.empty((W, M), dtype=np.int64)
    tie_start[0] = 0
    for j in range(1, W):
        tie_start[j] = np.where(d[j] == d[j - 1], tie_start[j - 1], j)
    n_zero = (d == 0).sum(axis=0)
    eqrun = _equal_runs_at(s, ix // n, ix % n) if n_zero.any() else None
    cols = np.arange(M)

    def count(p, sel):
        m = 1 + tie_start[p, sel]
        return m if eqrun is None else np.where(p < n_zero[sel], eqrun[sel], m)

    w_base = psi[count(np.full(M, K - 1), cols)]  # the all-sample radius
    row = ix // n
    adj_total += np.bincount(row, weights=w_base - psi[K], minlength=B)
    adj_own += np.bincount(row * C + y, weights=w_base - psi[K], minlength=B * C)
    far = []
    for t in range(K):
        c_t = cl[t]
        hit = c_t != y
        for u in range(t):
            hit &= cl[u] != c_t
        if check_regular:
            hit &= regular_ext[c_t]
        seen = np.zeros(M, dtype=np.int64)
        p = np.zeros(M, dtype=np.int64)
        for j in range(W):
            seen += cl[j] != c_t
            p += seen < K
        found = seen >= K
        ok = np.flatnonzero(hit & found)
        delta += np.bincount(row[ok] * C + c_t[ok], weights=psi[count(p[ok], ok)] - w_base[ok],
                             minlength=B * C)
        f = np.flatnonzero(hit & ~found)
        far.append((ix[f], c_t[f], w_base[f]))
    return far


def _far_corrections(s, ys, ix, cc, base, lay: _Layout, delta):
    """``delta[b, c] += psi(m) - base`` for (sample ``ix``, class ``cc``) pairs, scanning beyond the list."""
    B, n = s.shape
    hb, hp = ix // n, ix % n
    for start in range(0, ix.size, _PAIR_CHUNK):
        sl = slice(start, start + _PAIR_CHUNK)
        m = _negative_radius_excluding(s, ys, hb[sl], hp[sl], cc[sl], lay.K)
        delta += np.bincount(hb[sl] * lay.C + cc[sl], weights=lay.psi[m] - base[sl], minlength=B * lay.C)


def _equal_runs_at(s, b, p):
    """How many entries of row ``b`` of the row-sorted ``s`` equal ``s[b, p]``, per pair."""
    rows, inv = np.unique(b, return_inverse=True)
    return _equal_run_length(s[rows])[inv, p]


def _negative_radius_excluding(s, ys, b, p, c, K):
    """For pairs (row b, sorted position p, class c): count ``m`` of the "y != c" problem.

    The k-th distance among samples outside class ``c`` is found by scanning the
    sorted row outwards from ``p``, skipping members of ``c``, with a window that
    doubles for the pairs it does not yet settle. ``m`` counts every sample
    (class ``c`` included, it has >= 2 members) within the radius: all of them
    lie inside the scanned window when the radius is positive.
    """
    n = s.shape[1]
    m_out = np.empty(p.size, dtype=np.int64)
    todo = np.arange(p.size)
    width = K + 2
    while todo.size:
        bb, pp, cc = b[todo], p[todo], c[todo]
        offs = np.arange(1, width + 1)
        xi = s[bb, pp][:, None]
        settled = np.ones(todo.size, dtype=bool)
        kept_sides, dist_sides = [], []
        for sign in (-1, 1):
            q = pp[:, None] + sign * offs
            ok = (q >= 0) & (q < n)
            qc = np.clip(q, 0, n - 1)
            d = (xi - s[bb[:, None], qc]) if sign < 0 else (s[bb[:, None], qc] - xi)
            d[~ok] = np.inf
            keep = ok & (ys[bb[:, None], qc] != cc[:, None])
            kept = np.where(keep, d, np.inf)
            kept.sort(axis=1)  # the non-members' distances first, ascending
            if width < K:
                kept = np.pad(kept, ((0, 0), (0, K - width)), constant_values=np.inf)
            kept_sides.append(kept[:, :K].T)
            dist_sides.append(d)
            exhausted = (pp + sign * width < 0) | (pp + sign * width >= n)
            settled &= (keep.sum(axis=1) >= K) | exhausted
        D = _kth_of_two_sorted(kept_sides[0], kept_sides[1], K)
        r = _prev_float(D)
        total = 1 + sum((d <= r[:, None]).sum(axis=1) for d in dist_sides)  # x_i itself and the window
        zero = np.flatnonzero(settled & (D == 0))
        if zero.size:  # r == 0: the duplicates of x_i, at any distance
            total[zero] = _equal_runs_at(s, bb[zero], pp[zero])
        m_out[todo[settled]] = total[settled]
        todo = todo[~settled]
        width *= 2
    return m_out


_KERNEL = {"use": os.environ.get("CSG_MI_KERNEL", "auto")}


def _compiled_kernel():
    """The numba kernel (``_mi_kernel``), or None where numba is missing or ``CSG_MI_KERNEL=numpy``
    asks for the whole-array numpy path (the same sums; tests run both)."""
    if _KERNEL["use"] == "numpy":
        return None
    if "module" not in _KERNEL:
        try:
            from . import _mi_kernel
        except ImportError:  # numba is not installed (or not for this Python): the numpy path
            _mi_kernel = None
        _KERNEL["module"] = _mi_kernel
    return _KERNEL["module"]


def _block_mi(Xb: np.ndarray, y: np.ndarray, lay: _Layout, order0=None) -> np.ndarray:
    """MI (B, C) for the filters in rows of ``Xb`` (B, n); ``order0``: an argsort of its rows
    before the noise (``_resort_rows``), or None."""
    B, n = Xb.shape
    K, C, psi = lay.K, lay.C, lay.psi
    pad = 2 * K + 2  # the neighbour walk never leaves a row's padding
    # Value-sorted rows padded with -inf / +inf (class -1): distances past a row's ends are inf.
    sp = np.empty((B, n + 2 * pad))
    sp[:, :pad], sp[:, pad + n:] = -np.inf, np.inf
    s = sp[:, pad:pad + n]
    order = _sort_rows(Xb, s) if order0 is None else _resort_rows(Xb, order0, s)
    ysp = np.full((B, n + 2 * pad), -1, dtype=y.dtype)
    ys = ysp[:, pad:pad + n]
    ys[...] = y[order]
    del order
    kernel = _compiled_kernel()
    if kernel is not None:
        SP, SQ = kernel.class_sums(s, ys, K, lay.counts.astype(np.int64), lay.regular, psi)
    else:
        row_start = (np.arange(B) * (n + 2 * pad) + pad)[:, None]  # flat index of each row's first sample
        flat, cls_flat = sp.ravel(), ysp.ravel()
        SP = _positive_sums(s, flat, row_start, ys, lay)
        SQ = (_negative_sums(s, flat, cls_flat, row_start, ys, lay) if lay.regular.any()
              else np.zeros((B, C)))

    nP = lay.counts.astype(np.int64)
    nQ = n - nP
    keepP, keepQ = nP >= 2, nQ >= 2
    n_s = np.where(keepP, nP, 0) + np.where(keepQ, nQ, 0)
    # Terms of a dropped label (fewer than 2 members) are 0; clip to keep psi finite there.
    kP = np.clip(np.minimum(K, nP - 1), 1, None)
    kQ = np.clip(np.minimum(K, nQ - 1), 1, None)
    rest = (np.where(keepP, nP * (digamma(kP) - psi[np.maximum(nP, 1)]), 0.0)
            + np.where(keepQ, nQ * (digamma(kQ) - psi[np.maximum(nQ, 1)]), 0.0))
    mi = psi[n_s] + (rest - np.where(keepP, SP, 0.0) - np.where(keepQ, SQ, 0.0)) / np.maximum(n_s, 1)
    for c in np.flatnonzero(lay.special):  # rare: a class of one member, or one that is nearly everything
        mi[:, c] = _binary_mi(Xb, y == c, K, psi)
    return np.maximum(mi, 0.0)


def _available_cores() -> int:
    try:  # the cores this process may run on (a container or taskset may allow fewer than cpu_count)
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def _resolve_jobs(n_jobs, size: int) -> int:
    """Threads for ``size`` samples x filters: None = every available core from ``_PARALLEL_MIN`` on."""
    if n_jobs is None:
        return _available_cores() if size >= _PARALLEL_MIN else 1
    if not isinstance(n_jobs, numbers.Integral) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise CsgError(f"n_jobs must be a non-zero integer or None, got {n_jobs!r}")
    return int(n_jobs) if n_jobs > 0 else max(1, _available_cores() + 1 + int(n_jobs))


def _spans(F: int, n: int, chunk_size, n_jobs: int) -> list:
    """Filter blocks ``(f0, f1)``: ``chunk_size`` filters each, or near ``_BLOCK_ELEMENTS`` samples x
    filters; with threads, a multiple of ``n_jobs`` blocks whose sizes differ by at most one filter
    (equal work per thread)."""
    if chunk_size:
        return [(f0, min(F, f0 + chunk_size)) for f0 in range(0, F, chunk_size)]
    n_blocks = -(-F * n // _BLOCK_ELEMENTS)
    if n_jobs > 1:
        n_blocks = -(-max(n_blocks, n_jobs) // n_jobs) * n_jobs
    n_blocks = max(1, min(n_blocks, F))
    bounds = [F * i // n_blocks for i in range(n_blocks + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n_blocks)]


def _run_blocks(spans, n_jobs, work, meanwhile=None) -> None:
    """``work(f0, f1)`` for every span on ``n_jobs`` worker threads, ``meanwhile()`` on this one.

    Worker threads even for ``n_jobs=1``: a worker's malloc arena keeps the memory of a freed
    block's temporaries for the next block, while the main thread's heap is trimmed and faulted
    in again on every block (at 10,000 x 64 about 45,000 page faults and 70-120 ms of system time
    per call, measured). numpy releases the GIL inside its kernels, so the threads overlap.
    """
    with ThreadPoolExecutor(max(1, min(n_jobs, len(spans)))) as pool:
        futures = [pool.submit(work, *span) for span in spans]
        if meanwhile is not None:
            meanwhile()
        for f in futures:
            f.result()  # re-raises a worker's exception


def _compact_labels(y: np.ndarray, C: int) -> np.ndarray:
    # Small class codes: the stable label sort becomes a radix sort, the gathers lighter.
    return y.astype(np.int8 if C <= 127 else np.int16 if C <= 32767 else np.int64)


def _mi_from_prepared(X, y, num_classes, n_neighbors=3, chunk_size=None, n_jobs=1) -> np.ndarray:
    """MI matrix (K, C) from the already scaled and noised ``X`` (n, K) float64."""
    n, F = X.shape
    lay = _layout(y, num_classes, n_neighbors)
    y = _compact_labels(y, num_classes)
    out = np.empty((F, num_classes))

    def work(f0, f1):
        out[f0:f1] = _block_mi(np.ascontiguousarray(X[:, f0:f1].T), y, lay)

    _run_blocks(_spans(F, n, chunk_size, n_jobs), n_jobs, work)
    return out


def _scaled_block(x: np.ndarray, f0: int, f1: int):
    """Filters ``f0:f1`` of ``x`` as rows (B, n) float64, scaled as ``prepare_features`` scales them,
    and their noise amplitudes (B,).

    The per-filter reductions run along contiguous rows, as scikit-learn's run along the columns
    of its Fortran-ordered copy: the same summation order, the same bits (tested).
    """
    Xb = np.array(x[:, f0:f1].T, dtype=np.float64, order="C")
    std = np.nanstd(Xb, axis=1)
    std[std < 10 * np.finfo(np.float64).eps] = 1.0
    Xb /= std[:, None]
    return Xb, _NOISE * np.maximum(1, np.mean(np.abs(Xb), axis=1))


def _mi_matrix(x, y, C, K, random_state, chunk_size, n_jobs) -> np.ndarray:
    """Scaling, noise and the MI of every block, with the per-filter work inside the blocks.

    The noise is one ``RandomState`` stream over the whole (n, F) array, so it is drawn once,
    here, while the workers already scale their first blocks; everything else (the scaling, the
    noise's addition, the sorts, the counts) is per block, on the threads.
    """
    n, F = x.shape
    lay = _layout(y, C, K)
    y8 = _compact_labels(y, C)
    spans = _spans(F, n, chunk_size, n_jobs)
    out = np.empty((F, C))
    noise, pre = {}, {}
    drawn = threading.Event()

    def presort(f0, f1):  # while the noise is drawn: scale the block and sort it without the noise
        if not drawn.is_set():
            Xb, amp = _scaled_block(x, f0, f1)
            pre[f0] = Xb, amp, _sort_rows(Xb, np.empty_like(Xb))

    def work(f0, f1, waits):
        for w in waits:  # the block's presort, which another worker may still be running
            w.result()
        Xb, amp, order0 = pre.pop(f0, None) or (*_scaled_block(x, f0, f1), None)
        drawn.wait()
        if "z" not in noise:
            raise CsgError("the noise draw failed")
        Xb += amp[:, None] * noise["z"][:, f0:f1].T  # elementwise: the bits of prepare_features's X
        out[f0:f1] = _block_mi(Xb, y8, lay, order0)

    def draw():  # the legacy generator releases the GIL while it fills the array
        try:
            noise["z"] = _check_random_state(random_state).standard_normal(size=(n, F))
        finally:
            drawn.set()

    # Presorts are queued first (FIFO), so a worker never waits for one that is not yet running;
    # they are bounded in memory (_PRESORT_ELEMENTS) and skipped once the noise is there.
    n_pre = max(n_jobs, _PRESORT_ELEMENTS // max(1, n * (spans[0][1] - spans[0][0])))
    with ThreadPoolExecutor(max(1, min(n_jobs, len(spans)))) as pool:
        pres = [pool.submit(presort, *span) for span in spans[:n_pre]]
        futures = [pool.submit(work, *span, pres[i:i + 1]) for i, span in enumerate(spans)]
        draw()
        for f in futures:
            f.result()  # re-raises a worker's exception
    return out


def mutual_information_matrix(features, labels, n_neighbors: int = 3, random_state=0,
                              num_classes: int | None = None, chunk_size: int | None = None,
                              n_jobs: int | None = None) -> np.ndarray:
    """Filter-class mutual information ``M`` (K x C, nats): ``M[k, c] = MI(a_k ; 1[y = c])``.

    Equals, to rounding, ``sklearn.feature_selection.mutual_info_classif(features,
    labels == c, n_neighbors=n_neighbors, random_state=random_state)`` for every
    class ``c`` (Ross 2014 k-NN estimator; see the module docstring for the
    steps), computed for all classes at once.

    Args:
        features: N x K pooled activations (numpy array or tensor, finite, real).
        labels: N integer class indices in ``[0, num_classes)``.
        n_neighbors: ``k`` of the estimator (scikit-learn's default 3).
        random_state: seed of the tiny noise (int, None or a RandomState), as in scikit-learn.
        num_classes: C; classes absent from ``labels`` get the value scikit-learn
            gives a constant target (0). Default ``labels.max() + 1``.
        chunk_size: filters per block (memory bound); default keeps a block near
            65,536 samples x filters (with threads: a multiple of n_jobs equal blocks).
        n_jobs: threads over blocks of filters (1: one, -1: all available cores; None:
            all available cores from 2^18 samples x filters on, one below). The result
            does not depend on it, bit for bit. More threads help only on idle cores.
    """
    x, y, C, K = _validate(features, labels, n_neighbors, num_classes, chunk_size)
    return _mi_matrix(x, y, C, K, random_state, chunk_size, _resolve_jobs(n_jobs, x.size))
