"""The unit atlas: per filter, its top images, maps, classes and causal effect (computed, returned as data).

``build_atlas(run)`` returns an :class:`Atlas` whose ``data`` has ``"schema": "csg.atlas/1"``; the page is
written by :func:`csg.report.atlas_page.write_atlas_page`.
"""
from .build import SCHEMA, Atlas, atlas_from_parts, build_atlas
from .dissection import clutter_masks, dissection_iou, pair_iou
from .inputs import RunInputs, read_run_inputs
from .maps import (fit_levels, gradmap_from_gradients, layer_maps, pair_feature_maps, pair_gradients,
                   pair_maps)
from .selection import top_images
from .units import agreement, drop_classes, gate_classes, neighbours, unit_table

__all__ = [
    "SCHEMA", "Atlas", "atlas_from_parts", "build_atlas",
    "clutter_masks", "dissection_iou", "pair_iou",
    "RunInputs", "read_run_inputs",
    "fit_levels", "gradmap_from_gradients", "layer_maps", "pair_feature_maps", "pair_gradients", "pair_maps",
    "top_images",
    "agreement", "drop_classes", "gate_classes", "neighbours", "unit_table",
]
