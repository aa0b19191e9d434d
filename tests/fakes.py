"""Fakes shared by the tests: a synthetic run directory, a tiny gated model and bar images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from csg.core.model import GatedClassifier


# ---------------------------------------------------------------------------------------------
# a synthetic run directory (no training, no dataset): a random resnet20 with a planted gate
# ---------------------------------------------------------------------------------------------
def make_fake_run(path: Path, method: str = "csg", seed: int = 0, n_per_class: int = 10) -> Path:
    """A run directory with config, checkpoint, features, gate, MI matrix, metrics and log,
    built from an untrained resnet20 on bar images (fast: no training)."""
    from conftest import make_bar_images
    from csg.core.io import append_jsonl
    from csg.methods import build_method
    from csg.backbones import build_model
    from csg.runs.rundir import RunDir
    from csg.training.checkpoint import save_checkpoint
    from csg.training.config import TrainConfig

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    C = 10
    cfg = TrainConfig(method=method, seed=seed, epochs=3, arch="resnet20")
    model = build_model("resnet20", C, 1, input_mean=[0.3], input_std=[0.3])
    gated = method.startswith("csg")
    if gated:
        build_method(cfg, 10).attach(model)
        g = torch.full((C, model.num_filters), 0.05)
        owner = torch.arange(model.num_filters) % C
        g[owner, torch.arange(model.num_filters)] = 1.0
        model.gate.weight.data.copy_(g)
    model.eval()
    save_checkpoint(path / "checkpoint.safetensors", model)
    raw = cfg.to_dict()
    raw.update(num_classes=C, in_channels=1, input_mean=[0.3], input_std=[0.3], num_filters=model.num_filters,
               classes=[f"class{c}" for c in range(C)], feature_layer=model.feature_layer)
    run = RunDir(path, must_exist=False)
    run.write_json("config.json", raw)
    images, labels = make_bar_images(n_per_class, seed=seed + 5)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.no_grad():
        out = model(x)
    pooled, logits = out.pooled.numpy(), out.logits.numpy()
    labels = labels.astype(np.int64)
    run.write_npz("features.npz", pooled=pooled, labels=labels, predictions=logits.argmax(1), logits=logits)
    # a cheap stand-in for the MI matrix (K x C, non-negative): how far each class mean sits from the rest
    onehot = np.eye(C)[labels]
    mu = onehot.T @ pooled / onehot.sum(0)[:, None]
    mi = (np.abs(mu - pooled.mean(0)) / (pooled.std(0) + 1e-6)).T * 0.05
    run.write_npy("mi_matrix.npy", mi.astype(np.float32))
    metrics = {"method": method, "accuracy": float((logits.argmax(1) == labels).mean()), "num_classes": C,
               "num_filters": model.num_filters, "mis": float(mi.max(1).mean()), "mis_ceiling": 0.325}
    if gated:
        gate = model.gate.weight.detach().numpy()
        run.write_npy("gate.npy", gate)
        metrics.update(l1_density=float(gate.mean()), rho=0.1, l1_interval=[0.1, 0.1],
                       gate_mi_agreement=float((gate.argmax(0) == mi.argmax(1)).mean()))
    run.write_json("metrics.json", metrics)
    for e in range(3):
        append_jsonl(path / "log.jsonl", {"epoch": e, "phase": "csg" if gated and e == 2 else "std",
                                          "loss": 2.0 - 0.3 * e, "train_accuracy": 0.2 + 0.2 * e,
                                          "test_accuracy": 0.15 + 0.2 * e, "lr": 0.1 / (e + 1),
                                          **({"l1_density": 0.5 - 0.1 * e} if gated else {})})
    return path


def tiny_model(num_classes=4, seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1, stride=2),
                             nn.ReLU())
    return GatedClassifier(backbone, "3", num_classes, num_filters=12)


def bar_data(n_per_class=16, num_classes=4, size=12, seed=0):
    """Class c is a bright bar in rows 3c..3c+1 over faint noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    images = torch.rand(labels.numel(), 1, size, size, generator=g) * 0.2
    for c in range(num_classes):
        images[labels == c, 0, 3 * c:3 * c + 2, 2:-2] = 0.9
    return images, labels


class TinySet:
    """The part of a csg dataset that the methods' evaluation uses: ``len``, ``num_classes``, ``batches``."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.num_classes = int(labels.max()) + 1

    def __len__(self):
        return self.labels.numel()

    def batches(self, batch_size, shuffle=False, generator=None, device="cpu", augment=None, **kw):
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size].to(device), self.labels[i:i + batch_size].to(device)
