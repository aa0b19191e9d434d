"""Everything the atlas reads from other commands' outputs, in one place.

``csg evaluate`` -> ``features.npz`` (pooled test features, labels, predictions), ``mi_matrix.npy``,
``gate.npy`` (the method's class-filter matrix: the CSG gate, ICNN's assignment, PICNN's Q);
``csg analyze`` -> ``analysis.npz`` (``ablation_drop`` K x C, ``selectivity`` K, ``correlation`` K x K).
A missing or stale (wrong shape) piece is returned as None with a note; the atlas then computes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import CsgError
from ..core.run_files import ANALYSIS_ARRAYS, FEATURES


@dataclass
class RunInputs:
    pooled: np.ndarray  # N x K, the feature layer's pooled activations of the test split
    labels: np.ndarray  # N
    predictions: np.ndarray  # N
    class_names: list[str]
    config: dict[str, Any]
    metrics: dict[str, Any]
    mi: np.ndarray | None = None  # K x C
    gate: np.ndarray | None = None  # C x K
    ablation_drop: np.ndarray | None = None  # K x C
    selectivity: np.ndarray | None = None  # K
    correlation: np.ndarray | None = None  # K x K
    sources: dict[str, str] = field(default_factory=dict)  # piece -> the file it came from
    notes: list[str] = field(default_factory=list)


def _shaped(name: str, array, shape: tuple[int, ...], notes: list[str]):
    if array is None:
        return None
    array = np.asarray(array)
    if array.shape != shape:
        notes.append(f"{name} has shape {array.shape}, expected {shape}: stale, recomputed")
        return None
    return array


def read_run_inputs(run) -> RunInputs:
    """Read a run directory's evaluation and analysis outputs (``run`` is a :class:`csg.RunDir`)."""
    feats = run.features()
    for key in ("pooled", "labels"):
        if key not in feats:
            raise CsgError(f"{run.file('features.npz')} has no {key!r} array; re-run `csg evaluate {run.path}`")
    pooled = np.asarray(feats["pooled"], dtype=np.float32)
    labels = np.asarray(feats["labels"], dtype=np.int64)
    predictions = np.asarray(feats.get("predictions", np.full_like(labels, -1)), dtype=np.int64)
    cfg = run.config
    metrics = run.metrics()
    n, k = pooled.shape
    c = int(cfg.get("num_classes") or metrics.get("num_classes") or labels.max() + 1)
    names = cfg.get("classes")
    names = [str(x) for x in names] if isinstance(names, list) and len(names) == c else [str(i) for i in range(c)]
    notes: list[str] = []
    sources: dict[str, str] = {"pooled": FEATURES}
    out = RunInputs(pooled=pooled, labels=labels, predictions=predictions, class_names=names, config=cfg,
                    metrics=metrics, notes=notes, sources=sources)
    if run.has("mi_matrix.npy"):
        out.mi = _shaped("mi_matrix.npy", run.mi_matrix(), (k, c), notes)
        if out.mi is not None:
            sources["mi"] = "mi_matrix.npy"
    out.gate = _shaped("gate.npy", run.gate(), (c, k), notes)
    if out.gate is not None:
        sources["gate"] = "gate.npy"
    if run.has(ANALYSIS_ARRAYS):
        try:
            with np.load(run.file(ANALYSIS_ARRAYS), allow_pickle=False) as z:
                arrays = {key: z[key] for key in ("ablation_drop", "selectivity", "correlation") if key in z.files}
        except Exception as exc:  # a torn file: say so and compute the pieces instead
            notes.append(f"analysis.npz unreadable ({type(exc).__name__}); ablation recomputed")
            arrays = {}
        out.ablation_drop = _shaped("analysis.npz ablation_drop", arrays.get("ablation_drop"), (k, c), notes)
        out.selectivity = _shaped("analysis.npz selectivity", arrays.get("selectivity"), (k,), notes)
        out.correlation = _shaped("analysis.npz correlation", arrays.get("correlation"), (k, k), notes)
        for key in ("ablation_drop", "selectivity", "correlation"):
            if getattr(out, key) is not None:
                sources[key] = ANALYSIS_ARRAYS
    if labels.shape[0] != n:
        raise CsgError(f"features.npz has {n} feature rows but {labels.shape[0]} labels; re-run `csg evaluate`")
    return out
