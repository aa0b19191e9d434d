"""``csg attack RUN``: compute the adversarial experiment, draw its figures, write it (METHOD.md section 6).

Three separate steps, so each can be used alone:

* :func:`csg.adversarial.experiment.compute_adversarial` returns an
  :class:`~csg.adversarial.experiment.AdversarialResult` (nothing written);
* :func:`csg.adversarial.figures.render_figures` draws its figures into a folder;
* :func:`write_result` writes ``RUN/adversarial.json`` (the summary, schema
  ``csg.adversarial/2``) and ``RUN/adversarial.npz`` (the per-item arrays).

:func:`attack_run` does all three, under the run's lock, and keeps the black-box attacks' progress in
the run directory while they run (``adversarial.{attack}.partial.npz``) so that an interrupted run resumes.
"""
from __future__ import annotations

from typing import Any

from ..runs.rundir import RunDir
from .experiment import AdversarialResult, compute_adversarial
from .journal import journal_path

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

    One writer at a time (the run's lock). The black-box attacks keep their progress in the run
    directory, so an interrupted call resumes them; the journals are removed once the result is written.
    Returns the summary as written to ``RUN/adversarial.json``.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    with run.lock("attacking"):
        options.setdefault("journal_dir", run.path)
        result = compute_adversarial(run, **options)
        result.summary["figures"] = []
        if figures:
            from .figures import render_figures

            result.summary["figures"] = render_figures(result, run.figures_dir, title=run.path.name)
        summary = write_result(run, result)
        for name in result.summary.get("blackbox", {}):  # another attack's journal is kept for its own resume
            journal_path(run.path, name).unlink(missing_ok=True)
        return summary


__all__ = ["attack_run", "write_result", "JSON_NAME", "NPZ_NAME"]
