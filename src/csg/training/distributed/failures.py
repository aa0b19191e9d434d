"""One line instead of a hang or a wall of tracebacks when a rank of a torchrun launch fails.

A rank that fails leaves its reason in a key-value store that outlives it
(torchrun's agent store, reached with the public ``TCPStore`` client at
``MASTER_ADDR:MASTER_PORT``); when a collective breaks, the lowest surviving
rank asks the store which ranks stopped and why, and raises one
:class:`~csg.core.errors.CsgError` naming them and the checkpoint to resume
from. The other survivors exit quietly, so the message appears once.
"""
from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import torch.distributed as dist

from ...core.errors import CsgError

TIMEOUT_ENV = "CSG_DIST_TIMEOUT"


class FailureReporter:
    """The store-backed diagnosis of which ranks stopped, for one process group."""

    def __init__(self, rank: int, world_size: int, timeout_s: float):
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self._client = None

    def _store(self):
        """A client of the launch's store (public ``TCPStore``), or None when it cannot be reached."""
        if self._client is None:
            host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
            if not host or not port:
                return None
            try:
                self._client = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=5))
            except Exception:  # noqa: BLE001 - the store went with the rank that hosted it
                return None
        return self._client

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


def on_sigterm(signum, frame):  # noqa: ARG001
    # torchrun sends SIGTERM to the survivors when a rank fails: end with a line, not silence
    raise SystemExit(128 + signum)
