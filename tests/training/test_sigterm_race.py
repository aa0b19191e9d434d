"""torchrun's SIGTERM can land while a rank is already turning a broken collective into its one line.
`fit` must still end with that line, not a silent SystemExit (seen once in CI, under load)."""
from __future__ import annotations

import signal

import pytest

import csg.training.trainer as trainer_module
from csg.core.errors import CsgError
from csg.training.distributed.failures import FailureReporter


class _Dist:
    """A rank whose first on_error is cut short by torchrun's SIGTERM (raised as on_sigterm does)."""

    def __init__(self):
        self.reporter = FailureReporter(0, 2, 30.0)
        self.reporter.stopped_ranks = lambda: ([1], {})      # rank 1 went away without a word
        self.calls = 0

    def on_error(self, exc, run_path):
        self.calls += 1
        if self.calls == 1:
            raise SystemExit(128 + signal.SIGTERM)
        return self.reporter.on_error(exc, run_path)

    def close(self):
        pass


class _Trainer:
    def __init__(self, cfg, **kwargs):
        self.dist, self.out = _Dist(), "runs/x"

    def fit(self):
        raise RuntimeError("[gloo] Connection closed by peer")

    def release(self):
        pass


def test_a_sigterm_inside_the_failure_handler_still_ends_in_the_one_line(monkeypatch):
    monkeypatch.setattr(trainer_module, "Trainer", _Trainer)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(CsgError, match=r"rank 1 of 2 stopped without a word.*runs/x.*--resume"):
            trainer_module.fit(cfg=None)
    finally:
        signal.signal(signal.SIGTERM, previous)              # on_error ignores SIGTERM from then on
