"""Interpretability and accuracy figures computed from arrays (METHOD.md section 3)."""
from __future__ import annotations

import numpy as np

from ..core.errors import CsgError

__all__ = ["accuracy", "per_class_accuracy", "mis", "indicator_entropy", "mis_ceiling", "gap_closed",
           "l1_density", "l1_interval", "gate_unconverged", "gate_mi_agreement", "gate_activation_agreement", "class_mass_shares"]


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(predictions, labels) -> float:
    """Share of ``predictions == labels``."""
    p, y = _as_numpy(predictions), _as_numpy(labels)
    if p.shape != y.shape or p.size == 0:
        raise CsgError(f"accuracy: predictions {p.shape} and labels {y.shape} must be equal non-empty shapes")
    return float((p == y).mean())


def per_class_accuracy(predictions, labels, num_classes: int) -> np.ndarray:
    """Recall of each class: ``acc[c] = #{i: y_i = c, p_i = c} / #{i: y_i = c}`` (NaN for an absent class)."""
    p, y = _as_numpy(predictions).astype(np.int64), _as_numpy(labels).astype(np.int64)
    total = np.bincount(y, minlength=num_classes).astype(np.float64)
    hit = np.bincount(y[p == y], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hit / np.maximum(total, 1), np.nan)


def mis(mi_matrix) -> float:
    """Mutual-information score ``MIS = mean_k max_c M[k, c]`` of a K x C matrix."""
    m = _as_numpy(mi_matrix)
    if m.ndim != 2 or m.size == 0:
        raise CsgError(f"MIS needs a non-empty K x C matrix, got shape {m.shape}")
    return float(m.max(axis=1).mean())


def indicator_entropy(p) -> np.ndarray | float:
    """Entropy in nats of a Bernoulli(p) indicator: ``-p ln p - (1 - p) ln(1 - p)`` (0 at p in {0, 1})."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0) - np.where(p < 1, (1 - p) * np.log1p(-p), 0.0)
    return float(h) if h.ndim == 0 else h


def mis_ceiling(num_classes: int | None = None, labels=None) -> float:
    """The largest MIS a filter set can reach: ``max_c H(p_c)``.

    A filter's MI with ``1[y = c]`` is at most the entropy of that indicator, so
    ``MIS <= max_c H(p_c)``, with ``p_c`` the class frequencies of ``labels``;
    for C balanced classes this is ``H(1/C)`` (0.325 nats for C = 10), the
    value used when no labels are given.
    """
    if labels is not None:
        y = _as_numpy(labels).astype(np.int64)
        if y.size == 0:
            raise CsgError("mis_ceiling: labels are empty")
        counts = np.bincount(y, minlength=num_classes or 0)
        return float(np.max(indicator_entropy(counts / counts.sum())))
    if not num_classes or num_classes < 2:
        raise CsgError(f"mis_ceiling needs num_classes >= 2 or labels, got {num_classes}")
    return float(indicator_entropy(1.0 / num_classes))


def gap_closed(mis_method: float, mis_std: float, ceiling: float) -> float:
    """Share of STD's gap to the ceiling that a method closes: ``(MIS_m - MIS_std) / (H - MIS_std)``."""
    if not ceiling > mis_std:
        raise CsgError(f"gap_closed: the ceiling {ceiling:.4f} must exceed the STD MIS {mis_std:.4f}")
    return float((mis_method - mis_std) / (ceiling - mis_std))


def l1_density(gate) -> float:
    """``||G||_1 / (C K)`` of a C x K gate with entries in [0, 1]."""
    g = _as_numpy(gate)
    if g.ndim != 2 or g.size == 0:
        raise CsgError(f"L1-density needs a non-empty C x K gate, got shape {g.shape}")
    return float(np.abs(g).sum() / g.size)


def l1_interval(num_classes: int, rho: float) -> tuple[float, float]:
    """The interval ``[1/C, rho]`` a converged gate's L1-density should fall in."""
    return (1.0 / num_classes, float(rho))


CONVERGENCE_SLACK = 0.02


def gate_unconverged(metrics: dict, slack: float = CONVERGENCE_SLACK) -> tuple[float, float, float] | None:
    """``(density, lo, hi)`` when a learnable gate's L1-density lies outside ``[1/C, rho + slack]``, else
    ``None`` (no gate, a fixed layout, or a converged gate). ``metrics`` is a run's ``metrics.json``."""
    density, interval = metrics.get("l1_density"), metrics.get("l1_interval")
    if density is None or not isinstance(interval, list) or metrics.get("gate_fixed"):
        return None
    lo, hi = float(interval[0]), float(interval[1]) + slack
    if lo - 1e-6 <= float(density) <= hi:
        return None
    return float(density), lo, hi


def gate_mi_agreement(gate, mi_matrix) -> float:
    """Share of filters whose argmax class is the same in ``G`` (C x K) and in ``M`` (K x C) (Fig. 4c)."""
    g, m = _as_numpy(gate), _as_numpy(mi_matrix)
    if g.ndim != 2 or m.ndim != 2 or g.shape != m.T.shape:
        raise CsgError(f"gate_mi_agreement: gate {g.shape} must be C x K and the MI matrix {m.shape} K x C")
    return float((g.argmax(axis=0) == m.argmax(axis=1)).mean())


def gate_activation_agreement(gate, pooled, labels) -> float:
    """Share of filters whose argmax class in ``G`` (C x K) is the class of their largest mean pooled
    activation (``argmax_c mean_{i: y_i = c} a_ik``).

    MI is unsigned: a filter silent on one class and active on all others has its largest MI with the
    silent class; this agreement asks the signed question, "which class does the filter fire for".
    """
    g = _as_numpy(gate)
    a = _as_numpy(pooled).astype(np.float64)
    y = _as_numpy(labels).astype(np.int64)
    if g.ndim != 2 or a.ndim != 2 or g.shape[1] != a.shape[1] or a.shape[0] != y.shape[0]:
        raise CsgError(f"gate_activation_agreement: gate {g.shape} must be C x K, pooled {a.shape} N x K "
                       f"and labels {y.shape} N")
    sums, counts = _class_sums(a, y, g.shape[0])
    means = sums / np.maximum(counts, 1)[:, None]
    means[counts == 0] = -np.inf
    return float((g.argmax(axis=0) == means.argmax(axis=0)).mean())


def class_mass_shares(pooled, labels, num_classes: int) -> np.ndarray:
    """``s_ck = sum_{i: y_i = c} a_ik / sum_i a_ik``: the share of filter k's activation mass on class c
    (pooled ``N x K`` >= 0; returns ``C x K``, each column summing to 1)."""
    a = _as_numpy(pooled).astype(np.float64)
    sums, _ = _class_sums(a, _as_numpy(labels).astype(np.int64), num_classes)
    return sums / (a.sum(axis=0) + 1e-12)


def _class_sums(a: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the sum of ``a``'s rows (``C x K``) and the number of rows (``C``): one matrix product."""
    onehot = np.zeros((y.size, num_classes))
    onehot[np.arange(y.size), y] = 1.0
    return onehot.T @ a, onehot.sum(axis=0)
