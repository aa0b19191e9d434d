"""The single training loop that serves every method.

Per epoch: pick the phase (STD / CSG / joint), set the learning rates, run the
batches (seeded per epoch so an epoch can be replayed exactly), step the
optimisers, let the method project its gate, evaluate, append one JSON line to
``log.jsonl`` and write the checkpoint atomically. ``resume`` continues from the
last checkpoint and ends at bit-identical weights to an uninterrupted run.
"""
from __future__ import annotations

import math
import platform
import sys
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import Augment, dataset_options, load_dataset
from ..core.errors import CsgError
from ..core.hooks import resolve_module
from ..core.io import append_jsonl, atomic_write_bytes, read_jsonl
from ..methods import build_method
from ..core.model import GatedClassifier, build_model
from ..runs.rundir import CHECKPOINT, CONFIG, LOG, RunDir
from ..methods.schedule import STD, lr_factor
from .checkpoint import restore_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistContext, init_distributed
from .speed import SpeedPolicy

# Config keys that may change on --resume without changing the result's meaning.
_RESUMABLE_CHANGES = {"device", "threads", "out", "evaluate", "eval_every", "checkpoint_every", "epochs",
                      "eval_batch_size", "channels_last", "amp", "compile", "workers"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CsgError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CsgError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    return device


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


def build_optimizers(cfg: TrainConfig, model: GatedClassifier, method) -> dict[str, torch.optim.Optimizer]:
    """``{"model": ...}`` over every trainable parameter, plus ``"gate"`` over the method's
    ``extra_parameters`` (the CSG gate, PICNN's V with ``picnn_v_optimizer = "own"``) at ``--gate-lr``."""
    extra = method.extra_parameters(model)
    extra_ids = {id(p) for p in extra}
    main = [p for p in model.parameters() if id(p) not in extra_ids and p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(main, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(main, lr=cfg.lr, weight_decay=cfg.weight_decay)
    optimizers = {"model": opt}
    if extra:
        if cfg.gate_optimizer == "sgd":
            optimizers["gate"] = torch.optim.SGD(extra, lr=cfg.gate_lr, momentum=cfg.momentum)
        else:
            optimizers["gate"] = torch.optim.Adam(extra, lr=cfg.gate_lr)
    for o in optimizers.values():
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    return optimizers


class Trainer:
    """Train ``cfg.method`` on ``cfg.data`` into the run directory ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None,
                 model: GatedClassifier | None = None, train_set=None, test_set=None):
        if cfg.out is None:
            raise CsgError("--out RUN is required: the run directory to write")
        self.cfg = cfg
        self.resume = resume
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
        self.run = RunDir(cfg.out, must_exist=False)
        self._check_resume()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        options = dataset_options(cfg.data, image_size=cfg.resize, workers=cfg.workers) \
            if train_set is None or test_set is None else {}
        self.train_set = train_set if train_set is not None else load_dataset(
            cfg.data, "train", data_dir=cfg.data_dir, subset=cfg.subset, seed=cfg.seed, **options)
        self.test_set = test_set if test_set is not None else load_dataset(
            cfg.data, "test", data_dir=cfg.data_dir, subset=cfg.test_subset, seed=cfg.seed, **options)
        self._check_data()
        self.method = build_method(cfg)
        if model is None:
            model = build_model(cfg.arch, self.train_set.num_classes, self.train_set.in_channels,
                                input_mean=self.train_set.mean, input_std=self.train_set.std,
                                small_input=cfg.small_input)
        elif model.num_classes != self.train_set.num_classes:
            raise CsgError(f"the model has {model.num_classes} classes but {cfg.data} has "
                           f"{self.train_set.num_classes}; build it with num_classes={self.train_set.num_classes}")
        self.model = model
        self.method.attach(self.model)
        self.model.to(self.device)
        self.augment = Augment(crop_padding=cfg.crop_padding, hflip=cfg.hflip)
        self.optimizers = self._build_optimizers()
        # memory format in place (same parameters); with --compile the forward runs the compiled module
        forward_model = self.speed.prepare_model(self.model)
        self.ddp_model = self.dist.wrap(forward_model)
        self.start_epoch = 0
        self.start_batch = 0
        self.partial: dict[str, float] = {}

    # ---- set-up --------------------------------------------------------------
    def _check_resume(self) -> None:
        ckpt = self.run.file(CHECKPOINT)
        if self.resume:
            if not ckpt.is_file():
                raise CsgError(f"--resume: {ckpt} does not exist; start without --resume")
            old = TrainConfig.from_dict(self.run.config).to_dict()
            new = self.cfg.to_dict()
            changed = [k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k]]
            if changed:
                k = changed[0]
                raise CsgError(f"--resume: {k} was {old.get(k)!r} in {self.run.path} but is now {new[k]!r}; "
                               "resume with the same settings or train into a new --out")
        elif ckpt.is_file() and self.dist.is_main:
            raise CsgError(f"{self.run.path} already holds a run; continue it with --resume or choose another --out")

    def _check_data(self) -> None:
        if self.train_set.num_classes != self.test_set.num_classes:
            raise CsgError(f"{self.cfg.data}: train split has {self.train_set.num_classes} classes but the test "
                           f"split has {self.test_set.num_classes}")
        train_shape = (self.train_set.in_channels, *self.train_set.image_size)
        test_shape = (self.test_set.in_channels, *self.test_set.image_size)
        if train_shape != test_shape:
            raise CsgError(f"{self.cfg.data}: train images are {train_shape} but test images are {test_shape}")

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return build_optimizers(self.cfg, self.model, self.method)

    def _set_epoch_lrs(self, epoch: int, phase: str) -> dict[str, float]:
        cfg = self.cfg
        factor = lr_factor(epoch, cfg.epochs, cfg.lr_schedule, cfg.milestones, cfg.gamma)
        lrs = {}
        for name, opt in self.optimizers.items():
            for g in opt.param_groups:
                base = g["initial_lr"]
                if name == "model" and phase != STD and cfg.csg_lr is not None:
                    base = cfg.csg_lr
                g["lr"] = base * factor
            lrs[name] = opt.param_groups[0]["lr"]
        return lrs

    def _set_phase_trainable(self, phase: str) -> None:
        below = self.cfg.csg_freeze_below if (phase != STD and self.cfg.csg_freeze_below) else self.cfg.freeze_below
        set_trainable(self.model, below)

    def _write_config(self) -> None:
        cfg = self.cfg.to_dict()
        cfg.update(num_classes=self.train_set.num_classes, in_channels=self.train_set.in_channels,
                   image_size=list(self.train_set.image_size), classes=list(self.train_set.classes),
                   input_mean=list(self.train_set.mean), input_std=list(self.train_set.std),
                   num_filters=self.model.num_filters, feature_layer=self.model.feature_layer,
                   train_size=len(self.train_set), test_size=len(self.test_set),
                   versions=package_versions(), command=" ".join(sys.argv))
        self.run.write_json(CONFIG, cfg)

    # ---- running -------------------------------------------------------------
    def fit(self) -> RunDir:
        cfg = self.cfg
        if self.resume:
            meta = restore_checkpoint(self.run.file(CHECKPOINT), self.model, self.optimizers)
            self.start_epoch = int(meta["epoch"])
            self.start_batch = int(meta.get("next_batch", 0))
            self.partial = meta.get("partial", {})
            if self.dist.is_main:
                self._truncate_log(self.start_epoch)
        elif self.dist.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self._write_config()
            if self.run.has(LOG):
                self.run.file(LOG).unlink()
        if self.resume and self.dist.is_main:
            self._write_config()
        for epoch in range(self.start_epoch, cfg.epochs):
            record = self._train_epoch(epoch)
            if self.dist.is_main:
                self._save(epoch + 1, 0, {})
                append_jsonl(self.run.file(LOG), record)
            self.start_batch, self.partial = 0, {}
        if self.dist.is_main:
            gate = self.method.gate_matrix(self.model)
            if gate is not None:
                self.run.write_npy("gate.npy", gate)
            if cfg.method in ("csg", "csg-fixed") and all(self.method.phase(e) == STD for e in range(cfg.epochs)):
                # e.g. a 2-epoch smoke run with the default 2 warm-up epochs: the gate kept its initial value
                print(f"note: this schedule had no CSG epoch (--warmup {cfg.warmup}, --epochs {cfg.epochs}): the "
                      "gated path was never trained; lower --warmup or train for more epochs", file=sys.stderr,
                      flush=True)
        self.dist.barrier()
        return self.run

    def _save(self, epoch: int, next_batch: int, partial: dict) -> None:
        save_checkpoint(self.run.file(CHECKPOINT), self.model, self.optimizers,
                        meta={"epoch": epoch, "next_batch": next_batch, "partial": partial,
                              "method": self.cfg.method})

    def _truncate_log(self, epochs_done: int) -> None:
        path = self.run.file(LOG)
        if not path.is_file():
            return
        keep = [r for r in read_jsonl(path) if r.get("epoch", 0) <= epochs_done]
        import json

        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        phase = self.method.phase(epoch)
        lrs = self._set_epoch_lrs(epoch, phase)
        self._set_phase_trainable(phase)
        model = self.ddp_model
        model.train()
        generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        batches = self.train_set.batches(self.rank_batch_size, shuffle=True, generator=generator, device=self.device,
                                         augment=self.augment, drop_last=False, start_batch=self.start_batch,
                                         **self._shard_kwargs())
        n_total = self._num_batches()
        # running sums stay on the device: no host synchronisation per step on a GPU
        # a mid-epoch checkpoint holds the sums over all ranks: rank 0 carries them, the others restart at 0
        sums = {k: torch.tensor(v if self.dist.is_main else 0.0, dtype=torch.float64, device=self.device)
                for k, v in self.partial.items()}

        def add(key: str, value) -> None:
            if torch.is_tensor(value):
                value = value.detach().to(self.device, torch.float64)
            else:
                value = torch.tensor(float(value), dtype=torch.float64, device=self.device)
            sums[key] = sums[key] + value if key in sums else value

        def reduced_sums() -> dict[str, float]:
            """The running sums over all ranks (every rank calls it, in the same key order)."""
            return {k: float(self.dist.all_reduce_sum(v)) for k, v in sorted(sums.items())}

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
            images = self.speed.prepare_batch(images)
            with self.speed.autocast():
                out = self.method.step(model, images, labels, phase)
            if lazy:
                bad = torch.where((bad < 0) & ~torch.isfinite(out.loss.detach()), batch_index, bad)
            elif not torch.isfinite(out.loss):
                self._nonfinite(epoch, batch_index, float(out.loss.detach()))
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            out.loss.backward()
            for opt in self.optimizers.values():
                opt.step()
            self.method.after_step(self.model, phase)
            n = labels.shape[0]
            seen += n
            add("n", n)
            add("loss", out.loss * n)
            for key, value in out.terms.items():
                add(key, value * n)
            if out.logits is not None:
                add("correct", (out.logits.argmax(1) == labels).sum())
                add("n_std", n)
            if out.csg_logits is not None:
                add("correct_csg", (out.csg_logits.argmax(1) == labels).sum())
                add("n_csg", n)
            batch_index += 1
            bar.update(1)
            checkpoint = bool(cfg.checkpoint_every and batch_index % cfg.checkpoint_every == 0
                              and batch_index < n_total)
            if lazy and (batch_index % 10 == 0 or checkpoint) and int(bad) >= 0:
                self._nonfinite(epoch, int(bad), math.nan)
            if show and (batch_index % 10 == 0 or batch_index == n_total):
                bar.set_postfix(loss=f"{float(sums['loss'] / sums['n']):.3f}",
                                acc=f"{float(sums.get('correct', 0) / max(float(sums.get('n_std', 1)), 1)):.3f}")
            if checkpoint:
                partial = reduced_sums()
                if self.dist.is_main:
                    self._save(epoch, batch_index, partial)
        bar.close()
        if lazy and int(bad) >= 0:
            self._nonfinite(epoch, int(bad), math.nan)
        seconds = time.perf_counter() - start
        totals = reduced_sums()
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
        record["seconds"] = seconds
        record["images_per_second"] = seen * self.dist.world_size / seconds if seconds > 0 else None
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            record.update(self._quick_eval())
        if self.dist.is_main:
            self._print_epoch(record)
        return record

    def _nonfinite(self, epoch: int, batch_index: int, value: float) -> None:
        raise CsgError(f"loss became {value} at epoch {epoch + 1}, batch {batch_index + 1}; the "
                       f"last good checkpoint is kept in {self.run.path}; lower --lr (now {self.cfg.lr}) or "
                       "--gate-lr and train again")

    def _shard_kwargs(self) -> dict[str, int]:
        return {"rank": self.dist.rank, "world_size": self.dist.world_size} if self.dist.enabled else {}

    def _num_batches(self) -> int:
        per_rank = math.ceil(len(self.train_set) / self.dist.world_size)
        return math.ceil(per_rank / self.rank_batch_size)

    def _progress_disabled(self) -> bool:
        if not self.dist.is_main:
            return True
        if self.progress is None:
            return None  # tqdm: only on a terminal
        return not self.progress

    @torch.no_grad()
    def _quick_eval(self) -> dict[str, float]:
        from .distributed import capture_features_sharded

        # each rank evaluates every W-th image; the gathered arrays are the single-process ones
        captured = capture_features_sharded(self.dist, self.model, self.test_set,
                                            batch_size=self.cfg.eval_batch_size, device=self.device)
        out = {"test_accuracy": float((captured["predictions"] == captured["labels"]).mean())}
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


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None, **kwargs) -> RunDir:
    """Train one run (the Python form of ``csg train``) and return its directory."""
    trainer = Trainer(cfg, resume=resume, progress=progress, **kwargs)
    try:
        return trainer.fit()
    except BaseException as exc:
        # torchrun: a stopped rank or a collective timeout becomes one line naming the rank and the run
        replacement = trainer.dist.on_error(exc, trainer.run.path)
        if replacement is None:
            raise
        raise replacement from exc
    finally:
        trainer.dist.close()
