"""Metrics on arrays: the filter-class mutual information and the interpretability figures."""
from __future__ import annotations

from .interpretability import (accuracy, gap_closed, gate_mi_agreement, indicator_entropy, l1_density,
                               l1_interval, mis, mis_ceiling, per_class_accuracy)
from .mutual_information import mutual_information_matrix, prepare_features

__all__ = ["accuracy", "gap_closed", "gate_mi_agreement", "indicator_entropy", "l1_density", "l1_interval",
           "mis", "mis_ceiling", "mutual_information_matrix", "per_class_accuracy", "prepare_features"]
