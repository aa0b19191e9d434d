"""Adding to what an earlier call wrote into a run directory, instead of replacing it.

``csg attack`` and ``csg localize`` write one summary per run (``adversarial.json``,
``localization.json``). A call that runs only some attacks or some map methods keeps the others from the
earlier file, as long as they were computed from the same weights: the summary records the sha256 of the
model (:func:`csg.core.fingerprint.model_fingerprint`), and a file written before csg recorded it is
trusted only when the checkpoint is older than it.
"""
from __future__ import annotations

import zipfile
from typing import Sequence

import numpy as np

from ..core.errors import CsgError
from ..core.io import file_sha256
from .rundir import RunDir


def read_earlier_json(run: RunDir, name: str, schema: str) -> tuple[dict | None, str | None]:
    """The run's earlier ``name``, or ``(None, why)`` when it cannot be used (``(None, None)``: no file)."""
    if not run.has(name):
        return None, None
    try:
        summary = run.read_json(name)
    except (CsgError, OSError, ValueError) as exc:  # a damaged file is replaced; this call's work is kept
        return None, f"the earlier {name} could not be read ({type(exc).__name__}); it was replaced"
    if not isinstance(summary, dict) or summary.get("schema") != schema:
        return None, f"the earlier {name} is not schema {schema}; it was replaced"
    return summary, None


def read_earlier_npz(run: RunDir, name: str | None, summary_name: str,
                     sha256: str | None = None) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The arrays of the earlier file ``name`` (``{}`` when there is none), or ``(None, why)``; with
    ``sha256`` (the digest the summary recorded) a file from another call is refused."""
    if not name or not run.has(str(name)):
        return {}, None
    if sha256 is not None and file_sha256(run.file(str(name))) != sha256:
        return None, (f"the earlier {name} is not the file {summary_name} was written with (an interrupted "
                      f"write?); the earlier results were dropped")
    try:
        with np.load(run.file(str(name)), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}, None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return None, f"the earlier {name} could not be read ({type(exc).__name__}); {summary_name} was replaced"


def same_weights(run: RunDir, summary_name: str, recorded: str | None, current: str | None,
                 names: Sequence[str]) -> tuple[bool, str]:
    """Whether the earlier results ``names`` of ``summary_name`` (weights hash ``recorded``) may stand
    beside this call's (``current``), and the note that says what was done."""
    what = ", ".join(names)
    if recorded is not None:
        if recorded != current:
            return False, (f"the earlier results of {what} were for other weights (the model was trained "
                           "again); they were dropped")
        return True, f"kept {what} from an earlier call on the same weights (not run again)"
    written = run.file(summary_name).stat().st_mtime
    if not run.checkpoint_path.exists() or run.checkpoint_path.stat().st_mtime > written:
        return False, (f"the earlier results of {what} do not name their weights and the checkpoint is newer "
                       "than them; they were dropped")
    return True, (f"kept {what} from an earlier {summary_name} that does not name its weights: the checkpoint "
                  "is older than that file")
