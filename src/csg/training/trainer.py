"""The single training loop that serves every method.

Per epoch: pick the phase (STD / CSG / joint), set the learning rates and what
the phase trains, run the batches (seeded per epoch so an epoch can be replayed
exactly), step the optimisers, let the method project its gate, evaluate,
append one JSON line to ``log.jsonl`` and write the checkpoint atomically.
``resume`` continues from the last checkpoint and ends at bit-identical weights
to an uninterrupted run; a run killed before its first checkpoint starts again
from the beginning (the same seeds give the same run).

The loop writes its output folder through :mod:`csg.core.io` with the names of
:mod:`csg.core.run_files`; the run directory as an object (:class:`csg.RunDir`)
belongs to the layer above (:func:`csg.train` returns one).
"""
from __future__ import annotations

import errno
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.version import __version__
from ..core.device import resolve_device
from ..core.errors import CsgError
from ..core.hooks import resolve_module
from ..core.io import append_jsonl, atomic_save_npy, atomic_write_bytes, atomic_write_json, read_json, read_jsonl
from ..core.lock import RunLock
from ..backbones import build_model
from ..core.model import GatedClassifier
from ..core.run_files import CHECKPOINT, CONFIG, GATE, LOG, TENSORBOARD_DIR
from ..core.named_model import build_named_model, import_builder
from ..data import (PYTHON_SOURCE, Augment, as_image_dataset, available_datasets, dataset_options, is_csg_dataset,
                    load_dataset)
from ..methods import build_method
from ..methods.schedule import STD
from ..metrics import mutual_information_matrix
from .checkpoint import restore_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistContext, capture_features_sharded, init_distributed
from .optim import build_optimizers, set_epoch_lrs
from .speed import SpeedPolicy
from .tensorboard import TensorBoardLog, summary_writer_class

# Config keys that may change on --resume without changing the result's meaning.
_RESUMABLE_CHANGES = {"device", "threads", "out", "evaluate", "eval_every", "checkpoint_every", "epochs",
                      "eval_batch_size", "channels_last", "amp", "compile", "workers", "tensorboard"}

#: config keys of a user's network (--model): compared on --resume only when a run has one
_MODEL_ONLY = {"model_kwargs", "feature_layer", "head"}


#: batches timed before the up-front estimate of the training time
ESTIMATE_AFTER = 20


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's data order and augmentation (distinct, reproducible)."""
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**63 - 1)


def package_versions() -> dict[str, str]:
    import numpy
    import sklearn

    return {"csg": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def set_trainable(model: GatedClassifier, below: str | None) -> None:
    """Freeze every backbone parameter registered before the module ``below`` (None: train all)."""
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    if below is None:
        return
    resolve_module(model.backbone, below)  # clear error for an unknown name
    for name, p in model.backbone.named_parameters():
        if name == below or name.startswith(below + "."):
            break
        p.requires_grad_(False)


def unreachable_parameters(model: GatedClassifier, images: torch.Tensor, labels: torch.Tensor,
                           used_elsewhere=()) -> list[torch.nn.Parameter]:
    """Parameters no output of ``model(images, labels)`` depends on (e.g. layers after the feature
    layer that are not the head), found by one gradient pass in eval mode (no state changes)."""
    params = [p for p in model.parameters() if p.requires_grad]
    outside = {id(p) for p in used_elsewhere}
    was_training = model.training
    model.eval()
    try:
        out = model(images, labels if model.gate is not None else None)
        total = out.logits.sum() + out.maps.sum() + (out.csg_logits.sum() if out.csg_logits is not None else 0)
        grads = torch.autograd.grad(total, params, allow_unused=True)
    finally:
        model.train(was_training)
    return [p for p, g in zip(params, grads) if g is None and id(p) not in outside]


def _no_space(exc: OSError) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class EpochSums:
    """Running sums of an epoch's scalars, kept on the device (no host synchronisation per step)."""

    def __init__(self, device, start: dict[str, float] | None = None):
        self.device = device
        self.sums = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in (start or {}).items()}

    def add(self, key: str, value) -> None:
        if torch.is_tensor(value):
            value = value.detach().to(self.device, torch.float64)
        else:
            value = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def get(self, key: str, default: float = 0.0) -> float:
        return float(self.sums[key]) if key in self.sums else default

    def reduced(self, dist: DistContext) -> dict[str, float]:
        """The sums over all ranks (every rank calls it, in the same key order)."""
        return {k: float(dist.all_reduce_sum(v)) for k, v in sorted(self.sums.items())}


