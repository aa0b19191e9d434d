"""CSG inside your own PyTorch Lightning training: ``CSGCallback`` (``pip install "csg[lightning]"``).

    trainer = pl.Trainer(max_epochs=10, callbacks=[CSGCallback(feature_layer="net.layer3", head="net.fc",
                                                               num_classes=10, out="runs/lit-csg",
                                                               data="fashion-mnist")])

Your LightningModule stays as it is: ``forward(images) -> logits``, ``training_step`` returns the
cross-entropy on those logits (the STD path's loss), ``configure_optimizers`` trains its own parameters.
The callback adds, per step and without changing your code (METHOD.md section 2, paper eq. 3):

* a C x K gate ``G`` on the feature layer ``feature_layer`` (a module inside the LightningModule whose output
  is ``A``, N x K x H x W); ``head`` names the ``nn.Linear(K, C)`` applied to ``mean_hw(A)``, exactly as in
  :class:`csg.core.model.GatedClassifier`, so the CSG path is ``head(mean_hw(A) * G[y])``;
* the loss ``lambda1 * CE(y, CSG logits) + lambda2 * psi(relu(||G||_1 - rho*C*K))``, built on the feature
  maps of your step's own forward and added to the loss your ``training_step`` returns in a joint epoch, or
  returned instead of it in a CSG epoch of the alternating schedule (Algorithm 1: a CSG epoch trains only
  the CSG terms), so Lightning's one backward pass (with its accumulation and precision) takes both; a STD
  epoch leaves your step untouched and the gate frozen;
* the gate's own Adam optimiser (``gate_lr``), stepped just before your optimiser steps, then the
  projection of :func:`csg.core.gate.project_columns_` (columns divided by their maximum, clipped to [0, 1]);
* at the end of ``fit``, a run directory ``out`` as ``csg train`` writes it: ``config.json`` (naming how to
  rebuild the model: your LightningModule class and its hyperparameters), ``checkpoint.safetensors``,
  ``log.jsonl``, ``gate.npy``, and, when ``evaluate``, ``csg evaluate``'s ``features.npz``, ``mi_matrix.npy``
  and ``metrics.json``, so ``csg evaluate / analyze / localize / report`` read it. ``data`` (and
  ``data_dir``) name the csg dataset whose test split evaluates the run (docs/data.md).

Limits (each refused with one line): manual optimisation, fp16 with a gradient scaler (bf16 and fp32
are fine) and more than one process (the CSG gradients are taken outside DDP's reducer).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.errors import CsgError
from ..core.gate import ClassSpecificGate, check_density
from ..core.hooks import resolve_module
from ..core.io import append_jsonl, atomic_save_npy, atomic_write_json
from ..core.model import GatedClassifier
from ..core.run_files import CHECKPOINT, CONFIG, GATE, LOG
from ..methods.csg import csg_loss
from ..methods.schedule import CSG, STD, epoch_phase
from ..training.checkpoint import save_checkpoint
from ..training.config import TrainConfig
from ..training.trainer import package_versions

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - exercised only without the extra
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise CsgError('csg.integrations.lightning needs PyTorch Lightning; install it with '
                       'pip install "csg[lightning]"') from None

from ..runs.rebuild import BUILDER_KEY, HEAD_KEY, KWARGS_KEY


def _labels_of(batch):
    return batch[1]


class CSGCallback(pl.Callback):
    """Adds the class-specific gate, its loss, projection and schedule to a LightningModule's training."""

    def __init__(self, feature_layer: str, head: str, num_classes: int, *, out: str | Path | None = None,
                 data: str | None = None, data_dir: str | None = None, test_subset: int | None = None,
                 rho: float | None = None, penalty: str = "l1", lambda1: float = 1.0, lambda2: float = 1e-3,
                 gate_init: float = 0.5, gate_lr: float = 0.05, schedule: str = "joint", period: int = 3,
                 csg_epochs: int = 1, warmup: int = 0, final_csg_epochs: int = 0,
                 labels: Callable[[Any], torch.Tensor] = _labels_of, evaluate: bool = True,
                 model_kwargs: dict | None = None, seed: int = 0):
        super().__init__()
        self.feature_layer, self.head_name, self.num_classes = feature_layer, head, int(num_classes)
        self.rho = check_density(rho if rho is not None else 1.0 / num_classes, num_classes)
        self.penalty, self.lambda1, self.lambda2 = penalty, float(lambda1), float(lambda2)
        self.gate_init, self.gate_lr = float(gate_init), float(gate_lr)
        if schedule not in ("joint", "alternate"):
            raise CsgError(f"CSGCallback schedule {schedule!r}: choose joint or alternate")
        self.schedule = dict(schedule=schedule, period=int(period), csg_epochs=int(csg_epochs), warmup=int(warmup),
                             final_csg_epochs=int(final_csg_epochs))
        self.out = None if out is None else Path(out)
        self.data, self.data_dir, self.test_subset = data, data_dir, test_subset
        self.labels_of, self.evaluate, self.model_kwargs, self.seed = labels, evaluate, model_kwargs, seed
        self.gate: ClassSpecificGate | None = None
        self.phase = STD
        self._maps = self._labels = None
        self._handle = None
        self._wrapped = None  # the module whose training_step carries the CSG terms during fit
        self._log: list[dict] = []

    # ---- set-up --------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if not pl_module.automatic_optimization:
            raise CsgError("CSGCallback needs automatic optimisation (self.automatic_optimization = True)")
        if "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
            raise CsgError(f"CSGCallback: precision {trainer.precision!r} scales your loss only; use 32 or bf16-mixed")
        if trainer.world_size > 1:
            raise CsgError("CSGCallback runs in one process: its gradients are taken outside DDP's reducer")
        feature = resolve_module(pl_module, self.feature_layer)
        head = resolve_module(pl_module, self.head_name)
        if not isinstance(head, torch.nn.Linear) or head.out_features != self.num_classes:
            raise CsgError(f"head {self.head_name!r} must be an nn.Linear with {self.num_classes} outputs, "
                           f"got {head}")
        if self.gate is None:  # a restored callback state (load_state_dict) keeps its gate
            self.gate = ClassSpecificGate(self.num_classes, head.in_features, init=self.gate_init)
        self.gate.to(pl_module.device)
        # the gate is the callback's, not the module's: your configure_optimizers never sees it
        self.gate_optimizer = torch.optim.Adam([self.gate.weight], lr=self.gate_lr)
        self._handle = feature.register_forward_hook(self._capture)
        self._wrap_training_step(pl_module)

    def _wrap_training_step(self, pl_module) -> None:
        """Your ``training_step``, returning the loss of the phase (an instance attribute, removed after fit)."""
        own = pl_module.training_step

        def training_step(*args, **kwargs):
            out = own(*args, **kwargs)
            loss = out.get("loss") if isinstance(out, dict) else out
            term = self._csg_term(pl_module) if torch.is_tensor(loss) else None
            if term is None:
                return out
            loss = term if self.phase == CSG else loss + term
            return {**out, "loss": loss} if isinstance(out, dict) else loss

        pl_module.training_step = training_step
        self._wrapped = pl_module

    def _unwrap(self) -> None:
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("training_step", None)
            self._wrapped = None
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _capture(self, module, inputs, output) -> None:
        # the feature maps of the training forward, for the CSG path of this step's loss
        if module.training and self.phase != STD and torch.is_grad_enabled():
            self._maps = output

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.phase = epoch_phase(trainer.current_epoch, epochs=trainer.max_epochs, **self.schedule)
        self.gate.weight.requires_grad_(self.phase != STD)
        self._sums = torch.zeros(5, dtype=torch.float64, device=pl_module.device)  # n, ce, pen, correct, steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._labels = self.labels_of(batch)
        self._maps = None

    # ---- the CSG terms -------------------------------------------------------
    def _csg_term(self, pl_module) -> torch.Tensor | None:
        """``lambda1 CE(y, head(mean_hw(A) * G[y])) + lambda2 psi(...)`` on this step's maps, or ``None``."""
        if self.phase == STD or self._maps is None:
            return None
        head = resolve_module(pl_module, self.head_name)
        labels = self._labels.to(self._maps.device)
        csg_logits = head(self.gate(self._maps.mean(dim=(2, 3)), labels))
        # the CSG-phase terms of csg_loss; the user's own loss is the STD cross-entropy of a joint step
        term, parts = csg_loss(None, csg_logits, labels, self.gate.weight, phase=CSG, rho=self.rho,
                               lambda1=self.lambda1, lambda2=self.lambda2, penalty=self.penalty)
        ce, pen = parts["ce_csg"], parts["penalty"]
        n = labels.shape[0]
        self._sums += torch.stack([torch.tensor(float(n), device=self._sums.device, dtype=torch.float64),
                                   ce.detach().double() * n, pen.detach().double() * n,
                                   (csg_logits.argmax(1) == labels).sum().double(),
                                   torch.ones((), dtype=torch.float64, device=self._sums.device)])
        self._maps = None
        return term

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.phase == STD or self.gate.weight.grad is None:
            return
        self.gate_optimizer.step()
        self.gate_optimizer.zero_grad(set_to_none=True)
        self.gate.project_()  # back onto the constraint set after every step

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        n, ce, pen, correct, _ = self._sums.tolist()
        record: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "phase": self.phase}
        if n:
            record.update(ce_csg=ce / n, penalty=pen / n, train_csg_accuracy=correct / n)
        for key in ("train_loss", "loss"):
            if key in trainer.callback_metrics:
                record["loss"] = float(trainer.callback_metrics[key])
                break
        record.update(l1_density=self.gate.l1_density(), gate_lr=self.gate_lr)
        self._log.append(record)

    # ---- the run directory ---------------------------------------------------
    def on_exception(self, trainer, pl_module, exception) -> None:
        self._unwrap()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._unwrap()
        if self.out is not None and trainer.is_global_zero:
            self.write_run(pl_module, self.out)

    def gated_model(self, pl_module) -> GatedClassifier:
        """The LightningModule as a :class:`GatedClassifier` with the trained gate (shares its weights)."""
        model = GatedClassifier(pl_module, self.feature_layer, self.num_classes, head=self.head_name,
                                gate=self.gate)
        return model.to(pl_module.device)

    def _config(self, pl_module, model: GatedClassifier, epochs: int) -> dict[str, Any]:
        cls = type(pl_module)
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            raise CsgError(f"{cls.__qualname__} is defined in {cls.__module__!r}: csg evaluate rebuilds the model "
                           "by importing its class, so define it in a module of its own")
        kwargs = dict(self.model_kwargs) if self.model_kwargs is not None else dict(getattr(pl_module, "hparams", {}))
        cfg = TrainConfig(data=self.data or "", data_dir=self.data_dir, test_subset=self.test_subset,
                          arch="lightning", method="csg", seed=self.seed, epochs=epochs, rho=self.rho,
                          penalty=self.penalty, lambda1=self.lambda1, lambda2=self.lambda2,
                          gate_init=self.gate_init, gate_lr=self.gate_lr, out=str(self.out),
                          **self.schedule).to_dict()
        cfg.update({BUILDER_KEY: f"{cls.__module__}:{cls.__qualname__}", KWARGS_KEY: kwargs,
                    HEAD_KEY: self.head_name, "feature_layer": self.feature_layer, "num_classes": self.num_classes,
                    "num_filters": model.num_filters, "input_mean": [0.0], "input_std": [1.0],
                    "versions": {**package_versions(), "pytorch-lightning": pl.__version__},
                    "command": " ".join(sys.argv)})
        if self.data:
            from ..data import load_dataset

            test = load_dataset(self.data, "test", data_dir=self.data_dir, subset=self.test_subset, seed=self.seed)
            cfg.update(in_channels=test.in_channels, image_size=list(test.image_size), classes=list(test.classes))
        return cfg

    def write_run(self, pl_module, out: str | Path):
        """Write ``out`` as a run directory; returns its :class:`csg.RunDir` (evaluated when asked)."""
        from ..runs.evaluate import evaluate_run
        from ..runs.rundir import RunDir

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model = self.gated_model(pl_module)
        epochs = max(len(self._log), 1)
        atomic_write_json(out / CONFIG, self._config(pl_module, model, epochs))
        save_checkpoint(out / CHECKPOINT, model, meta={"epoch": epochs, "method": "csg", "source": "lightning"})
        if (out / LOG).exists():
            (out / LOG).unlink()
        for record in self._log:
            append_jsonl(out / LOG, {k: v for k, v in record.items()
                                     if not (isinstance(v, float) and not math.isfinite(v))})
        atomic_save_npy(out / GATE, self.gate.weight.detach().cpu().numpy().astype(np.float32))
        run = RunDir(out)
        if self.evaluate and self.data:
            was_training = pl_module.training
            evaluate_run(run, device=pl_module.device, model=model, progress=False)
            pl_module.train(was_training)
        return run

    # ---- Lightning checkpoints carry the gate --------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"gate": None if self.gate is None else self.gate.weight.detach().cpu(), "log": list(self._log)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("gate") is not None:
            w = state_dict["gate"]
            self.gate = ClassSpecificGate(w.shape[0], w.shape[1], init=self.gate_init)
            self.gate.weight.data.copy_(w)
        self._log = list(state_dict.get("log", []))

