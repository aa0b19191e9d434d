"""Data-parallel training over ``torch.distributed`` (a ``torchrun`` launch).

    torchrun --nproc_per_node=2 -m csg train --data fashion-mnist --out runs/ddp ...

``init_process_group_context(device)`` joins the process group that torchrun
describes in the environment (gloo on CPU, nccl on CUDA) and returns a
:class:`ProcessGroupContext`. Its ``wrap(model)`` makes every rank start from
rank 0's weights and returns a thin wrapper whose backward pass ends with one
bucketed all-reduce of every gradient, divided by the world size:

    g <- (1 / W) * sum_r g_r

so the gate's gradient is reduced exactly like any other parameter, every rank
takes the same optimiser step and the gate stays identical on every rank after
its projection. With per-rank batch ``B / W`` and the data sharded as
``DistributedSampler`` does, ``g`` is the gradient of the mean loss over the
global batch of ``B`` images.

Batch normalisation is synchronised by default (``CSG_SYNC_BN=1``): the batch
mean and variance are taken over the global batch (torch's ``SyncBatchNorm`` on
CUDA, :class:`CPUSyncBatchNorm` here on CPU, which torch lacks), so a W-process
run computes what one process computes with the global batch, up to float
rounding. ``CSG_SYNC_BN=0`` keeps per-rank statistics (faster, the usual
ImageNet practice, but no longer equal to the single-process run).

Why not ``DistributedDataParallel``: a CSG run changes which parameters receive
gradients from epoch to epoch (STD epochs never touch the gate, CSG epochs may
freeze other layers, the feature layer skips the backbone's tail), which DDP
only tolerates with ``find_unused_parameters`` and breaks on when an output is
computed but left out of the loss. Reducing after backward has none of those
cases; what it gives up is overlapping communication with the backward pass.

A rank that dies or hangs must not leave the others waiting forever: every
collective runs under the process-group timeout ``CSG_DIST_TIMEOUT`` (seconds,
default 300), and :meth:`ProcessGroupContext.failure` turns the error into one
line naming the stopped rank and the checkpoint to resume from.
"""
from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from ..core.errors import CsgError
from .distributed import DistContext

