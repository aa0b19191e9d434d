"""A journal: the finished part of a long computation, kept on disk so that an interrupted call resumes.

One npz, written atomically (a kill at any moment leaves the previous complete journal): ``key``, a
fingerprint of everything that decides the results (:mod:`csg.core.fingerprint`); ``extra``, JSON; and
the arrays. A reader trusts a journal only when its key is the one it would write: a journal for other
settings, images or weights, or one that cannot be read, is set aside with the reason, and the work
starts over. ``csg attack`` (per attack) and ``csg localize`` (per map method) keep one.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_save_npz, jsonable


def write_journal(path: str | Path, key: str, arrays: dict[str, np.ndarray], extra: Any = None) -> Path:
    """Write ``arrays`` and the JSON ``extra`` under ``key`` (atomically)."""
    return atomic_save_npz(path, key=np.array(key), extra=np.array(json.dumps(jsonable(extra or {}))), **arrays)


def read_journal(path: str | Path, key: str) -> tuple[dict[str, np.ndarray] | None, Any, str | None]:
    """``(arrays, extra, None)`` of a journal written for ``key``; otherwise ``(None, {}, why not)``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = {k: data[k] for k in data.files}
        found, extra = str(saved.pop("key")), json.loads(str(saved.pop("extra")))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        return None, {}, f"{path.name} could not be read ({type(exc).__name__}); started over"
    if found != key:
        return None, {}, f"{path.name} was written for other settings, images or weights; started over"
    return saved, extra, None


__all__ = ["write_journal", "read_journal"]
