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

In one dimension the neighbours are order statistics: each column is sorted
once; the k-th same-label distance comes from a window of ``k`` sorted
neighbours on each side; counts come from ``searchsorted``. For the label
``y == c`` the k-th distance inside class ``c`` comes from the class-sorted
order (all classes at once). For the label ``y != c`` it equals the k-th
distance among *all* samples unless a member of ``c`` is among a sample's
``k`` nearest neighbours, so the per-class sums are one total minus the
class's own samples plus a correction for those few (sample, class) pairs.

Floating point is reproduced exactly: scikit-learn's KD-tree distance in 1-D
is ``|fl(x_i - x_j)|``; its brute-force search (used when a label has at most
``2 * n_neighbors + 1`` members) uses ``sqrt(max(0, (x_i^2 - 2 x_i x_j) +
x_j^2))``, and that is what is used for such labels here.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
from scipy.special import digamma

from ..errors import CsgError

__all__ = ["mutual_information_matrix", "prepare_features"]

_NOISE = 1e-10            # scikit-learn's noise amplitude (Kraskov et al.)
_BLOCK_ELEMENTS = 1 << 19  # samples x filters per block: bounds the working memory
_PAIR_CHUNK = 1 << 20      # (sample, class) correction pairs handled at once
_NOISE_ROWS = 4096         # rows of noise drawn at a time (same stream as one draw)


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
    # The same numpy calls on the same memory layouts as scikit-learn, so that the
    # reductions (whose summation order depends on the layout) give the same bits.
    X = x.astype(np.float64, copy=True)
    cols = np.ones(k, dtype=bool)
    Xc = X[:, cols]
    std = np.nanstd(Xc, axis=0)
    std[std < 10 * np.finfo(np.float64).eps] = 1.0
    Xc /= std
    X[:, cols] = Xc
    del Xc
    amp = _NOISE * np.maximum(1, np.mean(np.abs(X[:, cols]), axis=0))
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
    for t in range(1, k):
        best = np.minimum(best, np.maximum(left[t - 1], right[k - t - 1]))
    return best


