"""Process-group context; a single process is the trivial case.

The multi-process context (:mod:`.process_group`: stock DDP, synchronised batch
norm, rank-failure messages) is imported only under torchrun.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training steps call (one process: the model itself)."""
        return model

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows concatenated along dim 0, rank 0's first (one rank: ``tensor``)."""
        return tensor

    def max_spread(self, tensor: torch.Tensor) -> float:
        """``max_r max|t_r - t_0|``: how far any rank's copy of ``tensor`` is from rank 0's (one rank: 0)."""
        return 0.0

    def barrier(self) -> None:
        pass

    def on_error(self, exc: BaseException, run_path) -> BaseException | None:
        """The exception to raise instead of ``exc`` when training fails (None: ``exc`` itself)."""
        return None

    def close(self) -> None:
        pass


def init_distributed(device: str) -> DistContext:
    """A single-process context unless launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    from .process_group import init_process_group_context

    return init_process_group_context(device)


class _Shard:
    """Rank ``rank``'s share of ``dataset`` for evaluation: indices ``rank, rank + W, ...`` of the
    order padded to a multiple of W (``batches(..., rank, world_size)``)."""

    def __init__(self, dataset, rank: int, world_size: int):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.world_size)

    def batches(self, batch_size, **kwargs):
        return self.dataset.batches(batch_size, rank=self.rank, world_size=self.world_size, **kwargs)


def capture_features_sharded(ctx: DistContext, model, dataset, *, batch_size: int, device) -> dict:
    """``capture_features`` with the test set split over the ranks and the results gathered.

    Rank r evaluates positions ``r, r + W, ...`` of ``0 .. N-1`` padded to a
    multiple of W; the gathered rows are put back at their positions and the
    padding dropped, so every rank ends with the single-process arrays in the
    single-process order (in eval mode each image's outputs do not depend on
    the others in its batch).
    """
    import numpy as np

    from ...core.inference import capture_features

    if not ctx.enabled:
        return capture_features(model, dataset, batch_size=batch_size, device=device)
    part = capture_features(model, _Shard(dataset, ctx.rank, ctx.world_size), batch_size=batch_size, device=device)
    n, w = len(dataset), ctx.world_size
    per = math.ceil(n / w)
    # position of rank r's j-th row in the padded order: j * W + r
    positions = (torch.arange(per) * w).unsqueeze(0) + torch.arange(w).unsqueeze(1)  # (W, per), rank-major
    order = torch.argsort(positions.reshape(-1))
    out = {}
    for key, value in part.items():
        gathered = ctx.all_gather_rows(torch.from_numpy(np.ascontiguousarray(value)))
        out[key] = gathered[order][:n].numpy()
    return out
