"""Speed settings of a training run as one small policy object the trainer consults.

    policy = SpeedPolicy.choose(device, channels_last=cfg.channels_last, threads=cfg.threads)
    model = policy.prepare_model(model)            # memory format, optional torch.compile
    images = policy.prepare_batch(images)          # channels-last input
    with policy.autocast():                        # bf16 where chosen
        out = method.step(model, images, labels, phase)

Defaults (``None`` = choose):

- CUDA: bf16 autocast when the GPU supports it, channels-last, pinned memory
  and non-blocking copies; ``torch.compile`` only when asked (it costs minutes
  of compilation and breaks on the feature-layer early exit of some backbones).
- CPU: float32; ``csg train`` passes ``--channels-last`` (default true), which
  ``benchmarks/bench_training_scale.py`` measured 1.34x faster for resnet20 on
  this project's CPU with a one-step gradient still within float32 rounding of
  float64 (1.2e-2 vs 4.7e-3 relative for the contiguous layout; docs/benchmarks.md,
  "Training at scale"). bf16 autocast was 3x faster on a processor with
  AVX512-BF16 but moved that gradient by ~50%, so it is opt-in (``amp=True``)
  and ignored on processors without native bf16. ``threads`` sets
  ``torch.set_num_threads`` (default: torch's choice, all cores of this process;
  under torchrun the cores divided by the local world size).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class SpeedPolicy:
    """How a run uses its device (see the module doc for the defaults)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    pin_memory: bool = False
    non_blocking: bool = False
    threads: int | None = None

    @classmethod
    def choose(cls, device, *, amp: bool | None = None, channels_last: bool | None = None,
               compile: bool | None = None, threads: int | None = None) -> "SpeedPolicy":
        device = torch.device(device)
        cuda = device.type == "cuda"
        if amp is None:
            amp = cuda and torch.cuda.is_bf16_supported()
        elif amp and not cuda and not cpu_has_bf16():
            amp = False  # emulated bf16 on the CPU is slower than float32
        if channels_last is None:
            channels_last = cuda
        if threads is None and not cuda:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            if local > 1:
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
                threads = max(1, cores // local)
        return cls(device=device, amp_dtype=torch.bfloat16 if amp else None, channels_last=bool(channels_last),
                   compile=bool(compile), pin_memory=cuda, non_blocking=cuda, threads=threads)

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(int(self.threads))

    def autocast(self):
        """``torch.autocast`` in ``amp_dtype`` on the device, or a no-op context."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the memory format in place; return it, or its compiled form when ``compile``."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            return torch.compile(model)
        return model

    def prepare_batch(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def describe(self) -> dict:
        return {"device": str(self.device), "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
                "channels_last": self.channels_last, "compile": self.compile, "threads": self.threads}
