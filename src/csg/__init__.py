"""csg: train CNNs whose filters are class-specific, and measure how interpretable they are."""
from __future__ import annotations

from .core.version import __version__

from .core.errors import CsgError
from .core.gate import ClassSpecificGate, fixed_layout, gate_penalty, project_columns_
from .core.hooks import capture_outputs, resolve_module
from .backbones import build_model
from .core.model import GatedClassifier, ModelOutput, unwrap
from .runs.rundir import RunDir

# The rest of the public API, imported on first use so `import csg` stays light
# (metrics pull SciPy, reports matplotlib).
_LAZY = {
    "TrainConfig": "csg.training.config", "resolve_config": "csg.training.config", "train": "csg.runs.train",
    "evaluate_run": "csg.runs.evaluate", "csg_loss": "csg.methods.csg", "picnn_loss": "csg.methods.picnn", "load_model_from_run": "csg.runs.rebuild",
    "load_dataset": "csg.data", "dataset_options": "csg.data", "as_image_dataset": "csg.data", "SpeedPolicy": "csg.training.speed",
    "mutual_information_matrix": "csg.metrics", "mis": "csg.metrics", "mis_ceiling": "csg.metrics",
    "gap_closed": "csg.metrics", "l1_density": "csg.metrics", "gate_mi_agreement": "csg.metrics",
    "build_method": "csg.methods", "icnn_filter_loss": "csg.methods.icnn",
    "ICNNMethod": "csg.methods.icnn", "PICNNMethod": "csg.methods.picnn",
    "run_analyses": "csg.analysis", "build_run_report": "csg.report", "compare_runs": "csg.report",
    "localize_run": "csg.localization", "attack_run": "csg.adversarial", "explain_run": "csg.explain",
    "explanatory_graph": "csg.graph", "graph_run": "csg.graph",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'csg' has no attribute {name!r}")

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
    "unwrap",
    "RunDir",
    *sorted(_LAZY),
]
