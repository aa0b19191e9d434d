"""What every analysis reads, what it returns, and the (compute, render) pair the runner and the report share.

An analysis is a module with one :class:`Analysis` entry in :mod:`.registry`:

* ``compute(inputs) -> AnalysisResult``: data only. ``summary`` is small and
  JSON-able (it goes to ``analysis.json`` under the analysis' name, with its
  ``schema`` version), ``arrays`` are written to ``analysis.npz`` whatever
  their size, ``notes`` are plain sentences;
* ``render(result, inputs, figdir) -> [Figure]``: draws from the result alone;
* ``key_numbers(summary) -> [(label, text)]``: the numbers a report shows.

Schemas: ``analysis.json`` is ``csg.analysis/2``; each section has its own
``csg.analysis.<name>/<version>`` and documents its keys in its module. A
reader checks the version it knows (:func:`section`), never guesses keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import CsgError

#: the schema of analysis.json as a whole
SCHEMA = "csg.analysis/2"
#: matrices with more entries than this go to analysis.npz only (a 1000-class confusion is 1M numbers)
JSON_MATRIX_LIMIT = 4096


@dataclass
class AnalysisInputs:
    """Everything the analyses of one run read, loaded once.

    ``assignment``: boolean C x K, filter k belongs to class c by the method's own rule (CSG's gate
    > threshold, ICNN's category, PICNN's argmax of Q); None for runs without such a matrix.
    ``class_filter``: the matrix that orders filters in every figure (gate, else MI^T, else class means).
    """

    run_name: str
    pooled: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray | None
    gate: np.ndarray | None
    assignment: np.ndarray | None
    assignment_rule: str | None
    mi: np.ndarray | None
    class_names: list[str] | None
    class_filter: np.ndarray
    ordered_by: str
    order: np.ndarray
    owner: np.ndarray
    model: Any
    device: Any
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.head_weight.shape[0])

    @property
    def num_filters(self) -> int:
        return int(self.head_weight.shape[1])


@dataclass
class AnalysisResult:
    name: str
    schema: str
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Figure:
    """A drawn figure: its path relative to the run directory and a caption that reads on its own."""

    path: str
    caption: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "caption": self.caption}


@dataclass(frozen=True)
class Analysis:
    name: str
    title: str
    schema: str
    compute: Callable[[AnalysisInputs], AnalysisResult]
    render: Callable[[AnalysisResult, AnalysisInputs, Path], list[Figure]]
    key_numbers: Callable[[dict], list[tuple[str, str]]]


def small(arr) -> Any:
    """A matrix small enough for analysis.json, else a pointer to analysis.npz."""
    return arr if np.asarray(arr).size <= JSON_MATRIX_LIMIT else "in analysis.npz"


def figure(figdir: Path, name: str, caption: str) -> tuple[Path, Figure]:
    """The file to draw into and its :class:`Figure` record (``figures/<name>``)."""
    return figdir / name, Figure(f"{figdir.name}/{name}", caption)


def fmt(value, digits: int = 3) -> str:
    """A number for a label: fixed digits, ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def section(data: dict | None, name: str, schema: str) -> dict | None:
    """``analysis.json``'s section ``name`` if it has exactly ``schema``; None when absent.

    A section of another version is refused with one line (re-run ``csg analyze``), never read by guess.
    """
    if not data or name not in data or not isinstance(data[name], dict):
        return None
    got = data[name].get("schema")
    if got != schema:
        raise CsgError(f"analysis.json's {name} section has schema {got!r}, this csg reads {schema!r}; "
                       "re-run `csg analyze` on the run")
    return data[name]
