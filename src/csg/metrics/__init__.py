"""Metrics on arrays: the filter-class mutual information and the interpretability figures."""
from __future__ import annotations

from .interpretability import (accuracy, class_mass_shares, gap_closed, gate_activation_agreement, gate_mi_agreement, gate_unconverged, indicator_entropy, l1_density,
                               l1_interval, mis, mis_ceiling, per_class_accuracy)
from .mutual_information import mutual_information_matrix, prepare_features
from .statistics import (T_EQUAL, Interval, independent_bootstrap_mean_difference, matched_bootstrap_mean_difference,
                         paired_bootstrap_interval, paired_bootstrap_mean_difference, paired_t_interval,
                         subsample_interval, wilson_interval)

__all__ = ["accuracy", "gap_closed", "gate_mi_agreement", "indicator_entropy", "l1_density", "l1_interval",
           "mis", "mis_ceiling", "mutual_information_matrix", "per_class_accuracy", "prepare_features",
           "Interval", "paired_t_interval", "paired_bootstrap_interval", "paired_bootstrap_mean_difference",
           "independent_bootstrap_mean_difference", "matched_bootstrap_mean_difference", "subsample_interval", "wilson_interval",
           "gate_activation_agreement", "gate_unconverged", "class_mass_shares", "T_EQUAL"]
