"""``csg.train``: train one run and return its run directory."""
from __future__ import annotations

from ..core.lock import RunLock
from ..training.config import TrainConfig
from ..training.trainer import fit
from .rundir import RunDir


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None, **kwargs) -> RunDir:
    """Train one run (the Python form of ``csg train``) into ``cfg.out`` and return its :class:`RunDir`.

    ``kwargs`` go to :class:`csg.training.trainer.Trainer` (``model=``, ``train_set=``, ``test_set=``).
    """
    path = fit(cfg, resume=resume, progress=progress, **kwargs)
    return RunDir(path)


__all__ = ["train", "RunLock"]
