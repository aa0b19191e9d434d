"""Progress of a black-box attack kept on disk, so that an interrupted ``csg attack`` resumes.

At the published settings a black-box attack takes most of an hour per model on a CPU (one-pixel up to
40,400 queries per image, local search up to 90,000). :class:`BlackBoxJournal` keeps one file per attack in
the run directory, ``adversarial.{attack}.partial.npz``, written atomically after every piece of
:data:`PIECE` images. It holds the per-image results so far and a fingerprint of everything that decides
them: the attack, its options and seed, the device, the attacked images and labels, and the model's
weights. A later run with the same fingerprint starts after the last piece written. A run with another
fingerprint starts over. Attacks seed each image by its place in the sample (``index_offset``), so a
resumed attack returns what an uninterrupted one would. The journal is removed once ``adversarial.json``
is written.

A white-box attack's pair collection (CW at its published budget takes most of an hour per model) is kept
the same way by :class:`WhiteBoxJournal`, in the same file name: the collectors' walk and findings, the
attack's cost model, pass count and random state, written atomically between steps (at most every
:data:`SAVE_EVERY` seconds, and whenever a split is complete). A resumed collection attacks the images an
uninterrupted one would have attacked next, with the same random numbers.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.journal import read_journal, write_journal
from .blackbox import BlackBoxResult

#: Images per piece: local search's batch of images (pieces must start at its multiples to resume exactly).
PIECE = 16
#: Seconds between two writes of a white-box journal (a write copies and compresses every pair found so far).
SAVE_EVERY = 30.0


class BlackBoxJournal:
    """The finished pieces of one black-box attack; :meth:`add` saves each piece as it ends.

    ``folder=None`` keeps everything in memory (nothing is written, nothing resumes).
    """

    def __init__(self, folder: str | Path | None, attack: str, key: str):
        self.path = journal_path(folder, attack) if folder is not None else None
        self.key = key
        self.arrays: dict[str, np.ndarray] = {}
        self.extra: dict[str, Any] = {}
        self.resumed = 0
        self.discarded: str | None = None  # why a journal on disk was not used
        if self.path is not None and self.path.exists():
            self._load()

    @property
    def count(self) -> int:
        """Images finished so far."""
        return int(len(self.arrays["success"])) if self.arrays else 0

    def _load(self) -> None:
        saved, extra, self.discarded = read_journal(self.path, self.key)
        if saved is None:
            return
        lengths = {len(v) for v in saved.values()}
        if len(lengths) != 1 or "success" not in saved:
            self.discarded = f"{self.path.name} has arrays of different lengths; started over"
            return
        self.arrays, self.extra, self.resumed = saved, extra, int(lengths.pop())

    def add(self, part: BlackBoxResult) -> None:
        """Append a finished piece and write the journal (atomically) when it has a folder."""
        new = {"images": part.images.detach().cpu().numpy(), "success": part.success.cpu().numpy().astype(bool),
               "queries": part.queries.cpu().numpy().astype(np.int64)}
        for k, v in part.extra.items():
            if torch.is_tensor(v):
                new[f"extra.{k}"] = v.cpu().numpy()
            else:
                self.extra[k] = v
        self.arrays = new if not self.arrays else {k: np.concatenate([self.arrays[k], v]) for k, v in new.items()}
        if self.path is not None:
            write_journal(self.path, self.key, self.arrays, self.extra)

    def result(self) -> BlackBoxResult:
        """Every finished image as one :class:`BlackBoxResult`."""
        extra = dict(self.extra)
        extra.update({k.split(".", 1)[1]: torch.from_numpy(v) for k, v in self.arrays.items()
                      if k.startswith("extra.")})
        return BlackBoxResult(torch.from_numpy(self.arrays["images"]), torch.from_numpy(self.arrays["success"]),
                              torch.from_numpy(self.arrays["queries"]), extra)


class WhiteBoxJournal:
    """The saved state of one white-box attack's collection: ``state[part]`` for the parts ``test``,
    ``train``, ``cost`` and ``attack`` (each a dict of arrays, see ``PairCollector.state``), empty when
    nothing usable was on disk (``discarded`` then says why, if a file was there).

    ``folder=None`` keeps nothing (nothing is written, nothing resumes).
    """

    def __init__(self, folder: str | Path | None, attack: str, key: str, *, every: float | None = None):
        self.path = journal_path(folder, attack) if folder is not None else None
        self.key, self.every = key, float(SAVE_EVERY if every is None else every)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.discarded: str | None = None
        self._written = time.monotonic()
        if self.path is not None and self.path.exists():
            saved, _, self.discarded = read_journal(self.path, self.key)
            for name, value in (saved or {}).items():
                part, _, field = name.partition(".")
                self.state.setdefault(part, {})[field] = value

    def save(self, parts: Callable[[], dict[str, dict[str, np.ndarray]]], *, force: bool = False) -> bool:
        """Write ``parts()`` atomically when ``every`` seconds have passed since the last write (or ``force``);
        returns whether it wrote. ``parts`` is called only then (gathering the pairs costs a copy)."""
        if self.path is None or not (force or time.monotonic() - self._written >= self.every):
            return False
        flat = {f"{part}.{field}": value for part, arrays in parts().items() for field, value in arrays.items()}
        write_journal(self.path, self.key, flat)
        self._written = time.monotonic()
        return True


def attack_in_pieces(attack: Callable[..., BlackBoxResult], model, images: torch.Tensor, labels: torch.Tensor,
                     journal: BlackBoxJournal, *, piece: int = PIECE, **options) -> BlackBoxResult:
    """``attack(model, images, labels, **options)`` in pieces of ``piece`` images, after those ``journal`` holds.

    Each piece is passed its ``index_offset`` in the sample and saved in ``journal`` when it ends.
    """
    if piece < 1:
        raise ValueError(f"piece must be >= 1, got {piece}")
    for start in range(journal.count, len(images), piece):
        sl = slice(start, start + piece)
        journal.add(attack(model, images[sl], labels[sl], index_offset=start, **options))
    return journal.result()


def journal_path(folder: str | Path, attack: str) -> Path:
    """Where the journal of ``attack`` lives in a run directory."""
    return Path(folder) / f"adversarial.{attack}.partial.npz"


__all__ = ["BlackBoxJournal", "WhiteBoxJournal", "PIECE", "attack_in_pieces", "journal_path"]
