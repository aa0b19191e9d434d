"""The analyses of METHOD.md section 4, as plain functions on arrays plus one runner.

Every function takes numpy arrays (pooled features N x K, labels, a C x K gate,
head weights), so it serves models trained elsewhere; :func:`run_analyses`
applies all of them to a run directory.
"""
from .ablation import ablation_drops, class_selectivity, selectivity_vs_drop
from .clustering import cluster_centres
from .correlation import (feature_conv, inter_class_correlation, r_s_curve, top_filters_per_class,
                          weight_correlation)
from .removal import (confusion_after_removal, head_logits, removal_filters, removal_filters_csg,
                      removal_filters_std)
from .registry import ANALYSES
from .runner import load_inputs, run_analyses
from .similarity import class_mean_features, feature_gate_similarity

__all__ = [
    "ablation_drops",
    "class_selectivity",
    "selectivity_vs_drop",
    "cluster_centres",
    "feature_conv",
    "inter_class_correlation",
    "r_s_curve",
    "top_filters_per_class",
    "weight_correlation",
    "confusion_after_removal",
    "head_logits",
    "removal_filters",
    "removal_filters_csg",
    "ANALYSES",
    "load_inputs",
    "removal_filters_std",
    "class_mean_features",
    "feature_gate_similarity",
    "run_analyses",
]
