"""The analyses of METHOD.md section 4, in the order they run and are shown.

Adding an analysis: a module with ``compute``, ``render``, ``key_numbers`` and a
``SCHEMA`` string, and one line here.
"""
from __future__ import annotations

from . import ablation, clustering, correlation, removal, similarity
from .base import Analysis

ANALYSES: tuple[Analysis, ...] = tuple(
    Analysis(name, title, m.SCHEMA, m.compute, m.render, m.key_numbers) for name, title, m in (
        ("removal", "Class-filter removal", removal),
        ("similarity", "Feature-gate similarity", similarity),
        ("correlation", "Filter weight correlation", correlation),
        ("clusters", "Cluster centres", clustering),
        ("ablation", "Single-unit ablation", ablation),
    ))


def analysis_named(name: str) -> Analysis:
    for a in ANALYSES:
        if a.name == name:
            return a
    raise KeyError(name)