def _side_distances(vals, width, lo=None, hi=None):
    """Distances to the ``width`` sorted neighbours on each side: ``left``, ``right`` (width+1, B, N).

    ``left[t-1, b, p] = vals[b, p] - vals[b, p-t]`` and ``right[t-1, b, p] =
    vals[b, p+t] - vals[b, p]`` (``fl(x_i - x_j)``, ascending in ``t``); ``inf``
    past the row or past the segment ``[lo[p], hi[p])``, and in the extra last row.
    """
    B, n = vals.shape
    left = np.full((width + 1, B, n), np.inf)
    right = np.full((width + 1, B, n), np.inf)
    for t in range(1, min(width, n - 1) + 1):  # shifted slices: no gathers
        diff = vals[:, t:] - vals[:, :-t]
        left[t - 1, :, t:] = diff
        right[t - 1, :, :-t] = diff
    if lo is not None:
        pos = np.arange(n)
        offs = np.arange(1, width + 1)[:, None]
        left[:-1][np.broadcast_to((pos - offs < lo)[:, None, :], (width, B, n))] = np.inf
        right[:-1][np.broadcast_to((pos + offs >= hi)[:, None, :], (width, B, n))] = np.inf
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
    other member of the sample's segment. Segments of one member get NaN.
    """
    K = n_neighbors
    lo = seg_lo[seg_id]
    ln = seg_len[seg_id]
    hi = lo + ln
    out = np.full(vals.shape, np.nan)
    tree = ln > 2 * K + 1  # scikit-learn's KD-tree path: exact |x_i - x_j|
    if tree.any():
        left, right = _side_distances(vals, K, lo, hi)
        kth = _kth_of_two_sorted(left, right, K)
        out[:, tree] = kth[:, tree]
    small = (ln >= 2) & ~tree  # brute-force path
    if small.any():
        pos = np.flatnonzero(small)
        out[:, pos] = _brute_kth(vals, pos, lo[pos], ln[pos], np.minimum(K, ln[pos] - 1), 2 * K + 1)
    return np.nextafter(out, 0)


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
        r = _segment_radius(v, np.zeros(m, dtype=np.int64), np.zeros(1, np.int64), np.array([m]),
                            n_neighbors)
        cnt = _count_within(kept, v, r)
        acc += m * (digamma(k) - psi[m]) - psi[cnt].sum(axis=1)
    return np.maximum(0.0, psi[n_s] + acc / n_s)


# ----------------------------------------------------------------------------------------------
# All classes of a block of filters


def _negative_radius_excluding(s, ys, eqrun, b, p, c, K):
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
        sides = []
        settled = np.ones(todo.size, dtype=bool)
        total = np.ones(todo.size, dtype=np.int64)  # the sample itself
        dist_sides = []
        for sign in (-1, 1):
            q = pp[:, None] + sign * offs
            ok = (q >= 0) & (q < n)
            qc = np.clip(q, 0, n - 1)
            d = (xi - s[bb[:, None], qc]) if sign < 0 else (s[bb[:, None], qc] - xi)
            d[~ok] = np.inf
            keep = ok & (ys[bb[:, None], qc] != cc[:, None])
            cum = np.cumsum(keep, axis=1)
            found = cum[:, -1]
            kth = np.full((todo.size, K), np.inf)
            for t in range(1, K + 1):
                at = np.argmax(cum >= t, axis=1)
                has = found >= t
                kth[has, t - 1] = d[has, at[has]]
            exhausted = (pp + sign * width < 0) | (pp + sign * width >= n)
            settled &= (found >= K) | exhausted
            sides.append(kth)
            dist_sides.append(d)
        D = _kth_of_two_sorted(sides[0].T, sides[1].T, K)
        r = np.nextafter(D, 0)
        for d in dist_sides:
            total += (d <= r[:, None]).sum(axis=1)
        total = np.where(D > 0, total, eqrun[bb, pp])  # r == 0: the duplicates of x_i, any distance
        m_out[todo[settled]] = total[settled]
        todo = todo[~settled]
        width *= 2
    return m_out


def _nearest_neighbours(s, ys, width):
    """The ``width`` nearest other samples of each sample, nearest first: (width, B, n) each.

    A merge of the ``width`` sorted neighbours on each side, which holds the
    true ``width`` nearest. Returns distances and classes (``inf`` and -1 past
    the row's ends).
    """
    B, n = s.shape
    left, right = _side_distances(s, width)
    il = np.zeros((1, B, n), dtype=np.int64)
    ir = np.zeros((1, B, n), dtype=np.int64)
    pos = np.arange(n) + (np.arange(B) * n)[:, None]  # flat index of each sample
    ysf = ys.ravel()
    d_nb = np.empty((width, B, n))
    c_nb = np.empty((width, B, n), dtype=ys.dtype)
    for j in range(width):
        L = np.take_along_axis(left, il, axis=0)[0]
        R = np.take_along_axis(right, ir, axis=0)[0]
        take_left = L <= R
        d_nb[j] = np.where(take_left, L, R)
        at = np.where(take_left, pos - il[0] - 1, pos + ir[0] + 1)
        c_nb[j] = np.where(np.isfinite(d_nb[j]), ysf[np.clip(at, 0, ysf.size - 1)], -1)
        il[0] += take_left
        ir[0] += ~take_left
    return d_nb, c_nb


def _count_in_list(d_nb, D, eqrun):
    """``m = #{j : |x_i - x_j| <= nextafter(D, 0)}`` (self included) from the nearest list.

    For ``D > 0`` every such sample is nearer than ``D``, hence in the list when
    ``D`` is one of its entries; for ``D == 0`` it is the run of equal values.
    """
    r = np.nextafter(D, 0)
    m = 1 + (d_nb <= r).sum(axis=0)
    return np.where(D > 0, m, eqrun)


def _row_class_sum(w, cls, C):
    """``out[b, c] = sum_j w[b, j] [cls[b, j] == c]`` for (B, n) arrays."""
    B = w.shape[0]
    key = (np.arange(B)[:, None] * C + cls).ravel()
    return np.bincount(key, weights=w.ravel(), minlength=B * C).reshape(B, C)


def _block_mi(Xb, y, C, counts, seg_lo, lab_sorted, regular, special, K, psi):
    """MI (B, C) for the filters in rows of ``Xb`` (B, n)."""
    B, n = Xb.shape
    order = np.argsort(Xb, axis=1)  # the order among equal values does not matter
    s = np.take_along_axis(Xb, order, axis=1)
    ys = y[order]
    eqrun = _equal_run_length(s)

    # y == c: k-th neighbour inside the class, from the class-major value-minor
    # order (a stable sort of the labels of the value-sorted samples).
    small = np.int16 if C < 2**15 else np.int64  # 16-bit keys: numpy's radix sort
    perm = np.argsort(ys.astype(small), axis=1, kind="stable")
    cs = np.take_along_axis(s, perm, axis=1)
    r_cs = _segment_radius(cs, lab_sorted, seg_lo, counts, K)
    r_cs[:, counts[lab_sorted] < 2] = 0.0
    r_pos = np.empty_like(r_cs)
    np.put_along_axis(r_pos, perm, r_cs, axis=1)  # back to value order: sorted queries are faster
    m_pos = _count_within(s, s, r_pos)
    w_pos = np.where(counts[ys] >= 2, psi[m_pos], 0.0)
    SP = _row_class_sum(w_pos, ys, C)

    # y != c for regular classes: every other sample keeps its all-sample radius
    # unless a member of c is among its k nearest neighbours; then the radius is
    # the k-th nearest non-member, read from the same sorted neighbour list.
    SQ = np.zeros((B, C))
    if regular.any():
        width = 2 * K + 1          # neighbours per side: room for K + 1 skipped members
        d_nb, c_nb = _nearest_neighbours(s, ys, width)
        D = d_nb[K - 1]
        m_all = _count_in_list(d_nb, D, eqrun)
        w_all = psi[m_all]
        T = w_all.sum(axis=1)
        U = _row_class_sum(w_all, ys, C)
        delta = np.zeros(B * C)
        row_key = (np.arange(B) * C)[:, None]
        fb_b, fb_p, fb_c = [], [], []
        for t in range(K):          # the class of the t-th nearest neighbour, once per sample
            c_t = c_nb[t]
            hit = (c_t != ys) & regular[c_t]
            for u in range(t):
                hit &= c_nb[u] != c_t
            # D_t = distance of the K-th list entry outside class c_t.
            seen = np.zeros(c_t.shape, dtype=np.int16)
            D_t = np.full(c_t.shape, np.inf)
            for j in range(width):
                other = (c_nb[j] != c_t) & (c_nb[j] >= 0)
                seen += other
                D_t = np.where(other & (seen == K), d_nb[j], D_t)
            found = seen >= K
            ok = hit & found
            m_t = _count_in_list(d_nb, np.where(ok, D_t, D), eqrun)
            delta += np.bincount((row_key + c_t)[ok], weights=(psi[m_t] - w_all)[ok], minlength=B * C)
            far = np.nonzero(hit & ~found)  # members crowd the list: scan further for these
            fb_b.append(far[0]); fb_p.append(far[1]); fb_c.append(c_t[far])
        hb, hp, hc = (np.concatenate(a) for a in (fb_b, fb_p, fb_c))
        for start in range(0, hb.size, _PAIR_CHUNK):
            sl = slice(start, start + _PAIR_CHUNK)
            m_neg = _negative_radius_excluding(s, ys, eqrun, hb[sl], hp[sl], hc[sl], K)
            delta += np.bincount(hb[sl] * C + hc[sl], weights=psi[m_neg] - w_all[hb[sl], hp[sl]],
                                 minlength=B * C)
        SQ = T[:, None] - U + delta.reshape(B, C)

    nP = counts.astype(np.int64)
    nQ = n - nP
    keepP, keepQ = nP >= 2, nQ >= 2
    n_s = np.where(keepP, nP, 0) + np.where(keepQ, nQ, 0)
    # Terms of a dropped label (fewer than 2 members) are 0; clip to keep psi finite there.
    kP = np.clip(np.minimum(K, nP - 1), 1, None)
    kQ = np.clip(np.minimum(K, nQ - 1), 1, None)
    rest = (np.where(keepP, nP * (digamma(kP) - psi[np.maximum(nP, 1)]), 0.0)
            + np.where(keepQ, nQ * (digamma(kQ) - psi[np.maximum(nQ, 1)]), 0.0))
    mi = psi[n_s] + (rest - np.where(keepP, SP, 0.0) - np.where(keepQ, SQ, 0.0)) / np.maximum(n_s, 1)
    for c in np.flatnonzero(special):  # rare: a class of one member, or one that is nearly everything
        mi[:, c] = _binary_mi(Xb, y == c, K, psi)
    return np.maximum(mi, 0.0)


def _mi_from_prepared(X, y, num_classes, n_neighbors=3, chunk_size=None) -> np.ndarray:
    """MI matrix (K, C) from the already scaled and noised ``X`` (n, K) float64."""
    n, F = X.shape
    K = n_neighbors
    C = num_classes
    counts = np.bincount(y, minlength=C)
    special = (counts == 1) | (n - counts <= 2 * K + 1)
    regular = ~special
    seg_lo = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    lab_sorted = np.repeat(np.arange(C), counts)
    psi = digamma(np.arange(n + 1, dtype=np.float64))
    block = chunk_size or max(1, _BLOCK_ELEMENTS // n)
    out = np.empty((F, C))
    for f0 in range(0, F, block):  # blocks of filters bound the memory
        f1 = min(F, f0 + block)
        Xb = np.ascontiguousarray(X[:, f0:f1].T)
        out[f0:f1] = _block_mi(Xb, y, C, counts, seg_lo, lab_sorted, regular, special, K, psi)
    return out


def mutual_information_matrix(features, labels, n_neighbors: int = 3, random_state=0,
                              num_classes: int | None = None, chunk_size: int | None = None) -> np.ndarray:
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
            half a million samples x filters.
    """
    x, y, C, K = _validate(features, labels, n_neighbors, num_classes, chunk_size)
    X = prepare_features(x, random_state)
    return _mi_from_prepared(X, y, C, K, chunk_size)