TIMEOUT_ENV = "CSG_DIST_TIMEOUT"
SYNC_BN_ENV = "CSG_SYNC_BN"
DEFAULT_TIMEOUT_S = 300.0
_BUCKET_BYTES = 25 * 2**20  # the DDP default bucket size


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise CsgError(f"${name}={text!r} is not a number of seconds; set e.g. {name}=300") from None
    if value <= 0:
        raise CsgError(f"${name} must be positive, got {text}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise CsgError(f"${name}={text!r}: expected 1 or 0")


# ---- synchronised batch normalisation on the CPU ----------------------------------------------------------------
class _SyncBNFunction(torch.autograd.Function):
    """Batch norm over the union of every rank's batch.

    Forward: per channel ``S1 = sum x``, ``S2 = sum x^2`` and the count ``n`` are
    summed over ranks; ``mu = S1 / N``, ``var = S2 / N - mu^2`` (biased, used to
    normalise), ``y = (x - mu) / sqrt(var + eps) * w + b``; the running variance
    takes the unbiased ``var * N / (N - 1)``.
    Backward (``xhat = (x - mu) / sigma``, per rank, before the gradient average
    divides by W): ``dx = w / sigma * (dy - sum_all(dy) / N - xhat * sum_all(dy * xhat) / N)``,
    ``dw = sum_local(dy * xhat)``, ``db = sum_local(dy)`` - torch's SyncBatchNorm rule.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.float()
        n_local = x.numel() // c
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_tensor([float(n_local)])])
        dist.all_reduce(stats, group=group)
        n = float(stats[-1])
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_((var * (n / max(n - 1.0, 1.0))).to(running_var.dtype),
                                                    alpha=momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.float().view(shape) + bias.float().view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.group, ctx.n = group, n
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        xhat, weight, invstd = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [d for d in range(xhat.dim()) if d != 1]
        shape = [1, c] + [1] * (xhat.dim() - 2)
        dyf = dy.float()
        sum_dy = dyf.sum(dims)
        sum_dy_xhat = (dyf * xhat).sum(dims)
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both, group=ctx.group)
        scale = invstd if weight is None else invstd * weight.float()
        dx = scale.view(shape) * (dyf - (both[:c] / ctx.n).view(shape) - xhat * (both[c:] / ctx.n).view(shape))
        dw = db = None
        if weight is not None:
            dw, db = sum_dy_xhat.to(weight.dtype), sum_dy.to(weight.dtype)
        return dx.to(dy.dtype), dw, db, None, None, None, None, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``nn.SyncBatchNorm`` for CPU tensors (torch's only runs on accelerators); see ``_SyncBNFunction``."""

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as _BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        running = self.track_running_stats
        return _SyncBNFunction.apply(x, self.weight, self.bias, self.running_mean if running else None,
                                     self.running_var if running else None, self.eps, momentum,
                                     self.process_group)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Turn every plain BatchNorm{1,2,3}d inside ``module`` into this class, in place.

        The class of each layer is swapped, so its parameters and buffers stay the
        very objects the optimisers already hold.
        """
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (cls, nn.SyncBatchNorm)):
                m.__class__ = cls
                m.process_group = None
        return module


# ---- the wrapper whose backward ends with the gradient average -------------------------------------------------
def _buckets(tensors: list[torch.Tensor], limit: int = _BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype) into buckets of at most ``limit`` bytes."""
    groups: dict[tuple, list[list[int]]] = {}
    sizes: dict[tuple, int] = {}
    for i, t in enumerate(tensors):
        key = (t.device, t.dtype)
        nbytes = t.numel() * t.element_size()
        if key not in groups or sizes[key] + nbytes > limit:
            groups.setdefault(key, []).append([])
            sizes[key] = 0
        groups[key][-1].append(i)
        sizes[key] += nbytes
    return [b for bs in groups.values() for b in bs]


class GradSyncModule(nn.Module):
    """``module`` whose every backward pass ends with ``grad <- mean over ranks of grad``.

    The average runs as an autograd-engine callback queued from a hook on the
    forward's outputs, so the training loop needs no extra call; ``.module`` is
    the wrapped model (as with DDP). Parameters without a gradient on every rank
    keep ``grad=None`` (an STD epoch leaves the gate alone); a parameter with a
    gradient on some rank only gets the average with zeros elsewhere.
    """

    def __init__(self, module: nn.Module, context: "ProcessGroupContext"):
        super().__init__()
        self.module = module
        self.__dict__["_context"] = context
        self.__dict__["_queued"] = False

    def forward(self, *args, **kwargs):
        if self.module.training:
            self._context.broadcast_buffers(self.module)
        out = self.module(*args, **kwargs)
        if torch.is_grad_enabled() and self.module.training:
            for t in _tensors(out):
                if t.requires_grad:
                    t.register_hook(self._on_backward)
        return out

    def _on_backward(self, grad):
        if not self._queued:
            self.__dict__["_queued"] = True
            torch.autograd.Variable._execution_engine.queue_callback(self._sync)
        return grad

    def _sync(self) -> None:
        self.__dict__["_queued"] = False
        self._context.average_gradients(self.module)


def _tensors(obj):
    import dataclasses

    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


# ---- the context ---------------------------------------------------------------------------------------------
class ProcessGroupContext(DistContext):
    """A joined process group: rank, world size, this rank's device and the collectives the trainer uses."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device, backend: str,
                 timeout_s: float, sync_bn: bool):
        super().__init__(rank=rank, world_size=world_size, local_rank=local_rank)
        self.device = device
        self.backend = backend
        self.timeout_s = timeout_s
        self.sync_bn = sync_bn
        self._closed = False

    def _comm(self, tensor: torch.Tensor) -> torch.Tensor:
        # nccl only moves CUDA tensors; gloo moves CPU (and CUDA) tensors
        return tensor.to(self.device) if self.backend == "nccl" else tensor

    # ---- model -------------------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """Synchronise batch norm (``CSG_SYNC_BN``), copy rank 0's weights to every rank, add the gradient average."""
        if self.sync_bn:
            if self.device.type == "cuda":
                nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                CPUSyncBatchNorm.convert(model)
        self.broadcast_state(model)
        return GradSyncModule(model, self)

    def broadcast_state(self, model: nn.Module) -> None:
        """Parameters and buffers of rank 0, to every rank (one coalesced broadcast per dtype)."""
        with torch.no_grad():
            self._broadcast([p.data for p in model.parameters()] + list(model.buffers()))

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics, method state) to every rank, as DDP does each forward."""
        with torch.no_grad():
            self._broadcast(list(model.buffers()))

    def _broadcast(self, tensors: list[torch.Tensor]) -> None:
        tensors = [t for t in tensors if t.numel()]
        for bucket in _buckets(tensors):
            ts = [tensors[i] for i in bucket]
            flat = self._comm(torch.cat([t.reshape(-1) for t in ts]))
            dist.broadcast(flat, src=0)
            offset = 0
            for t in ts:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    @torch.no_grad()
    def average_gradients(self, model: nn.Module) -> None:
        """``p.grad <- (1 / W) sum_r p.grad_r`` for every trainable parameter, in buckets.

        Each bucket carries one extra element per parameter, 1 where this rank
        has a gradient, so a parameter that no rank touched stays ``None``.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        scale = 1.0 / self.world_size
        for bucket in _buckets(params):
            ps = [params[i] for i in bucket]
            ref = ps[0]
            parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
            parts.append(torch.tensor([p.grad is not None for p in ps], dtype=ref.dtype, device=ref.device))
            flat = self._comm(torch.cat(parts))
            dist.all_reduce(flat)
            flat = flat.to(ref.device)
            present = flat[-len(ps):]
            offset = 0
            for j, p in enumerate(ps):
                n = p.numel()
                if float(present[j]) > 0:
                    avg = flat[offset:offset + n].view_as(p).mul_(scale)
                    if p.grad is None:
                        p.grad = avg.clone()
                    else:
                        p.grad.copy_(avg)
                offset += n

    # ---- collectives ----------------------------------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = self._comm(tensor.detach().clone())
        dist.all_reduce(out)
        return out.to(tensor.device)

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` (rows may differ in number) along dim 0, rank 0's first.

        Rows are padded to the largest count for ``all_gather`` and the padding dropped again.
        """
        t = self._comm(tensor.contiguous())
        counts = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        all_counts = [torch.zeros_like(counts) for _ in range(self.world_size)]
        dist.all_gather(all_counts, counts)
        sizes = [int(c) for c in all_counts]
        top = max(sizes)
        padded = t.new_zeros((top,) + tuple(t.shape[1:]))
        padded[:t.shape[0]] = t
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(out, padded)
        return torch.cat([o[:s] for o, s in zip(out, sizes)]).to(tensor.device)

    @torch.no_grad()
    def max_spread(self, tensor: torch.Tensor) -> float:
        """``max_r max|t_r - t_0|`` over ranks (0.0 when every rank holds rank 0's values bit for bit)."""
        mine = self._comm(tensor.detach().reshape(-1).double().clone())
        ref = mine.clone()
        dist.broadcast(ref, src=0)
        diff = (mine - ref).abs().max() if mine.numel() else mine.new_zeros(())
        diff = diff.reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def close(self) -> None:
        if not self._closed and dist.is_initialized():
            self._closed = True
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a broken group cannot be torn down cleanly; exiting will do it
                pass

    # ---- failures -------------------------------------------------------------------------------------------
    def _store(self):
        try:
            from torch.distributed.distributed_c10d import _get_default_store

            return _get_default_store()
        except Exception:  # noqa: BLE001
            return None

    def _key(self, what: str, rank: int) -> str:
        return f"csg/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{what}/{rank}"

    def report_stopped(self, reason: str) -> None:
        """Leave this rank's reason for stopping in the rendezvous store (best effort)."""
        store = self._store()
        if store is None:
            return
        try:
            store.set_timeout(timedelta(seconds=2))
            store.set(self._key("stopped", self.rank), reason[:500])
        except Exception:  # noqa: BLE001
            pass

    def stopped_ranks(self, wait_s: float = 2.0) -> tuple[list[int], dict[int, str]]:
        """(ranks that neither answered nor left a reason within ``wait_s``, {rank: reason left})."""
        store = self._store()
        if store is None:
            return [], {}
        try:
            store.set_timeout(timedelta(seconds=2))
            store.set(self._key("alive", self.rank), "1")
            deadline = time.monotonic() + wait_s
            while True:
                alive = {r for r in range(self.world_size) if store.check([self._key("alive", r)])}
                stopped = {r for r in range(self.world_size) if store.check([self._key("stopped", r)])}
                if len(alive | stopped) == self.world_size or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            reasons = {r: store.get(self._key("stopped", r)).decode(errors="replace") for r in sorted(stopped)}
            silent = [r for r in range(self.world_size) if r not in alive and r not in stopped]
            return silent, reasons
        except Exception:  # noqa: BLE001 - the store went with the rank that hosted it
            return [], {}

    def on_error(self, exc: BaseException, run_path) -> BaseException | None:
        """What to raise when training failed with ``exc`` on this rank (None: ``exc`` itself).

        - a collective failed (a peer died or hung past the timeout): :meth:`failure`;
        - torchrun's SIGTERM (another rank failed first): one line on rank 0, quiet exit elsewhere;
        - this rank's own error: leave its first line in the store for the others, re-raise it.
        """
        # torchrun's SIGTERM often lands while this rank is already handling the broken collective (the
        # handler runs once the C++ call returns): from here on it must not cut the message short
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
        if isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:
            if self.rank != 0:
                return SystemExit(exc.code)
            return CsgError(f"rank {self.rank} of {self.world_size} was stopped by torchrun because another rank "
                            f"failed (its message is above); the last checkpoint is in {run_path}, resume with "
                            "--resume")
        if is_collective_failure(exc):
            return self.failure(exc, run_path)
        if not isinstance(exc, SystemExit):
            self.report_stopped(f"{type(exc).__name__}: {_first_line(exc)}")
        return None

    def failure(self, exc: BaseException, run_path) -> BaseException:
        """The error to raise on this rank after a collective failed: one line for the lowest live rank.

        Other live ranks get a quiet ``SystemExit(2)`` so the line appears once.
        """
        silent, reasons = self.stopped_ranks()
        gone = sorted(set(silent) | set(reasons))
        if gone:
            who = ", ".join(str(r) for r in gone)
            what = f"rank {who} of {self.world_size} stopped"
            if reasons:
                what += " (" + "; ".join(f"rank {r}: {m}" for r, m in reasons.items()) + ")"
            elif silent:
                what += " without a word (killed, out of memory, or hung past $" + TIMEOUT_ENV + \
                        f"={self.timeout_s:g} s)"
        else:
            what = f"a collective of the {self.world_size} ranks failed ({_first_line(exc)})"
        reporter = min(set(range(self.world_size)) - set(gone), default=self.rank)
        if self.rank != reporter:
            return SystemExit(2)
        return CsgError(f"{what}; the last checkpoint is in {run_path}, resume with --resume "
                        "(the same torchrun command plus --resume)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` came from a collective whose peers went away or timed out."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(k in text for k in ("gloo", "nccl", "connection closed", "connection reset", "timed out",
                                       "timeout", "broken pipe", "peer"))
    return False


