"""Class-filter removal (METHOD.md section 4, the paper's Fig. 5).

Zero the filters related to a class set S and compare the confusion matrix
before and after. Because the head is linear after global average pooling,
zeroing filter k's maps equals zeroing column k of the pooled features, so the
"after" logits are exactly ``(a * keep) W^T + b`` and no forward pass is needed.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ..core.errors import CsgError
from . import figures as figs
from ._common import as_labels, check_pooled, class_means, confusion_matrix, per_class_recall
from .base import AnalysisInputs, AnalysisResult, figure, fmt, small


def _check_classes(classes: Iterable[int], num_classes: int) -> list[int]:
    cls = sorted({int(c) for c in classes})
    if not cls:
        raise CsgError("no classes given for filter removal; pass e.g. --classes 0,1")
    bad = [c for c in cls if not 0 <= c < num_classes]
    if bad:
        raise CsgError(f"--classes {','.join(map(str, bad))} out of range: the run has {num_classes} classes "
                       f"(0..{num_classes - 1})")
    return cls


def removal_filters_csg(gate, classes: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """Filters a gated model relates to S: ``{k : G[c, k] > threshold for some c in S}`` (sorted)."""
    G = np.asarray(gate, dtype=np.float64)
    if G.ndim != 2:
        raise CsgError(f"gate must be C x K, got shape {G.shape}")
    cls = _check_classes(classes, G.shape[0])
    return np.flatnonzero((G[cls] > threshold).any(axis=0)).astype(np.int64)


def removal_filters_std(pooled, labels, classes: Sequence[int], share: float = 0.1,
                        num_classes: int | None = None) -> np.ndarray:
    """Filters a plain model relates to S: for each c in S, the ``round(share*K)`` (at least 1)
    filters with the largest mean pooled activation over samples of class c; the union, sorted."""
    y, C = as_labels(labels, num_classes)
    a = check_pooled(pooled, y)
    if not 0.0 < share <= 1.0:
        raise CsgError(f"--share {share} must be in (0, 1]")
    cls = _check_classes(classes, C)
    mu, counts = class_means(a, y, C)
    empty = [c for c in cls if counts[c] == 0]
    if empty:
        raise CsgError(f"class(es) {empty} have no samples in the features; choose other --classes")
    m = max(1, int(round(share * a.shape[1])))
    top = np.argsort(-mu[cls], axis=1, kind="stable")[:, :m]
    return np.unique(top).astype(np.int64)


def head_logits(pooled, head_weight, head_bias=None) -> np.ndarray:
    """``a W^T + b``: the STD logits from pooled features (``W`` is C x K)."""
    W = np.asarray(head_weight, dtype=np.float64)
    out = np.asarray(pooled, dtype=np.float64) @ W.T
    if head_bias is not None:
        out = out + np.asarray(head_bias, dtype=np.float64)
    return out


def confusion_after_removal(pooled, labels, head_weight, head_bias, filters,
                            num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrices (rows: true class, columns: predicted; counts) before and after
    zeroing the pooled features of ``filters``: ``after`` uses ``(a * keep) W^T + b`` with
    ``keep[k] = 0`` for removed filters, exact for a linear head after pooling."""
    W = np.asarray(head_weight, dtype=np.float64)
    y, C = as_labels(labels, num_classes if num_classes is not None else W.shape[0])
    a = check_pooled(pooled, y)
    if W.shape != (C, a.shape[1]):
        raise CsgError(f"head weight is {W.shape} but the features give C={C}, K={a.shape[1]}")
    idx = np.asarray(filters, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= a.shape[1]):
        raise CsgError(f"filter indices must lie in [0, {a.shape[1]})")
    keep = np.ones(a.shape[1])
    keep[idx] = 0.0
    before = confusion_matrix(y, head_logits(a, W, head_bias).argmax(1), C)
    after = confusion_matrix(y, head_logits(a * keep, W, head_bias).argmax(1), C)
    return before, after


def removal_summary(before: np.ndarray, after: np.ndarray, classes: Sequence[int], filters) -> dict:
    """Accuracy of the removed classes and of the rest, before and after."""
    C = before.shape[0]
    removed = np.zeros(C, dtype=bool)
    removed[list(classes)] = True
    rb, ra = per_class_recall(before), per_class_recall(after)

    def acc(conf, rows):  # correct predictions over samples whose true class is in ``rows``
        total = conf[rows].sum()
        return float(np.diag(conf)[rows].sum() / total) if total else math.nan

    return {
        "filters": np.asarray(filters, dtype=np.int64).tolist(),
        "num_removed": int(np.asarray(filters).size),
        "accuracy_before": float(np.trace(before) / max(before.sum(), 1)),
        "accuracy_after": float(np.trace(after) / max(after.sum(), 1)),
        "removed_classes_accuracy_before": acc(before, removed),
        "removed_classes_accuracy_after": acc(after, removed),
        "other_classes_accuracy_before": acc(before, ~removed),
        "other_classes_accuracy_after": acc(after, ~removed),
        "per_class_accuracy_before": rb.tolist(),
        "per_class_accuracy_after": ra.tolist(),
    }


