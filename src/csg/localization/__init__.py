"""Where filters look, scored against object masks (METHOD.md section 5, Appendices G and H).

``GradMap``, ``ActivMap`` and ``CAM`` compute maps batched over images and filters; region rules turn
them into regions; ``iou`` / ``FilterScores`` / ``score_images`` score them; ``localize`` runs it all.
"""
from .maps import CAM, ActivMap, GradMap, MapMethod, build_method, filter_input_gradients, upsample
from .regions import (DatasetQuantile, FixedThreshold, ImageQuantile, RegionRule, StreamingQuantile,
                      gaussian_blur, gaussian_kernel1d)
from .run import MASKED_DATASETS, localize, localize_run
from .scoring import (FilterScores, ImageScores, assign_classes, filter_tables, iou, score_filters,
                      score_images)

__all__ = [
    "MapMethod", "GradMap", "ActivMap", "CAM", "build_method", "filter_input_gradients", "upsample",
    "RegionRule", "FixedThreshold", "ImageQuantile", "DatasetQuantile", "StreamingQuantile",
    "gaussian_blur", "gaussian_kernel1d",
    "iou", "FilterScores", "ImageScores", "filter_tables", "assign_classes", "score_filters", "score_images",
    "MASKED_DATASETS", "localize", "localize_run",
]