def _on_sigterm(signum, frame):  # noqa: ARG001
    # torchrun sends SIGTERM to the survivors when a rank fails: end with a line, not silence
    raise SystemExit(128 + signum)


def init_process_group_context(device: str) -> ProcessGroupContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    ``device``: ``auto`` picks ``cuda:LOCAL_RANK`` when GPUs exist, else the CPU;
    ``cuda`` means ``cuda:LOCAL_RANK``. The backend is nccl for CUDA, gloo for
    the CPU. Collectives time out after ``$CSG_DIST_TIMEOUT`` seconds (300).
    """
    if not dist.is_available():
        raise CsgError("this torch build has no torch.distributed; run a single process (plain `csg train`)")
    try:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise CsgError("WORLD_SIZE > 1 but RANK is not set; launch with `torchrun --nproc_per_node=N -m csg "
                       "train ...`") from None
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CsgError(f"--device {device!r} is not a device; use cpu, cuda or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CsgError(f"--device {device} asked for, but no CUDA GPU is available; use --device cpu")
        if dev.index is None:
            if local_rank >= torch.cuda.device_count():
                raise CsgError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                               "lower --nproc_per_node to the number of GPUs")
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise CsgError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {dev.type}")
    timeout_s = _env_float(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    sync_bn = _env_bool(SYNC_BN_ENV, True)
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), rank=rank,
                                world_size=world_size, **kwargs)
    if rank != 0:
        # only rank 0 prints progress and epoch lines; the others keep warnings and errors
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    return ProcessGroupContext(rank, world_size, local_rank, dev, backend, timeout_s, sync_bn)


__all__ = ["ProcessGroupContext", "CPUSyncBatchNorm", "GradSyncModule", "init_process_group_context",
           "is_collective_failure", "TIMEOUT_ENV", "SYNC_BN_ENV"]
