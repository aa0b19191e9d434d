"""One writer per run directory: an advisory lock held by the writing process.

``with RunLock(folder): ...`` takes an exclusive ``flock`` on ``folder/.lock``
and writes the holder's pid and command into it. A second writer is refused
with one line naming the holder while the first process lives; the kernel
drops a ``flock`` when its process dies (even by SIGKILL), so the lock of a
dead process is simply taken over, with no stale-file clean-up to get wrong.
Locks are re-entrant within a process (train then evaluate keep one lock).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import CsgError
from .run_files import LOCK

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, writers are not serialised
    fcntl = None

_HELD: dict[str, list] = {}  # resolved lock path -> [file object, depth]


class RunLock:
    """Exclusive lock on a run directory for the lifetime of the block (re-entrant in one process)."""

    def __init__(self, folder: str | os.PathLike, *, what: str = "writing"):
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK

    def __enter__(self) -> "RunLock":
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            return self
        if fcntl is None or self.folder.is_file():
            if self.folder.is_file():
                raise CsgError(f"{self.folder} is a file, not a run directory; choose a folder name")
            _HELD[key] = [None, 1]
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise CsgError(f"{self.folder} is a file, not a run directory; choose a folder name")
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise CsgError(f"{self.folder} is being written by {holder}; wait for it to finish (or stop it) "
                           f"before {self.what} this run") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])[:120]})\n")
        fh.flush()
        _HELD[key] = [fh, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = str(self.path.resolve())
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            fh = _HELD.pop(key)[0]
            if fh is not None:
                fh.close()  # closing the descriptor releases the flock
