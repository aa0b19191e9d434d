"""Feature-gate similarity (METHOD.md section 4; the paper's Appendix C, Fig. 6).

``a_y(D)`` is the mean pooled feature of class y over a sample set D and
``S[y, c] = cos(a_y(D), G[c])``, for D = the true positives (label y predicted
y) and D = the false negatives (label y predicted otherwise). A class-specific
model gives a diagonal-dominant TP matrix: what a class's correctly classified
images activate is what its gate row selects.

Models without a gate (STD) are compared against the transposed MI matrix
``M^T`` (C x K): its row c is how much each filter tells about class c, the
data's own class-filter matrix. ``run_analyses`` records which one it used.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import CsgError
from . import figures as figs
from ._common import as_labels, check_pooled, class_means
from .base import AnalysisInputs, AnalysisResult, Figure, figure, fmt, small


def cosine_rows(A, B, eps: float = 1e-12) -> np.ndarray:
    """``S[i, j] = cos(A[i], B[j])``; rows of A that are NaN give NaN rows, zero rows give 0."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    na = np.linalg.norm(A, axis=1, keepdims=True)
    nb = np.linalg.norm(B, axis=1, keepdims=True)
    An = A / np.maximum(na, eps)
    Bn = B / np.maximum(nb, eps)
    return An @ Bn.T


def feature_gate_similarity(pooled, labels, predictions, gate) -> dict[str, np.ndarray]:
    """``S_TP`` and ``S_FN`` (both C x C, rows = class y of the samples, columns = gate row c).

    Rows of classes with no true positive (resp. false negative) are NaN.
    Returns ``{"tp", "fn", "tp_count", "fn_count"}``.
    """
    G = np.asarray(gate, dtype=np.float64)
    if G.ndim != 2:
        raise CsgError(f"gate must be C x K, got shape {G.shape}")
    y, C = as_labels(labels, G.shape[0])
    a = check_pooled(pooled, y)
    if a.shape[1] != G.shape[1]:
        raise CsgError(f"features have K={a.shape[1]} filters but the gate has {G.shape[1]} columns")
    pred = np.asarray(predictions, dtype=np.int64).ravel()
    correct = pred == y
    mu_tp, n_tp = class_means(a, y, C, mask=correct)
    mu_fn, n_fn = class_means(a, y, C, mask=~correct)
    return {"tp": cosine_rows(mu_tp, G), "fn": cosine_rows(mu_fn, G), "tp_count": n_tp, "fn_count": n_fn}


def diagonal_dominance(S: np.ndarray) -> float:
    """Share of rows (with data) whose largest entry is on the diagonal."""
    rows = ~np.isnan(S).any(axis=1)
    if not rows.any():
        return float("nan")
    return float((np.nanargmax(np.where(np.isnan(S), -np.inf, S)[rows], axis=1) == np.flatnonzero(rows)).mean())


def class_mean_features(pooled, labels, num_classes: int | None = None, mask=None) -> np.ndarray:
    """``a_y(D)`` for every class y (C x K): mean pooled feature over samples of class y in ``mask``;
    NaN rows for classes without such samples."""
    return class_means(pooled, labels, num_classes, mask=mask)[0]


# ---- the analysis entry (registry) -----------------------------------------------------------------------
SCHEMA = "csg.analysis.similarity/1"


def compute(inputs: AnalysisInputs) -> AnalysisResult:
    """Schema ``csg.analysis.similarity/1``: ``reference`` (``"gate"`` or ``"mi_matrix"``), ``tp``/``fn``
    (C x C when small), their sample counts, ``tp_diagonal_dominance``, ``fn_diagonal_dominance``,
    ``tp_mean_diagonal``, ``tp_mean_off_diagonal``; or ``skipped`` (why) when there is no reference."""
    if inputs.gate is None and inputs.mi is None:
        why = "the run has neither gate.npy nor mi_matrix.npy; run `csg evaluate` first"
        return AnalysisResult("similarity", SCHEMA, {"schema": SCHEMA, "skipped": why}, notes=[why])
    reference = "gate" if inputs.gate is not None else "mi_matrix"
    ref = inputs.gate if inputs.gate is not None else inputs.mi.T
    notes = [] if inputs.gate is not None else [
        "similarity: the run has no gate, so features are compared with the transposed MI matrix (row c = how "
        "much each filter tells about class c)"]
    simil = feature_gate_similarity(inputs.pooled, inputs.labels, inputs.predictions, ref)
    C = inputs.num_classes
    diag = np.diag(simil["tp"])
    off = simil["tp"][~np.eye(C, dtype=bool)]
    summary = {
        "schema": SCHEMA, "reference": reference, "tp": small(simil["tp"]), "fn": small(simil["fn"]),
        "tp_count": simil["tp_count"], "fn_count": simil["fn_count"],
        "tp_diagonal_dominance": diagonal_dominance(simil["tp"]),
        "fn_diagonal_dominance": diagonal_dominance(simil["fn"]),
        "tp_mean_diagonal": float(np.nanmean(diag)) if np.isfinite(diag).any() else float("nan"),
        "tp_mean_off_diagonal": float(np.nanmean(off)) if np.isfinite(off).any() else float("nan"),
    }
    return AnalysisResult("similarity", SCHEMA, summary, {"similarity_tp": simil["tp"], "similarity_fn": simil["fn"]},
                          notes)


def render(result: AnalysisResult, inputs: AnalysisInputs, figdir) -> list[Figure]:
    s = result.summary
    if "skipped" in s:
        return []
    path, fig = figure(figdir, "analysis_similarity.png",
                       f"Cosine between each class's mean pooled feature over its true positives (left) / false "
                       f"negatives (right) and each {'gate row' if s['reference'] == 'gate' else 'MI column'}. "
                       f"TP rows whose maximum is diagonal: {s['tp_diagonal_dominance']:.0%}. Grey rows: no such "
                       "samples.")
    figs.similarity_figure(path, result.arrays["similarity_tp"], result.arrays["similarity_fn"],
                           reference=s["reference"], class_names=inputs.class_names)
    return [fig]


def key_numbers(s: dict) -> list[tuple[str, str]]:
    if "skipped" in s:
        return []
    return [("similarity: TP rows with a diagonal maximum", fmt(s.get("tp_diagonal_dominance")))]
