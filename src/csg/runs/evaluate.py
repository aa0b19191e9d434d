"""One evaluation pass that captures everything the analyses need, once."""
from __future__ import annotations

import numpy as np

from ..core.inference import capture_features
from ..core.run_files import FEATURES, GATE, MI_MATRIX
from ..methods import build_method
from ..metrics import (gate_activation_agreement, gate_mi_agreement, mis, mis_ceiling, mutual_information_matrix,
                       per_class_accuracy)
from ..training.config import TrainConfig
from ..core.model import GatedClassifier


def evaluate_run(run, *, device="cpu", batch_size: int | None = None, progress: bool | None = None,
                 model: GatedClassifier | None = None, dataset=None) -> dict:
    """``csg evaluate``: capture the test split once and write the run's measurements.

    Writes ``features.npz`` (``pooled``, ``labels``, ``predictions``, ``logits``),
    ``mi_matrix.npy`` (K x C), ``gate.npy`` for gated runs and merges into
    ``metrics.json``: ``accuracy``, ``num_classes``, ``num_filters``,
    ``num_samples``, ``per_class_accuracy``, ``mis``, ``mis_ceiling`` and, for
    gated runs, ``csg_accuracy``, ``l1_density``, ``l1_interval``,
    ``gate_mi_agreement`` and ``gate_activation_agreement`` (the gate's class against the class of each
    filter's largest mean activation). ``dataset``: the test images to use instead of the run's test split
    (a torch ``Dataset`` of ``(image, label)``, a ``DataLoader`` or a csg dataset); a run trained on data
    passed from Python needs it.
    """
    raw = run.config
    cfg = TrainConfig.from_dict(raw)
    if model is None:
        model = run.load_model(device)
    with run.lock("evaluating"):
        return _evaluate(run, cfg, model, device, batch_size, progress, dataset)


def _evaluate(run, cfg, model, device, batch_size, progress, dataset=None) -> dict:
    model.to(device).eval()
    test_set = run.dataset(dataset, "test", subset=cfg.test_subset, seed=cfg.seed)
    captured = capture_features(model, test_set, batch_size=batch_size or cfg.eval_batch_size, device=device,
                                progress=progress is not False)
    labels, predictions = captured["labels"], captured["predictions"]
    run.write_npz(FEATURES, pooled=captured["pooled"], labels=labels, predictions=predictions,
                  logits=captured["logits"])
    C = model.num_classes
    mi = mutual_information_matrix(captured["pooled"], labels, num_classes=C)
    run.write_npy(MI_MATRIX, mi.astype(np.float32))
    metrics = {
        "method": cfg.method,
        "accuracy": float((predictions == labels).mean()),
        "num_classes": C,
        "num_filters": model.num_filters,
        "num_samples": int(labels.shape[0]),
        "per_class_accuracy": per_class_accuracy(predictions, labels, C).tolist(),
        "mis": float(mis(mi)),
        "mis_ceiling": float(mis_ceiling(labels=labels, num_classes=C)),
    }
    method = build_method(cfg, C)
    gate = method.gate_matrix(model)
    if gate is not None:
        run.write_npy(GATE, gate)
        metrics["gate_mi_agreement"] = float(gate_mi_agreement(gate, mi))
        metrics["gate_activation_agreement"] = float(gate_activation_agreement(gate, captured["pooled"], labels))
    if "csg_predictions" in captured:
        metrics["csg_accuracy"] = float((captured["csg_predictions"] == labels).mean())
    metrics.update(method.evaluation_metrics(model, test_set, batch_size=cfg.eval_batch_size, device=device))
    return run.update_metrics(metrics)