class Trainer:
    """Train ``cfg.method`` on ``cfg.data`` into the output folder ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None,
                 model: GatedClassifier | None = None, train_set=None, test_set=None):
        if cfg.out is None:
            raise CsgError("--out RUN is required: the run directory to write")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress = progress
        self.dist: DistContext = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device) if not self.dist.enabled else self.dist.device
        if cfg.batch_size % self.dist.world_size:
            raise CsgError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over the "
                           f"{self.dist.world_size} processes; use a multiple of {self.dist.world_size}")
        # --batch-size is the global batch: each of the W ranks takes B / W images per step
        self.rank_batch_size = cfg.batch_size // self.dist.world_size
        self.speed = SpeedPolicy.choose(self.device, amp=cfg.amp, channels_last=cfg.channels_last,
                                        compile=cfg.compile, threads=cfg.threads)
        self.speed.apply_threads()
        self.tensorboard: TensorBoardLog | None = None
        if cfg.tensorboard and self.dist.is_main:
            summary_writer_class()  # a missing tensorboard package fails now, before the data is loaded
        self.lock = RunLock(self.out, what="training") if self.dist.is_main else None
        if self.lock is not None:
            self.lock.__enter__()
        try:
            self.resume = self._check_resume(resume)
            self._setup(model, train_set, test_set)
        except BaseException:
            self.release()
            raise

    def _setup(self, model, train_set, test_set) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        if model is None and cfg.model_builder:
            import_builder(cfg.model_builder)  # an unimportable --model fails before any data is read
        # a user's torch Dataset or DataLoader is read once into csg's in-memory set; csg's own sets pass as
        # they are (the fast path); a run trained on such data records data_source = "python"
        self.data_source = "name"
        if any(d is not None and not (is_csg_dataset(d) and getattr(d, "name", None) in available_datasets())
               for d in (train_set, test_set)):
            self.data_source = PYTHON_SOURCE  # commands cannot reload it by cfg.data
        if train_set is not None and not is_csg_dataset(train_set):
            train_set = as_image_dataset(train_set, name="train_set")
        if test_set is not None and not is_csg_dataset(test_set):
            # the test set takes the training set's classes and normalisation when there is one
            like = {} if train_set is None else dict(num_classes=train_set.num_classes, classes=list(train_set.classes),
                                                     mean=train_set.mean, std=train_set.std)
            test_set = as_image_dataset(test_set, name="test_set", **like)
        if self.data_source == PYTHON_SOURCE and (train_set is None or test_set is None):
            missing = "test_set" if test_set is None else "train_set"
            raise CsgError(f"{missing} is missing: with your own data give both train_set= and test_set= "
                           f"(a Dataset or DataLoader each), not one of them with --data {cfg.data}")
        options = dataset_options(cfg.data, image_size=cfg.resize, workers=cfg.workers) \
            if train_set is None or test_set is None else {}
        self.train_set = train_set if train_set is not None else load_dataset(
            cfg.data, "train", data_dir=cfg.data_dir, subset=cfg.subset, seed=cfg.seed, **options)
        self.test_set = test_set if test_set is not None else load_dataset(
            cfg.data, "test", data_dir=cfg.data_dir, subset=cfg.test_subset, seed=cfg.seed, **options)
        self._check_data()
        self.method = build_method(cfg, self.train_set.num_classes)
        self.model_object = None  # "module:Class" of a network object passed from Python, which commands cannot rebuild
        if model is None and cfg.model_builder:
            model = build_named_model(cfg.to_dict(), num_classes=self.train_set.num_classes,
                                      in_channels=self.train_set.in_channels, image_size=self.train_set.image_size,
                                      input_mean=self.train_set.mean, input_std=self.train_set.std)
        elif model is None:
            model = build_model(cfg.arch, self.train_set.num_classes, self.train_set.in_channels,
                                input_mean=self.train_set.mean, input_std=self.train_set.std,
                                small_input=cfg.small_input)
        elif not cfg.model_builder:
            # a network object from Python: commands cannot rebuild it, so the run says what it was
            net = getattr(model, "backbone", model)
            self.model_object = f"{type(net).__module__}:{type(net).__qualname__}"
        if model.num_classes != self.train_set.num_classes:
            raise CsgError(f"the model has {model.num_classes} classes but {cfg.data} has "
                           f"{self.train_set.num_classes}; build it with num_classes={self.train_set.num_classes}")
        self.model = model
        self.method.attach(self.model)
        self.model.to(self.device)
        self.augment = Augment(crop_padding=cfg.crop_padding, hflip=cfg.hflip)
        self.optimizers = build_optimizers(cfg, self.model, self.method)
        # memory format in place (same parameters); with --compile the forward runs the compiled module
        self.forward_model = self.speed.prepare_model(self.model)
        self.never_reached: list[torch.nn.Parameter] = []
        if self.dist.enabled:
            self.dist.prepare(self.model)
            probe = next(iter(self.test_set.batches(2, shuffle=False, device=self.device)))
            self.never_reached = unreachable_parameters(self.model, *probe,
                                                        self.method.parameters_outside_forward(self.model))
        self.start_epoch = 0
        self.start_batch = 0
        self.partial: dict[str, float] = {}

    def release(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None

    # ---- set-up --------------------------------------------------------------
    def _check_resume(self, resume: bool) -> bool:
        """Whether to continue from a checkpoint (``--resume`` of a run killed before its first one
        starts it again from the beginning, after the same check of its settings)."""
        ckpt = self.out / CHECKPOINT
        config = self.out / CONFIG
        if resume:
            if config.is_file():
                old = TrainConfig.from_dict(read_json(config)).to_dict()
                new = self.cfg.to_dict()
                # every run's config.json records its feature_layer (and head); they are settings only of a
                # run with --model, so a registered --arch run never sees them as changed
                skip = set() if new.get("model_builder") or old.get("model_builder") else _MODEL_ONLY
                changed = [k for k in new if k not in _RESUMABLE_CHANGES | skip and old.get(k) != new[k]]
                if changed:
                    k = changed[0]
                    raise CsgError(f"--resume: {k} was {old.get(k)!r} in {self.out} but is now {new[k]!r}; "
                                   "resume with the same settings or train into a new --out")
            if not ckpt.is_file():
                if self.dist.is_main:
                    print(f"note: {self.out} has no checkpoint yet (stopped before its first epoch ended); "
                          "training it from the beginning", file=sys.stderr, flush=True)
                return False
            return True
        if ckpt.is_file() and self.dist.is_main:
            raise CsgError(f"{self.out} already holds a run; continue it with --resume or choose another --out")
        return False

    def _check_data(self) -> None:
        if self.train_set.num_classes != self.test_set.num_classes:
            raise CsgError(f"{self.cfg.data}: train split has {self.train_set.num_classes} classes but the test "
                           f"split has {self.test_set.num_classes}")
        train_shape = (self.train_set.in_channels, *self.train_set.image_size)
        test_shape = (self.test_set.in_channels, *self.test_set.image_size)
        if train_shape != test_shape:
            raise CsgError(f"{self.cfg.data}: train images are {train_shape} but test images are {test_shape}")

    def _enter_phase(self, phase: str) -> torch.nn.Module:
        """Set what ``phase`` trains and return the module its steps call (a DDP wrapper per trainable set)."""
        cfg = self.cfg
        below = cfg.csg_freeze_below if (phase != STD and cfg.csg_freeze_below) else cfg.freeze_below
        set_trainable(self.model, below)
        self.method.set_phase(self.model, phase)
        for p in self.never_reached:
            p.requires_grad_(False)
        return self.dist.wrap(self.forward_model)

    def _config_record(self) -> dict[str, Any]:
        cfg = self.cfg.to_dict()
        cfg.update(num_classes=self.train_set.num_classes, in_channels=self.train_set.in_channels,
                   image_size=list(self.train_set.image_size), classes=list(self.train_set.classes),
                   input_mean=list(self.train_set.mean), input_std=list(self.train_set.std),
                   num_filters=self.model.num_filters, feature_layer=self.model.feature_layer,
                   train_size=len(self.train_set), test_size=len(self.test_set), data_source=self.data_source,
                   model_object=self.model_object,
                   versions=package_versions(), command=" ".join(sys.argv))
        return cfg

    # ---- writing (rank 0) ----------------------------------------------------
    def _write(self, what: str, write) -> None:
        """Run one write; a full disk becomes one line that says the last checkpoint is intact."""
        try:
            write()
        except OSError as exc:
            if not _no_space(exc):
                raise
            done = self.start_epoch_done()
            raise CsgError(f"no space left on the device while writing {what} in {self.out}; the last good "
                           f"checkpoint ({done}) is intact: free some space and continue with --resume") from None

    def start_epoch_done(self) -> str:
        ckpt = self.out / CHECKPOINT
        return f"{ckpt.name}, {self._epochs_done} epochs" if ckpt.is_file() else "none yet: the run starts again"

    def _save(self, epoch: int, next_batch: int, partial: dict) -> None:
        self._write(CHECKPOINT, lambda: save_checkpoint(
            self.out / CHECKPOINT, self.model, self.optimizers,
            meta={"epoch": epoch, "next_batch": next_batch, "partial": partial, "method": self.cfg.method}))
        self._epochs_done = epoch

    def _truncate_log(self, epochs_done: int) -> None:
        path = self.out / LOG
        if not path.is_file():
            return
        keep = [r for r in read_jsonl(path) if r.get("epoch", 0) <= epochs_done]
        self._write(LOG, lambda: atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode()))

    # ---- running -------------------------------------------------------------
    def fit(self) -> Path:
        cfg = self.cfg
        self._epochs_done = 0
        if self.resume:
            meta = restore_checkpoint(self.out / CHECKPOINT, self.model, self.optimizers)
            self.start_epoch = self._epochs_done = int(meta["epoch"])
            self.start_batch = int(meta.get("next_batch", 0))
            self.partial = meta.get("partial", {})
            if self.dist.is_main:
                self._truncate_log(self.start_epoch)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write(CONFIG, lambda: atomic_write_json(self.out / CONFIG, self._config_record()))
            if not self.resume and (self.out / LOG).exists():
                (self.out / LOG).unlink()
            if cfg.tensorboard:
                # on --resume, events at or after the first epoch trained again are dropped (purge_step)
                self.tensorboard = TensorBoardLog(self.out / TENSORBOARD_DIR,
                                                  purge_step=self.start_epoch + 1 if self.resume else None)
        for epoch in range(self.start_epoch, cfg.epochs):
            self._last_mi = None
            record = self._train_epoch(epoch)
            if self.dist.is_main:
                self._save(epoch + 1, 0, {})
                self._write(LOG, lambda: append_jsonl(self.out / LOG, record))
                if self.tensorboard is not None:
                    self.tensorboard.epoch(record, self.method.gate_matrix(self.model), self._last_mi)
            self.start_batch, self.partial = 0, {}
        if self.dist.is_main:
            gate = self.method.gate_matrix(self.model)
            if gate is not None:
                self._write(GATE, lambda: atomic_save_npy(self.out / GATE, gate))
            if not self.method.trains_gate(cfg.epochs):
                # e.g. a 2-epoch smoke run with the default 2 warm-up epochs: the gate kept its initial value
                print(f"note: this schedule had no CSG epoch (--warmup {cfg.warmup}, --epochs {cfg.epochs}): the "
                      "gated path was never trained; lower --warmup or train for more epochs", file=sys.stderr,
                      flush=True)
        self.dist.barrier()
        return self.out

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        phase = self.method.phase(epoch)
        lrs = set_epoch_lrs(self.optimizers, cfg, epoch, phase)
        model = self._enter_phase(phase)
        model.train()
        generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        batches = self.train_set.batches(self.rank_batch_size, shuffle=True, generator=generator, device=self.device,
                                         augment=self.augment, drop_last=False, start_batch=self.start_batch,
                                         **self._shard_kwargs())
        n_total = self._num_batches()
        # a mid-epoch checkpoint holds the sums over all ranks: rank 0 carries them, the others restart at 0
        sums = EpochSums(self.device, self.partial if self.dist.is_main else {k: 0.0 for k in self.partial})
        bar = tqdm(total=n_total, initial=self.start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs} [{phase}]",
                   leave=False, disable=self._progress_disabled(), dynamic_ncols=True)
        start = time.perf_counter()
        seen = 0
        batch_index = self.start_batch
        # on a GPU the finiteness check is deferred (a flag on the device, read every 10 batches, before each
        # checkpoint and at the end of the epoch); on the CPU it is free and runs every step
        lazy = self.device.type == "cuda"
        bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        show = not bar.disable
        for images, labels in batches:
            out = self._step(model, images, labels, phase, epoch, batch_index, lazy)
            if lazy:
                bad = torch.where((bad < 0) & ~torch.isfinite(out.loss.detach()), batch_index, bad)
            n = labels.shape[0]
            seen += n
            self._accumulate(sums, out, labels)
            batch_index += 1
            bar.update(1)
            if self.dist.is_main and epoch == self.start_epoch and batch_index - self.start_batch == ESTIMATE_AFTER:
                self._print_estimate(epoch, time.perf_counter() - start, n_total)
            checkpoint = bool(cfg.checkpoint_every and batch_index % cfg.checkpoint_every == 0
                              and batch_index < n_total)
            if lazy and (batch_index % 10 == 0 or checkpoint) and int(bad) >= 0:
                self._nonfinite(epoch, int(bad), math.nan)
            if show and (batch_index % 10 == 0 or batch_index == n_total):
                bar.set_postfix(loss=f"{sums.get('loss') / max(sums.get('n'), 1):.3f}",
                                acc=f"{sums.get('correct') / max(sums.get('n_std', 1), 1):.3f}")
            if checkpoint:
                partial = sums.reduced(self.dist)
                if self.dist.is_main:
                    self._save(epoch, batch_index, partial)
        bar.close()
        if lazy and int(bad) >= 0:
            self._nonfinite(epoch, int(bad), math.nan)
        seconds = time.perf_counter() - start
        record = self._epoch_record(epoch, phase, sums.reduced(self.dist), lrs)
        record["seconds"] = seconds
        record["images_per_second"] = seen * self.dist.world_size / seconds if seconds > 0 else None
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            record.update(self._quick_eval())
        if self.dist.is_main:
            self._print_epoch(record)
        return record

    def _step(self, model, images, labels, phase, epoch, batch_index, lazy):
        """One optimisation step: the method's loss, backward, every optimiser, the method's projection."""
        images = self.speed.prepare_batch(images)
        with self.speed.autocast():
            out = self.method.step(model, images, labels, phase)
        if not lazy and not torch.isfinite(out.loss):
            self._nonfinite(epoch, batch_index, float(out.loss.detach()))
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        out.loss.backward()
        for opt in self.optimizers.values():
            opt.step()
        self.method.after_step(self.model, phase)
        return out

    @staticmethod
    def _accumulate(sums: EpochSums, out, labels) -> None:
        n = labels.shape[0]
        sums.add("n", n)
        sums.add("loss", out.loss * n)
        for key, value in out.terms.items():
            sums.add(key, value * n)
        if out.logits is not None:
            sums.add("correct", (out.logits.argmax(1) == labels).sum())
            sums.add("n_std", n)
        if out.csg_logits is not None:
            sums.add("correct_csg", (out.csg_logits.argmax(1) == labels).sum())
            sums.add("n_csg", n)

    def _epoch_record(self, epoch: int, phase: str, totals: dict[str, float], lrs: dict[str, float]) -> dict:
        """The epoch's log line: mean loss and terms, accuracies, the method's summary, learning rates."""
        n = max(totals.get("n", 0.0), 1.0)
        record: dict[str, Any] = {"epoch": epoch + 1, "phase": phase, "loss": totals.get("loss", math.nan) / n}
        for key in sorted(set(totals) - {"n", "loss", "correct", "correct_csg", "n_std", "n_csg"}):
            record[key] = totals[key] / n
        if totals.get("n_std"):
            record["train_accuracy"] = totals["correct"] / totals["n_std"]
        if totals.get("n_csg"):
            record["train_csg_accuracy"] = totals["correct_csg"] / totals["n_csg"]
        record.update(self.method.epoch_summary(self.model))
        record["lr"] = lrs.get("model")
        if "gate" in lrs:
            record["gate_lr"] = lrs["gate"]
        if self.dist.enabled:
            # every rank must hold rank 0's weights and gate after the averaged step and the projection
            params = torch.cat([p.detach().reshape(-1).double() for p in self.model.parameters()])
            record["rank_weight_spread"] = self.dist.max_spread(params)
            gate = getattr(self.model, "gate", None)
            if gate is not None:
                record["rank_gate_spread"] = self.dist.max_spread(gate.weight)
        return record

    def _print_estimate(self, epoch: int, seconds: float, n_total: int) -> None:
        """Once, early in the first epoch run: how long the rest of the training will take at this pace."""
        per_batch = seconds / ESTIMATE_AFTER
        left = per_batch * ((n_total - self.start_batch) + n_total * (self.cfg.epochs - epoch - 1))
        print(f"train: about {_duration(left)} for {self.cfg.epochs - epoch} epoch(s) of {n_total} batches "
              f"({per_batch:.2f} s per batch so far; evaluation not included)", file=sys.stderr, flush=True)

    def _nonfinite(self, epoch: int, batch_index: int, value: float) -> None:
        raise CsgError(f"loss became {value} at epoch {epoch + 1}, batch {batch_index + 1}; the "
                       f"last good checkpoint is kept in {self.out}; lower --lr (now {self.cfg.lr}) or "
                       "--gate-lr and train again")

    def _shard_kwargs(self) -> dict[str, int]:
        return {"rank": self.dist.rank, "world_size": self.dist.world_size} if self.dist.enabled else {}

    def _num_batches(self) -> int:
        per_rank = math.ceil(len(self.train_set) / self.dist.world_size)
        return math.ceil(per_rank / self.rank_batch_size)

    def _progress_disabled(self) -> bool | None:
        if not self.dist.is_main:
            return True
        if self.progress is None:
            return None  # tqdm: only on a terminal
        return not self.progress

    def _quick_eval(self) -> dict[str, float]:
        # each rank evaluates every W-th image; the gathered arrays are the single-process ones
        captured = capture_features_sharded(self.dist, self.model, self.test_set,
                                            batch_size=self.cfg.eval_batch_size, device=self.device)
        out = {"test_accuracy": float((captured["predictions"] == captured["labels"]).mean())}
        if self.tensorboard is not None:
            # the epoch's K x C MI matrix for the heatmap, from the features this evaluation captured anyway
            self._last_mi = mutual_information_matrix(captured["pooled"], captured["labels"],
                                                      num_classes=self.train_set.num_classes)
        if "csg_predictions" in captured:
            out["test_csg_accuracy"] = float((captured["csg_predictions"] == captured["labels"]).mean())
        return out

    def _print_epoch(self, r: dict[str, Any]) -> None:
        parts = [f"epoch {r['epoch']:>3}/{self.cfg.epochs} {r['phase']:<5}", f"loss {r['loss']:.4f}"]
        if "train_accuracy" in r:
            parts.append(f"train {r['train_accuracy']:.4f}")
        if "test_accuracy" in r:
            parts.append(f"test {r['test_accuracy']:.4f}")
        if "l1_density" in r:
            parts.append(f"L1-density {r['l1_density']:.4f}")
        parts.append(f"{r['images_per_second']:.0f} img/s")
        print("  ".join(parts), file=sys.stderr, flush=True)


def fit(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None, **kwargs) -> Path:
    """Train one run into ``cfg.out`` and return that folder (rank failures become one line)."""
    trainer = Trainer(cfg, resume=resume, progress=progress, **kwargs)
    try:
        return trainer.fit()
    except BaseException as exc:
        # torchrun: a stopped rank or a collective timeout becomes one line naming the rank and the run
        try:
            replacement = trainer.dist.on_error(exc, trainer.out)
        except SystemExit:
            # torchrun's SIGTERM landed while this rank was handling the broken collective, before on_error
            # ignored it: handle the first error again (SIGTERM is ignored by now), so the line still comes
            replacement = trainer.dist.on_error(exc, trainer.out)
        if replacement is None:
            raise
        raise replacement from exc
    finally:
        trainer.release()
        trainer.dist.close()
