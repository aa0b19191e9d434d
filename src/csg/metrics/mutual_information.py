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
once (rows padded with -inf / +inf so distances past a row's ends are inf).
For the label ``y == c`` the k-th distance inside class ``c`` comes from the
class-sorted order (a stable sort of the labels of the value-sorted samples,
all classes at once) and a window of ``k`` class neighbours on each side;
``m_i`` then lies between known positions: on each side, between the last
class member within the radius and the first one beyond it, and a short
search in that gap (probe next to the far member, interpolate, bisect) finds
the boundary. For the label ``y != c`` the k-th distance equals the k-th
distance among *all* samples unless a member of ``c`` is among a sample's
``k`` nearest neighbours, so the per-class sums are one total minus the
class's own samples plus a correction for those (sample, class) pairs, read
from each sample's ``2k + 1`` nearest neighbours (merged from the two sides):
the radius is the ``k``-th entry outside ``c``, at index ``p``, and
``m = 1 + #{entries nearer than it}`` (``1 + p`` without ties); pairs whose
list holds too many members of ``c`` scan further. Filters are processed in
blocks (bounded memory), optionally on several threads (``n_jobs``).

Floating point is reproduced exactly: scikit-learn's KD-tree distance in 1-D
is ``|fl(x_i - x_j)|``; its brute-force search (used when a label has at most
``2 * n_neighbors + 1`` members) uses ``sqrt(max(0, (x_i^2 - 2 x_i x_j) +
x_j^2))``, and that is what is used for such labels here.
"""
from __future__ import annotations

import numbers
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.special import digamma

from ..core.errors import CsgError

__all__ = ["mutual_information_matrix", "prepare_features"]

_NOISE = 1e-10            # scikit-learn's noise amplitude (Kraskov et al.)
_BLOCK_ELEMENTS = 1 << 17  # samples x filters per block: bounds the working memory, stays in cache
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


def _boundary(flat, x, r, inside, outside, step):
    """First position from ``inside`` in direction ``step`` (+1 or -1) whose distance to ``x`` exceeds ``r``.

    A search along a sorted row of ``flat``: ``inside`` is within ``r`` of
    ``x`` and ``outside`` beyond it (a sample or the +-inf padding). The
    distance is the KD-tree's ``|fl(x_i - x_j)|``, exactly. Probes: next to
    ``outside`` (when ``outside`` is the neighbour that sets the radius, as on
    one side of most samples, that settles it), then where linear
    interpolation of the values puts the boundary, then next to that probe,
    then bisection.
    """
    def dist(q, xq):
        return flat[q] - xq if step > 0 else xq - flat[q]

    out = None
    idx, a, b, xx, rr = None, inside, outside, x, r  # idx None: all queries still in the arrays
    mid = b - step
    probe = 0
    while a.size:
        beyond = dist(mid, xx) > rr
        # b = beyond ? mid : b, a = beyond ? a : mid (arithmetic: np.where is slow on random masks)
        shift = (mid - a) * beyond
        b = a + shift + (b - a) * ~beyond
        a = mid - shift
        open_ = np.abs(b - a) > 1
        n_open = np.count_nonzero(open_)
        if n_open < open_.size // 2 or n_open == 0:  # compact now and then (closed searches stay put)
            if idx is None:
                out, idx = b, np.arange(b.size)
            else:
                out[idx] = b
            keep = np.flatnonzero(open_)
            idx, a, b, xx, rr, beyond = (v.take(keep) for v in (idx, a, b, xx, rr, beyond))
        probe += 1
        if probe == 1:  # interpolate: the distance grows from <= r at a to > r at b
            da, db = dist(a, xx), dist(b, xx)
            length = np.abs(b - a)
            frac = (rr - da) / (db - da)  # 0 where b is the padding (inf)
            mid = a + step * np.clip((frac * length).astype(np.int64), 1, length - 1)
        elif probe == 2:  # next to the last probe, on the side the boundary lies
            mid = a + step + (b - a - 2 * step) * beyond
        else:
            mid = (a + b) >> 1
    if idx is None:
        return b
    out[idx] = b
    return out


def _nearest_neighbours(flat, cls_flat, x, pos, width):
    """The ``width`` nearest other samples of each sample, nearest first: (width, N) each.

    A merge of the sorted neighbours on the two sides, walking outwards from
    ``pos`` (flat indices into rows padded with ``-inf`` / ``+inf`` of class -1).
    Returns distances and classes; equal distances may come in either order
    (only the multiset of distances below a radius matters downstream).
    """
    N = x.size
    d_nb = np.empty((width, N))
    c_nb = np.empty((width, N), dtype=cls_flat.dtype)
    q_left, q_right = pos - 1, pos + 1
    left, right = x - flat[q_left], flat[q_right] - x
    for j in range(width):
        take_right = left > right
        np.minimum(left, right, out=d_nb[j])
        q = q_left + (q_right - q_left) * take_right  # the sample just listed (arithmetic, not np.where)
        c_nb[j] = cls_flat[q]
        if j + 1 < width:  # step past it on its side; only that side's distance changes
            q_left = q_left - ~take_right
            q_right = q_right + take_right
            v = flat[q + 2 * take_right - 1]
            # x - v <= 0 <= left when the right side moved (and v - x <= 0 <= right the other way)
            left = np.maximum(left, x - v)
            right = np.maximum(right, v - x)
    return d_nb, c_nb


def _positive_sums(s, flat, row_start, ys, C, counts, seg_lo, lab_sorted, K, psi):
    """``SP[b, c] = sum over members i of c of psi(m_i)`` for the label ``y == c`` (B, C).

    The k-th neighbour inside the class comes from the class-major value-minor
    order (a stable sort of the labels of the value-sorted samples, all classes
    at once). ``m_i`` counts all samples within the radius: on each side the
    boundary lies between the last member inside the radius and the first one
    beyond it (or the row's end), found by a short search in that gap.
    """
    B, n = s.shape
    perm = np.argsort(ys, axis=1, kind="stable")  # small-integer keys: numpy's radix sort
    cs = np.take_along_axis(s, perm, axis=1)
    r, left, right = _segment_radius(cs, lab_sorted, seg_lo, counts, K)
    valid = counts[lab_sorted] >= 2
    r = np.where(valid, r, 0.0)  # NaN for one-member classes: their terms are dropped
    lo = seg_lo[lab_sorted]
    hi = lo + counts[lab_sorted]
    j = np.arange(n)
    rows = np.arange(B)[:, None] * n

    perm_flat = perm.ravel()
    all_valid = bool(valid.all())

    def bracket(side, step, end, row_edge):
        # the a members of this side within r come first; the member after them is beyond r
        a = sum(d <= r for d in side)
        at = rows + j + step * a
        inner = perm_flat[at]
        nxt = j + step * (a + 1)
        exists = (a < K) & ((nxt < end) if step > 0 else (nxt >= end))
        # no member beyond r on this side: search up to the row's end (arithmetic blend, not np.where)
        outer = row_edge + (perm_flat[np.clip(at + step, 0, perm_flat.size - 1)] - row_edge) * exists
        if not all_valid:  # one-member classes: nothing to search, their terms are dropped
            outer = np.where(valid, outer, inner + step)
        return inner, outer

    inner_r, outer_r = bracket(right, 1, hi, n)
    inner_l, outer_l = bracket(left, -1, lo, -1)
    x, r = cs.ravel(), r.ravel()
    q_right = _boundary(flat, x, r, (inner_r + row_start).ravel(), (outer_r + row_start).ravel(), 1)
    q_left = _boundary(flat, x, r, (inner_l + row_start).ravel(), (outer_l + row_start).ravel(), -1)
    m = (q_right - q_left - 1).reshape(B, n)  # (q_right - p - 1) + (p - q_left - 1) + 1
    w = np.where(valid, psi[m], 0.0)
    SP = np.zeros((B, C))
    present = counts > 0
    SP[:, present] = np.add.reduceat(w, seg_lo[present], axis=1)
    return SP


def _negative_sums(s, flat, cls_flat, row_start, ys, C, regular, K, psi):
    """``SQ[b, c] = sum over non-members i of c of psi(m_i)`` for the label ``y != c``, regular ``c``.

    Every sample keeps its all-sample radius (k-th nearest of all) unless a
    member of ``c`` is among its k nearest neighbours; then the radius is the
    distance of the k-th non-member in its nearest-first neighbour list, at
    index ``p_c``, and ``m = 1 + #{list entries nearer than it}``
    (``= 1 + p_c`` without ties). So ``SQ = total - own class + corrections``.
    """
    B, n = s.shape
    N = B * n
    W = 2 * K + 1  # neighbours listed: room for K + 1 skipped members
    x = s.ravel()
    ysf = ys.ravel()
    d_nb, c_nb = _nearest_neighbours(flat, cls_flat, x, (row_start + np.arange(n)).ravel(), W)
    eqrun = None
    zeros = d_nb[0] == 0
    if zeros.any():  # a radius of 0 counts the run of equal values
        eqrun = _equal_run_length(s).ravel()
        n_zero = (d_nb == 0).sum(axis=0)
    # tie_start[j]: index of the first list entry equal to entry j, so #{entries < d_j} = tie_start[j]
    ties = d_nb[1:] == d_nb[:-1]
    tie_start = None
    if ties.any():
        tie_start = np.empty((W, N), dtype=np.int8)
        tie_start[0] = 0
        for j in range(1, W):
            tie_start[j] = np.where(ties[j - 1], tie_start[j - 1], j)
        tie_start = tie_start.ravel()
    flat_ix = np.arange(N)

    def count(p, ix):
        """``m`` (self included) for the radius set by list entry ``p`` of the samples ``ix``."""
        m = 1 + (p if tie_start is None else tie_start[p.astype(np.intp) * N + ix]).astype(np.int64)
        return m if eqrun is None else np.where(p < n_zero[ix], eqrun[ix], m)

    w_all = psi[count(np.full(N, K - 1, dtype=np.int8), flat_ix)]
    row = np.repeat(np.arange(B), n)
    T = w_all.reshape(B, n).sum(axis=1)
    U = np.bincount(row * C + ysf, weights=w_all, minlength=B * C).reshape(B, C)
    regular_ext = np.append(regular, False)  # class -1 (padding) is not regular
    keys, vals, fb_b, fb_p, fb_c = [], [], [], [], []
    for t in range(K):  # the class of the t-th nearest neighbour, once per sample
        c_t = c_nb[t]
        hit = (c_t != ysf) & (c_t >= 0)
        if not regular.all():
            hit &= regular_ext[c_t]
        for u in range(t):
            hit &= c_nb[u] != c_t
        # p = index of the K-th list entry outside class c_t: #{j : fewer than K non-members up to j}
        seen = np.zeros(N, dtype=np.int8)
        p = np.zeros(N, dtype=np.int8)
        for j in range(W):
            seen += c_nb[j] != c_t
            p += seen < K
        found = seen >= K
        ok = np.flatnonzero(hit & found)
        keys.append(row[ok] * C + c_t[ok])
        vals.append(psi[count(p[ok], ok)] - w_all[ok])
        far = np.flatnonzero(hit & ~found)  # members crowd the list: scan further for these
        fb_b.append(far // n)
        fb_p.append(far % n)
        fb_c.append(c_t[far])
    delta = np.bincount(np.concatenate(keys), weights=np.concatenate(vals), minlength=B * C)
    hb, hp, hc = (np.concatenate(a) for a in (fb_b, fb_p, fb_c))
    if hb.size:
        if eqrun is None:
            eqrun = _equal_run_length(s).ravel()
        eq2 = eqrun.reshape(B, n)
        for start in range(0, hb.size, _PAIR_CHUNK):
            sl = slice(start, start + _PAIR_CHUNK)
            m_neg = _negative_radius_excluding(s, ys, eq2, hb[sl], hp[sl], hc[sl], K)
            delta += np.bincount(hb[sl] * C + hc[sl], weights=psi[m_neg] - w_all[hb[sl] * n + hp[sl]],
                                 minlength=B * C)
    return T[:, None] - U + delta.reshape(B, C)


def _block_mi(Xb, y, C, counts, seg_lo, lab_sorted, regular, special, K, psi):
    """MI (B, C) for the filters in rows of ``Xb`` (B, n)."""
    B, n = Xb.shape
    pad = 2 * K + 2  # the neighbour walk never leaves a row's padding
    order = np.argsort(Xb, axis=1)  # the order among equal values does not matter
    # Value-sorted rows padded with -inf / +inf (class -1): distances past a row's ends are inf.
    sp = np.empty((B, n + 2 * pad))
    sp[:, :pad], sp[:, pad + n:] = -np.inf, np.inf
    s = sp[:, pad:pad + n]
    s[...] = np.take_along_axis(Xb, order, axis=1)
    ysp = np.full((B, n + 2 * pad), -1, dtype=y.dtype)
    ys = ysp[:, pad:pad + n]
    ys[...] = y[order]
    row_start = (np.arange(B) * (n + 2 * pad) + pad)[:, None]  # flat index of each row's first sample
    flat, cls_flat = sp.ravel(), ysp.ravel()

    SP = _positive_sums(s, flat, row_start, ys, C, counts, seg_lo, lab_sorted, K, psi)
    SQ = (_negative_sums(s, flat, cls_flat, row_start, ys, C, regular, K, psi) if regular.any()
          else np.zeros((B, C)))

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


def _resolve_jobs(n_jobs) -> int:
    if n_jobs is None:
        return 1
    if not isinstance(n_jobs, numbers.Integral) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise CsgError(f"n_jobs must be a non-zero integer or None, got {n_jobs!r}")
    cpus = os.cpu_count() or 1
    return int(n_jobs) if n_jobs > 0 else max(1, cpus + 1 + int(n_jobs))


def _mi_from_prepared(X, y, num_classes, n_neighbors=3, chunk_size=None, n_jobs=1) -> np.ndarray:
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
    # Small class codes: the stable label sort becomes a radix sort, the gathers lighter.
    y = y.astype(np.int8 if C <= 127 else np.int16 if C <= 32767 else np.int64)
    block = chunk_size or max(1, _BLOCK_ELEMENTS // n)
    n_blocks = -(-F // block)
    if n_jobs > 1 and chunk_size is None:  # equal blocks, a multiple of the workers
        n_blocks = -(-max(n_blocks, n_jobs) // n_jobs) * n_jobs
        block = -(-F // n_blocks)
    spans = [(f0, min(F, f0 + block)) for f0 in range(0, F, block)]
    out = np.empty((F, C))

    def run(span):  # blocks of filters bound the memory; numpy releases the GIL in the kernels
        f0, f1 = span
        Xb = np.ascontiguousarray(X[:, f0:f1].T)
        out[f0:f1] = _block_mi(Xb, y, C, counts, seg_lo, lab_sorted, regular, special, K, psi)

    if n_jobs > 1 and len(spans) > 1:
        with ThreadPoolExecutor(min(n_jobs, len(spans))) as pool:
            list(pool.map(run, spans))
    else:
        for span in spans:
            run(span)
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
            half a million samples x filters.
        n_jobs: threads over blocks of filters (None or 1: one, -1: all cores);
            the result does not depend on it. More threads help only on idle cores.
    """
    x, y, C, K = _validate(features, labels, n_neighbors, num_classes, chunk_size)
    X = prepare_features(x, random_state)
    return _mi_from_prepared(X, y, C, K, chunk_size, _resolve_jobs(n_jobs))
