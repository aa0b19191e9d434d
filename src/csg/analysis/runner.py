"""``run_analyses``: every analysis of METHOD.md section 4 on one run directory.

Reads ``features.npz`` once and the model once (for the head and the feature
convolution), then writes ``analysis.json`` (summaries plus the small matrices),
``analysis.npz`` (every array, whatever its size) and the figures.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import CsgError
from ..core.io import jsonable
from ._common import as_labels, class_means
from .ablation import ablation_drops, class_selectivity, selectivity_vs_drop
from .clustering import cluster_centres
from .correlation import feature_conv, inter_class_correlation, r_s_curve, weight_correlation
from .removal import confusion_after_removal, removal_filters_csg, removal_filters_std, removal_summary
from .similarity import diagonal_dominance, feature_gate_similarity

# Matrices with more entries than this go to analysis.npz only (a 1000-class confusion is 1M numbers).
JSON_MATRIX_LIMIT = 4096


def _small(arr: np.ndarray):
    return arr if np.asarray(arr).size <= JSON_MATRIX_LIMIT else "in analysis.npz"


def parse_classes(text: str | Sequence[int] | None) -> list[int]:
    if text is None:
        return [0, 1]
    if isinstance(text, str):
        try:
            return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
        except ValueError:
            raise CsgError(f"--classes {text!r} is not a comma-separated list of class indices, e.g. 0,1") from None
    return [int(c) for c in text]


def run_analyses(run, *, classes: Sequence[int] | str | None = None, device="cpu", seed: int = 0,
                 threshold: float = 0.5, share: float = 0.1, m: int | None = None, model=None,
                 progress: bool = False) -> dict:
    """Run the five analyses on ``run`` (a :class:`csg.runs.rundir.RunDir`) and write their results.

    Args:
        classes: the class set S of the removal analysis (default 0 and 1).
        threshold: gate value above which a filter belongs to a class (removal, CSG criterion).
        share: share of filters per class removed by the activation criterion (STD).
        m: filters per class in ``C_IC`` (default K // C).
        model: an already loaded model (else ``run.load_model(device)``).
    Returns the dictionary written to ``analysis.json``.
    """
    from ..core.plotting import filter_order
    from . import figures as figs

    feats = run.features()
    pooled = np.asarray(feats["pooled"], dtype=np.float64)
    labels = np.asarray(feats["labels"], dtype=np.int64)
    if model is None:
        model = run.load_model(device)
    head = model.head
    W = head.weight.detach().cpu().double().numpy()
    b = head.bias.detach().cpu().double().numpy() if head.bias is not None else None
    C, K = W.shape
    labels, C = as_labels(labels, C)
    if pooled.shape[1] != K:
        raise CsgError(f"features.npz has K={pooled.shape[1]} filters but the model's head takes {K}; "
                       f"re-run `csg evaluate {run.path}`")
    gate = run.gate()
    mi = run.mi_matrix() if run.has("mi_matrix.npy") else None
    notes: list[str] = []
    logits = pooled @ W.T + (b if b is not None else 0.0)
    predictions = logits.argmax(1)
    if "logits" in feats and feats["logits"].shape == logits.shape:
        gap = float(np.abs(feats["logits"] - logits).max())
        if gap > 1e-3 * max(1.0, float(np.abs(logits).max())):
            notes.append(f"the head applied to features.npz differs from its stored logits by {gap:.3g}; "
                         "the features may be stale: re-run `csg evaluate`")
    classes = parse_classes(classes)
    names = run.config.get("classes")
    names = names if isinstance(names, list) and len(names) == C else None
    figdir = run.figures_dir
    figures: list[dict[str, str]] = []
    arrays: dict[str, np.ndarray] = {}

    def add_figure(name: str, caption: str) -> Path:
        figures.append({"path": f"figures/{name}", "caption": caption})
        return figdir / name

    # the class-filter matrix that orders filters in every figure
    if gate is not None:
        class_filter, ordered_by = gate, "gate"
    elif mi is not None:
        class_filter, ordered_by = mi.T, "MI matrix"
    else:
        class_filter, ordered_by = np.nan_to_num(class_means(pooled, labels, C)[0]), "class-mean activation"
    order, owner = filter_order(class_filter)

    # ---- 1. class-filter removal ---------------------------------------------------------------
    selections: dict[str, dict] = {}
    if gate is not None:
        filt = removal_filters_csg(gate, classes, threshold)
        before, after = confusion_after_removal(pooled, labels, W, b, filt, C)
        selections["gate"] = dict(criterion=f"G[c, k] > {threshold} for c in S", threshold=threshold,
                                  **removal_summary(before, after, classes, filt),
                                  confusion_before=_small(before), confusion_after=_small(after))
        arrays["removal_gate_before"], arrays["removal_gate_after"] = before, after
    filt = removal_filters_std(pooled, labels, classes, share, C)
    before_a, after_a = confusion_after_removal(pooled, labels, W, b, filt, C)
    selections["activation"] = dict(criterion=f"top {share:.0%} filters by mean activation on each c in S",
                                    share=share, **removal_summary(before_a, after_a, classes, filt),
                                    confusion_before=_small(before_a), confusion_after=_small(after_a))
    arrays["removal_activation_before"], arrays["removal_activation_after"] = before_a, after_a
    primary = "gate" if gate is not None else "activation"
    sel = selections[primary]
    figs.removal_figure(add_figure("analysis_removal.png",
                                   f"Confusion matrices (row-normalised) before and after zeroing the "
                                   f"{sel['num_removed']} filters of classes {classes} ({sel['criterion']}). "
                                   f"Removed classes: accuracy {sel['removed_classes_accuracy_before']:.2f} -> "
                                   f"{sel['removed_classes_accuracy_after']:.2f}; other classes "
                                   f"{sel['other_classes_accuracy_before']:.2f} -> "
                                   f"{sel['other_classes_accuracy_after']:.2f}."),
                        np.asarray(arrays[f"removal_{primary}_before"]), np.asarray(arrays[f"removal_{primary}_after"]),
                        classes=classes, num_removed=sel["num_removed"], criterion=sel["criterion"], class_names=names)
    removal = {"classes": classes, "primary": primary, "selections": selections}

    # ---- 2. feature-gate similarity ------------------------------------------------------------
    if gate is not None or mi is not None:
        reference = "gate" if gate is not None else "mi_matrix"
        ref = gate if gate is not None else mi.T
        if gate is None:
            notes.append("similarity: the run has no gate, so features are compared with the transposed MI "
                         "matrix (row c = how much each filter tells about class c)")
        simil = feature_gate_similarity(pooled, labels, predictions, ref)
        arrays["similarity_tp"], arrays["similarity_fn"] = simil["tp"], simil["fn"]
        diag_tp = np.nanmean(np.diag(simil["tp"])) if np.isfinite(np.diag(simil["tp"])).any() else math.nan
        off = simil["tp"][~np.eye(C, dtype=bool)]
        similarity = {
            "reference": reference,
            "tp": _small(simil["tp"]), "fn": _small(simil["fn"]),
            "tp_count": simil["tp_count"], "fn_count": simil["fn_count"],
            "tp_diagonal_dominance": diagonal_dominance(simil["tp"]),
            "fn_diagonal_dominance": diagonal_dominance(simil["fn"]),
            "tp_mean_diagonal": diag_tp,
            "tp_mean_off_diagonal": float(np.nanmean(off)) if np.isfinite(off).any() else math.nan,
        }
        figs.similarity_figure(add_figure("analysis_similarity.png",
                                          f"Cosine between each class's mean pooled feature over its true "
                                          f"positives (left) / false negatives (right) and each "
                                          f"{'gate row' if gate is not None else 'MI column'}. TP rows whose "
                                          f"maximum is diagonal: {similarity['tp_diagonal_dominance']:.0%}. "
                                          "Grey rows: no such samples."),
                               simil["tp"], simil["fn"], reference=reference, class_names=names)
    else:
        similarity = {"skipped": "the run has neither gate.npy nor mi_matrix.npy; run `csg evaluate` first"}
        notes.append(similarity["skipped"])

    # ---- 3. filter weight correlation -------------------------------------------------------
    layer, conv = feature_conv(model)
    corr = weight_correlation(conv.weight)
    arrays["correlation"] = corr.astype(np.float32)
    s, r = r_s_curve(corr)
    m_used = int(m) if m is not None else max(1, K // C)
    c_ic = inter_class_correlation(corr, pooled, labels, m_used, C)
    off = corr[~np.eye(K, dtype=bool)]
    correlation = {"layer": layer, "r_s": {"s": s, "r": r}, "c_ic": c_ic, "m": m_used,
                   "mean_off_diagonal": float(off.mean()) if off.size else math.nan,
                   "mean_abs_off_diagonal": float(np.abs(off).mean()) if off.size else math.nan,
                   "ordered_by": ordered_by}
    figs.correlation_figure(add_figure("analysis_correlation.png",
                                       f"Cosine between the flattened weights of the {K} filters of {layer}, "
                                       f"ordered by their argmax class in the {ordered_by} (lines: class blocks). "
                                       f"Inter-class correlation C_IC = {c_ic:.3f} (m = {m_used})."),
                            corr, order, owner, layer=layer, c_ic=c_ic, ordered_by=ordered_by)
    figs.r_s_figure(add_figure("analysis_r_s.png",
                               f"r_s: share of off-diagonal filter pairs of {layer} whose weight correlation "
                               "is at least s (log scale near 0)."), s, r, label=str(run.path.name))

    # ---- 4. cluster centres ---------------------------------------------------------------------
    cl = cluster_centres(pooled, labels, C, seed=seed)
    arrays["cluster_centres"] = cl["centres"]
    clusters = {"k": C, "seed": seed, "purity": cl["purity"], "ari": cl["ari"], "nmi": cl["nmi"],
                "majority_class": cl["majority"], "centres": _small(cl["centres"]),
                "contingency": _small(cl["contingency"])}
    figs.clusters_figure(add_figure("analysis_clusters.png",
                                    f"k-means ({C} clusters, seed {seed}) on the pooled features: centres with "
                                    f"filters ordered by argmax class, and the cluster x class table "
                                    f"(purity {cl['purity']:.2f}, ARI {cl['ari']:.2f})."),
                         cl["centres"], cl["contingency"], order, purity=cl["purity"], ari=cl["ari"], class_names=names)

    # ---- 5. single-unit ablation ---------------------------------------------------------------
    drop, base = ablation_drops(pooled, labels, W, b, C, device=device)
    selectivity, top_class = class_selectivity(pooled, labels, C)
    stats = selectivity_vs_drop(selectivity, drop)
    max_drop = np.nanmax(drop, axis=1)
    max_drop_class = np.nanargmax(np.where(np.isnan(drop), -np.inf, drop), axis=1)
    arrays["ablation_drop"], arrays["selectivity"] = drop, selectivity
    ablation = {"drop": _small(drop), "base_per_class_accuracy": base, "selectivity": selectivity,
                "top_class": top_class, "max_drop": max_drop, "max_drop_class": max_drop_class,
                "spearman_selectivity_max_drop": stats["spearman"], "p_value": stats["p_value"],
                "top_class_is_max_drop_class": float((top_class == max_drop_class)[max_drop > 0].mean())
                if (max_drop > 0).any() else math.nan,
                "mean_max_drop": float(np.nanmean(max_drop))}
    figs.ablation_figure(add_figure("analysis_ablation.png",
                                    "Left: per-class accuracy drop when one filter is zeroed (all filters in one "
                                    "batched pass through the head). Right: class selectivity vs the largest "
                                    f"per-class drop; Spearman rho = {stats['spearman']:.2f}."),
                         drop, selectivity, order, spearman=stats["spearman"], class_names=names)

    result = jsonable({
        "run": str(run.path), "num_classes": C, "num_filters": K, "num_samples": int(labels.size),
        "removal": removal, "similarity": similarity, "correlation": correlation, "clusters": clusters,
        "ablation": ablation, "figures": figures, "notes": notes,
    })
    run.write_npz("analysis.npz", **arrays)
    run.write_json("analysis.json", result)
    return result
