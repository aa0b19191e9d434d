"""``run_analyses``: every analysis of :mod:`.registry` on one run directory.

Reads ``features.npz`` once and the model once (for the head and the feature
convolution) into :class:`~.base.AnalysisInputs`, computes each analysis,
renders its figures from the result, then writes ``analysis.json`` (schema
``csg.analysis/2``: the small summaries) and ``analysis.npz`` (every array).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.errors import CsgError
from ..core.io import jsonable
from ..core.plotting import filter_order
from ..core.run_files import ANALYSIS, ANALYSIS_ARRAYS, MI_MATRIX
from ..methods import method_class
from ._common import as_labels, class_means
from .base import SCHEMA, AnalysisInputs
from .registry import ANALYSES


def parse_classes(text: str | Sequence[int] | None) -> list[int]:
    if text is None:
        return [0, 1]
    if isinstance(text, str):
        try:
            return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
        except ValueError:
            raise CsgError(f"--classes {text!r} is not a comma-separated list of class indices, e.g. 0,1") from None
    return [int(c) for c in text]


def _assignment_rule(method: str, threshold: float) -> str:
    return {"picnn": "argmax_c Q[c, k] = c", "icnn": "filter k's ICNN category is c"}.get(
        method, f"G[c, k] > {threshold:g}")


def load_inputs(run, *, classes=None, device="cpu", seed: int = 0, threshold: float = 0.5, share: float = 0.1,
                m: int | None = None, model=None) -> tuple[AnalysisInputs, list[str]]:
    """The inputs of every analysis of ``run``, and notes about them (e.g. stale features)."""
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
    notes: list[str] = []
    logits = pooled @ W.T + (b if b is not None else 0.0)
    if "logits" in feats and feats["logits"].shape == logits.shape:
        gap = float(np.abs(feats["logits"] - logits).max())
        if gap > 1e-3 * max(1.0, float(np.abs(logits).max())):
            notes.append(f"the head applied to features.npz differs from its stored logits by {gap:.3g}; "
                         "the features may be stale: re-run `csg evaluate`")
    gate = run.gate()
    mi = run.mi_matrix() if run.has(MI_MATRIX) else None
    method = str(run.config.get("method", "std"))
    assignment = None if gate is None else method_class(method).filter_assignment(gate, threshold)
    names = run.config.get("classes")
    names = names if isinstance(names, list) and len(names) == C else None
    if gate is not None:
        class_filter, ordered_by = gate, "gate"
    elif mi is not None:
        class_filter, ordered_by = mi.T, "MI matrix"
    else:
        class_filter, ordered_by = np.nan_to_num(class_means(pooled, labels, C)[0]), "class-mean activation"
    order, owner = filter_order(class_filter)
    inputs = AnalysisInputs(
        run_name=str(run.path.name), pooled=pooled, labels=labels, predictions=logits.argmax(1), head_weight=W,
        head_bias=b, gate=gate, assignment=assignment,
        assignment_rule=None if gate is None else _assignment_rule(method, threshold), mi=mi, class_names=names,
        class_filter=class_filter, ordered_by=ordered_by, order=order, owner=owner, model=model, device=device,
        options={"classes": parse_classes(classes), "threshold": threshold, "share": share, "m": m, "seed": seed})
    return inputs, notes


def run_analyses(run, *, classes: Sequence[int] | str | None = None, device="cpu", seed: int = 0,
                 threshold: float = 0.5, share: float = 0.1, m: int | None = None, model=None,
                 progress: bool = False, figures: bool = True) -> dict:
    """Run every registered analysis on ``run`` (a :class:`csg.RunDir`) and write their results.

    Args:
        classes: the class set S of the removal analysis (default 0 and 1).
        threshold: gate value above which a filter belongs to a class (CSG's removal criterion).
        share: share of filters per class removed by the activation criterion (STD).
        m: filters per class in ``C_IC`` (default K // C).
        model: an already loaded model (else ``run.load_model(device)``).
        figures: draw the figures (False: data only).
    Returns the dictionary written to ``analysis.json``.
    """
    inputs, notes = load_inputs(run, classes=classes, device=device, seed=seed, threshold=threshold, share=share,
                                m=m, model=model)
    results = [a.compute(inputs) for a in ANALYSES]
    drawn = []
    if figures:
        figdir = run.figures_dir
        for analysis, result in zip(ANALYSES, results):
            drawn.extend(f.to_dict() for f in analysis.render(result, inputs, figdir))
    arrays = {k: v for r in results for k, v in r.arrays.items()}
    out = {"schema": SCHEMA, "run": str(run.path), "num_classes": inputs.num_classes,
           "num_filters": inputs.num_filters, "num_samples": int(inputs.labels.size)}
    out.update({r.name: r.summary for r in results})
    out["figures"] = drawn
    out["notes"] = notes + [n for r in results for n in r.notes]
    out = jsonable(out)
    run.write_npz(ANALYSIS_ARRAYS, **arrays)
    run.write_json(ANALYSIS, out)
    return out