# ---- the analysis entry (registry) -----------------------------------------------------------------------
SCHEMA = "csg.analysis.removal/2"


def removal_filters(assignment, classes: Sequence[int]) -> np.ndarray:
    """Filters a method assigns to S: ``{k : assignment[c, k] for some c in S}`` (sorted)."""
    A = np.asarray(assignment, dtype=bool)
    if A.ndim != 2:
        raise CsgError(f"a filter-class assignment must be C x K, got shape {A.shape}")
    cls = _check_classes(classes, A.shape[0])
    return np.flatnonzero(A[cls].any(axis=0)).astype(np.int64)


def compute(inputs: AnalysisInputs) -> AnalysisResult:
    """Schema ``csg.analysis.removal/2``: ``classes``; ``primary`` (``"assignment"`` when the method has
    its own filter-class assignment, else ``"activation"``); ``selections[criterion]`` with ``criterion``
    (text), ``filters``, ``num_removed``, accuracies before/after of the removed and the other classes,
    per-class accuracies, and the confusion matrices when small."""
    classes = inputs.options["classes"]
    share = inputs.options["share"]
    a, y, W, b, C = inputs.pooled, inputs.labels, inputs.head_weight, inputs.head_bias, inputs.num_classes
    selections, arrays = {}, {}
    if inputs.assignment is not None:
        filt = removal_filters(inputs.assignment, classes)
        before, after = confusion_after_removal(a, y, W, b, filt, C)
        selections["assignment"] = dict(criterion=f"{inputs.assignment_rule} for c in S",
                                        **removal_summary(before, after, classes, filt),
                                        confusion_before=small(before), confusion_after=small(after))
        arrays["removal_assignment_before"], arrays["removal_assignment_after"] = before, after
    filt = removal_filters_std(a, y, classes, share, C)
    before, after = confusion_after_removal(a, y, W, b, filt, C)
    selections["activation"] = dict(criterion=f"top {share:.0%} filters by mean activation on each c in S",
                                    share=share, **removal_summary(before, after, classes, filt),
                                    confusion_before=small(before), confusion_after=small(after))
    arrays["removal_activation_before"], arrays["removal_activation_after"] = before, after
    primary = "assignment" if inputs.assignment is not None else "activation"
    notes = []
    if inputs.assignment is not None and selections["assignment"]["num_removed"] == 0:
        notes.append(f"removal: the method assigns no filter to classes {classes}")
    return AnalysisResult("removal", SCHEMA, {"schema": SCHEMA, "classes": classes, "primary": primary,
                                              "selections": selections}, arrays, notes)


def render(result, inputs, figdir) -> list:
    s = result.summary
    sel = s["selections"][s["primary"]]
    path, fig = figure(figdir, "analysis_removal.png",
                       f"Confusion matrices (row-normalised) before and after zeroing the {sel['num_removed']} "
                       f"filters of classes {s['classes']} ({sel['criterion']}). Removed classes: accuracy "
                       f"{_f(sel['removed_classes_accuracy_before'])} -> {_f(sel['removed_classes_accuracy_after'])}; "
                       f"other classes {_f(sel['other_classes_accuracy_before'])} -> "
                       f"{_f(sel['other_classes_accuracy_after'])}.")
    figs.removal_figure(path, result.arrays[f"removal_{s['primary']}_before"],
                        result.arrays[f"removal_{s['primary']}_after"], classes=s["classes"],
                        num_removed=sel["num_removed"], criterion=sel["criterion"], class_names=inputs.class_names)
    return [fig]


def key_numbers(s: dict) -> list[tuple[str, str]]:
    sel = s["selections"][s["primary"]]
    return [(f"removal of classes {s['classes']} ({sel['num_removed']} filters, {sel['criterion']}): accuracy of "
             "the removed classes before -> after",
             f"{_f(sel['removed_classes_accuracy_before'])} -> {_f(sel['removed_classes_accuracy_after'])}"),
            ("removal: accuracy of the other classes before -> after",
             f"{_f(sel['other_classes_accuracy_before'])} -> {_f(sel['other_classes_accuracy_after'])}")]


def _f(x) -> str:
    return fmt(x, 2)
