"""Data-parallel training over ``torch.distributed`` (a ``torchrun`` launch), on torch's own engine.

    torchrun --nproc_per_node=2 -m csg train --data fashion-mnist --out runs/ddp ...

:func:`init_process_group_context` joins the process group that torchrun
describes in the environment (gloo on CPU, nccl on CUDA). The model is wrapped
in stock :class:`torch.nn.parallel.DistributedDataParallel`: every rank starts
from rank 0's weights and buffers, buffers are broadcast each forward, and the
gradients are averaged over ranks during the backward pass (bucketed,
overlapped with it):

    g <- (1 / W) * sum_r g_r

so the gate's gradient is reduced like any other parameter and every rank
takes the same optimiser step. With per-rank batch ``B / W`` and the data
sharded as ``DistributedSampler`` does, ``g`` is the gradient of the mean loss
over the global batch of ``B`` images.

Phases whose parameter set differs (a STD epoch leaves the gate out, a CSG
epoch may freeze lower layers): DDP reduces exactly the parameters that
require a gradient when it is built, so the trainer switches ``requires_grad``
for the phase and :meth:`ProcessGroupContext.wrap` builds one DDP wrapper per
distinct trainable set (the documented "wrapper per phase"; the previous
wrapper is released first so only one set of reducer hooks is live).
Parameters no phase ever reaches (layers after the feature layer that are not
the head) are left out before wrapping. ``CSG_DDP_FIND_UNUSED=1`` switches to
``find_unused_parameters=True`` instead, for custom models whose forward
skips parameters in ways csg cannot see (docs/distributed.md measures both).

Batch normalisation is synchronised by default (``CSG_SYNC_BN=1``): torch's
``SyncBatchNorm`` on CUDA, :class:`~.sync_batchnorm.CPUSyncBatchNorm` on the
CPU (torch's runs only on accelerators), so a W-process run computes what one
process computes with the global batch, up to float rounding.

A rank that dies or hangs must not leave the others waiting forever: every
collective runs under the process-group timeout ``CSG_DIST_TIMEOUT`` (seconds,
default 300), and :mod:`.failures` turns the error into one line naming the
stopped rank and the checkpoint to resume from.
"""
from __future__ import annotations

import os
import signal
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ...core.errors import CsgError
from . import DistContext
from .failures import TIMEOUT_ENV, FailureReporter, is_collective_failure, on_sigterm
from .sync_batchnorm import CPUSyncBatchNorm

SYNC_BN_ENV = "CSG_SYNC_BN"
FIND_UNUSED_ENV = "CSG_DDP_FIND_UNUSED"
DEFAULT_TIMEOUT_S = 300.0


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


class ProcessGroupContext(DistContext):
    """A joined process group: rank, world size, this rank's device, DDP wrapping and the collectives
    the trainer uses."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device, backend: str,
                 timeout_s: float, sync_bn: bool, find_unused: bool = False):
        super().__init__(rank=rank, world_size=world_size, local_rank=local_rank)
        self.device = device
        self.backend = backend
        self.timeout_s = timeout_s
        self.sync_bn = sync_bn
        self.find_unused = find_unused
        self.failures = FailureReporter(rank, world_size, timeout_s)
        self._closed = False
        self._prepared: set[int] = set()
        self._ddp: DistributedDataParallel | None = None
        self._ddp_key: tuple | None = None

    def _comm(self, tensor: torch.Tensor) -> torch.Tensor:
        # nccl only moves CUDA tensors; gloo moves CPU (and CUDA) tensors
        return tensor.to(self.device) if self.backend == "nccl" else tensor

    # ---- model -------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Once per model: synchronised batch norm (``CSG_SYNC_BN``), converted in place so the
        optimisers keep holding the same parameter objects."""
        if id(model) in self._prepared:
            return model
        if self.sync_bn:
            if self.device.type == "cuda":
                for name, child in list(model.named_children()):
                    setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            else:
                CPUSyncBatchNorm.convert(model)
        self._prepared.add(id(model))
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` over the parameters that require a gradient now.

        The wrapper is rebuilt when that set changes (a new phase); DDP's constructor
        broadcasts rank 0's parameters and buffers, so every rank starts the phase equal.
        """
        self.prepare(model)
        key = tuple(id(p) for p in model.parameters() if p.requires_grad)
        if self._ddp is not None and key == self._ddp_key:
            return self._ddp
        self._ddp = None  # release the old reducer's hooks before the new wrapper registers its own
        kwargs = {"device_ids": [self.device.index or 0]} if self.device.type == "cuda" else {}
        self._ddp = DistributedDataParallel(model, find_unused_parameters=self.find_unused,
                                            broadcast_buffers=True, **kwargs)
        self._ddp_key = key
        return self._ddp

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
    def on_error(self, exc: BaseException, run_path) -> BaseException | None:
        """What to raise when training failed with ``exc`` on this rank (None: ``exc`` itself).

        - a collective failed (a peer died or hung past the timeout): one line naming the stopped rank;
        - torchrun's SIGTERM (another rank failed first): one line on rank 0, quiet exit elsewhere;
        - this rank's own error: leave its first line in the store for the others, re-raise it.
        """
        return self.failures.on_error(exc, run_path)


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
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        pass
    find_unused = _env_bool(FIND_UNUSED_ENV, False)
    context = ProcessGroupContext(rank, world_size, local_rank, dev, backend, timeout_s, sync_bn, find_unused)
    context.failures._store()  # connect now, while every rank is alive
    return context


__all__ = ["ProcessGroupContext", "CPUSyncBatchNorm", "init_process_group_context", "is_collective_failure",
           "TIMEOUT_ENV", "SYNC_BN_ENV", "FIND_UNUSED_ENV"]
