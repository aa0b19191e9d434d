"""csg: train CNNs whose filters are class-specific, and measure how interpretable they are."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import CsgError
from .gate import ClassSpecificGate, fixed_layout, gate_penalty, project_columns_
from .hooks import capture_outputs, resolve_module
from .model import GatedClassifier, ModelOutput, build_model
from .rundir import RunDir

__all__ = [
    "__version__",
    "CsgError",
    "ClassSpecificGate",
    "fixed_layout",
    "gate_penalty",
    "project_columns_",
    "capture_outputs",
    "resolve_module",
    "GatedClassifier",
    "ModelOutput",
    "build_model",
    "RunDir",
]
