"""The per-filter numbers of an atlas card, from arrays (no model, no files).

For filter k (C classes):

* MI row ``M[k, :]`` (METHOD.md section 3), its maximum and its argmax class.
* Class selectivity ``(mu_max - mu_rest) / (mu_max + mu_rest)`` and the top class by mean activation
  (METHOD.md section 4, :func:`csg.analysis.class_selectivity`).
* Per-class ablation drop ``D[k, :]`` (accuracy lost by class when k alone is zeroed), its maximum and the
  class of the largest drop (none when no class loses accuracy).
* The class of the method's matrix (``gate.npy``: CSG gate, ICNN assignment, PICNN Q): ``argmax_c G[c, k]``,
  none when the column is constant (no preference).
* Agreement: whether every available criterion (gate, MI, ablation) names the same class; undefined
  (None) with fewer than two.
* Weight-correlation neighbours: the ``n`` other filters with the largest cosine between flattened weights.
"""
from __future__ import annotations

import numpy as np

NONE = -1  # "no class" in the integer arrays (None in JSON)
CRITERIA = ("gate", "mi", "ablation")


def gate_classes(gate: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """``argmax_c G[c, k]`` per filter; ``NONE`` where the column's spread is at most ``tol``."""
    g = np.asarray(gate, dtype=np.float64)
    cls = g.argmax(axis=0)
    return np.where(g.max(axis=0) - g.min(axis=0) > tol, cls, NONE)


def drop_classes(drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest per-class drop per filter and its class (``NONE`` when no class drops)."""
    d = np.where(np.isnan(drop), -np.inf, np.asarray(drop, dtype=np.float64))
    best = d.max(axis=1)
    return np.where(np.isfinite(best), best, np.nan), np.where(best > 0, d.argmax(axis=1), NONE)


def agreement(classes: dict[str, np.ndarray]) -> np.ndarray:
    """1 where every available criterion gives the same class, 0 where two differ, ``NONE`` (< 2 available)."""
    stack = np.stack(list(classes.values()))  # criteria x K
    have = stack != NONE
    count = have.sum(axis=0)
    first = np.where(have, stack, -2).max(axis=0)  # any available class (they are compared next)
    same = (~have | (stack == first)).all(axis=0)
    return np.where(count >= 2, same.astype(np.int64), NONE)


def neighbours(correlation: np.ndarray, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` other filters with the largest weight correlation (``K x n`` indices, values), best first;
    ties go to the lower index."""
    corr = np.asarray(correlation, dtype=np.float64).copy()
    k = corr.shape[0]
    n = max(0, min(int(n), k - 1))
    np.fill_diagonal(corr, -np.inf)
    idx = np.argsort(-corr, axis=1, kind="stable")[:, :n]
    return idx, np.take_along_axis(corr, idx, axis=1)


def unit_table(*, mi: np.ndarray, selectivity: np.ndarray, top_class: np.ndarray,
               drop: np.ndarray | None = None, gate: np.ndarray | None = None,
               correlation: np.ndarray | None = None, num_neighbours: int = 5) -> dict[str, np.ndarray | None]:
    """Every per-filter array of a card (K rows each); absent inputs give None entries."""
    mi = np.asarray(mi, dtype=np.float64)
    classes = {"mi": mi.argmax(axis=1)}
    out: dict[str, np.ndarray | None] = {"mi": mi, "mi_max": mi.max(axis=1), "selectivity": np.asarray(selectivity),
                                         "top_class": np.asarray(top_class)}
    if gate is not None:
        classes["gate"] = gate_classes(gate)
    if drop is not None:
        out["drop"] = np.asarray(drop, dtype=np.float64)
        out["max_drop"], classes["ablation"] = drop_classes(drop)
    else:
        out["drop"] = out["max_drop"] = None
    for name in CRITERIA:
        out[f"class_{name}"] = classes.get(name)
    out["agree"] = agreement(classes)
    # the card's class: the method's own assignment when it has one, else what the MI says
    out["class"] = classes["gate"] if gate is not None else classes["mi"]
    if correlation is not None:
        out["neighbours"], out["neighbour_corr"] = neighbours(correlation, num_neighbours)
    else:
        out["neighbours"] = out["neighbour_corr"] = None
    return out
