"""Synchronised batch normalisation for CPU tensors under gloo.

torch's ``nn.SyncBatchNorm`` only runs on accelerators (CUDA and the like); on
the CPU csg swaps each ``BatchNorm`` layer's class for :class:`CPUSyncBatchNorm`,
so a W-process run normalises with the statistics of the global batch, as one
process with the whole batch does. On CUDA torch's own ``SyncBatchNorm`` is used.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


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
