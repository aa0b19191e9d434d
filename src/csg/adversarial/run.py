"""``csg attack RUN``: compute the adversarial experiment, draw its figures, write it (METHOD.md section 6).

Three separate steps, so each can be used alone:

* :func:`csg.adversarial.experiment.compute_adversarial` returns an
  :class:`~csg.adversarial.experiment.AdversarialResult` (nothing written);
* :func:`csg.adversarial.figures.render_figures` draws its figures into a folder;
* :func:`write_result` writes ``RUN/adversarial.json`` (the summary, schema
  ``csg.adversarial/2``) and ``RUN/adversarial.npz`` (the per-item arrays).

:func:`attack_run` does all three.
"""
from __future__ import annotations

from typing import Any

from ..runs.rundir import RunDir
from .experiment import AdversarialResult, compute_adversarial

JSON_NAME = "adversarial.json"
NPZ_NAME = "adversarial.npz"


def write_result(run: str | RunDir, result: AdversarialResult) -> dict[str, Any]:
    """Write the summary (JSON) and the arrays (npz) into the run directory; returns the summary written."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    summary = dict(result.summary)
    summary["arrays_file"] = NPZ_NAME if result.arrays else None
    if result.arrays:
        run.write_npz(NPZ_NAME, **result.arrays)
    run.write_json(JSON_NAME, summary)
    return summary


def attack_run(run: str | RunDir, *, figures: bool = True, **options) -> dict[str, Any]:
    """Compute the experiment (``options``: see :func:`compute_adversarial`), draw its figures, write it.

    Returns the summary as written to ``RUN/adversarial.json``.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    result = compute_adversarial(run, **options)
    result.summary["figures"] = []
    if figures:
        from .figures import render_figures

        result.summary["figures"] = render_figures(result, run.figures_dir, title=run.path.name)
    return write_result(run, result)


__all__ = ["attack_run", "write_result", "JSON_NAME", "NPZ_NAME"]
