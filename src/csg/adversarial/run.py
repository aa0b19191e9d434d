"""``csg attack RUN``: compute the adversarial experiment, draw its figures, write it (METHOD.md section 6).

Three separate steps, so each can be used alone:

* :func:`csg.adversarial.experiment.compute_adversarial` returns an
  :class:`~csg.adversarial.experiment.AdversarialResult` (nothing written);
* :func:`csg.adversarial.figures.render_figures` draws its figures into a folder;
* :func:`write_result` writes ``RUN/adversarial.json`` (the summary, schema
  ``csg.adversarial/2``) and ``RUN/adversarial.npz`` (the per-item arrays).

:func:`attack_run` does all three, under the run's lock, and keeps every attack's progress in the run
directory while it runs (``adversarial.{attack}.partial.npz``) so that an interrupted run resumes.
It adds to what earlier calls wrote: an attack of the earlier ``adversarial.json`` that this call did not
run is kept (:func:`carry_over`), so ``csg attack RUN --attacks none --blackbox local-search`` does not
drop a one-pixel result that took an hour. It is kept only for the same weights (``model_sha256``).
"""
from __future__ import annotations

from typing import Any

from ..core.io import file_sha256
from ..runs.earlier import read_earlier_json, read_earlier_npz, same_weights
from ..runs.rundir import RunDir
from .examples import example_from_arrays
from .experiment import SCHEMA, AdversarialResult, compute_adversarial
from .journal import journal_path

JSON_NAME = "adversarial.json"
NPZ_NAME = "adversarial.npz"


def write_result(run: str | RunDir, result: AdversarialResult) -> dict[str, Any]:
    """Write the summary (JSON) and the arrays (npz) into the run directory; returns the summary written."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    summary = dict(result.summary)
    summary["arrays_file"] = NPZ_NAME if result.arrays else None
    summary["arrays_sha256"] = file_sha256(run.write_npz(NPZ_NAME, **result.arrays)) if result.arrays else None
    run.write_json(JSON_NAME, summary)
    return summary


def carry_over(run: RunDir, result: AdversarialResult) -> list[str]:
    """Add to ``result`` the attacks of the run's earlier ``adversarial.json`` that it did not run.

    Kept only when the earlier file names the same weights (``model_sha256``). A file written before
    csg recorded the weights' hash is kept when the checkpoint is older than it (the model has not been
    trained again since), and the note says so. Each kept attack brings its summary entries, its arrays
    (``{attack}.*``), its example for the figure (when the earlier npz has it) and the earlier call's
    settings (``summary["earlier_settings"][attack]``).
    Returns the names kept.
    """
    earlier, why = read_earlier_json(run, JSON_NAME, SCHEMA)
    notes = result.summary.setdefault("notes", [])
    if why:
        notes.append(why)
    if earlier is None:
        return []
    ran = set(result.summary["settings"]["attacks"]) | set(result.summary["settings"]["blackbox"])
    sections = ("attack_success", "detection", "blackbox")
    names = sorted({n for sec in sections for n in (earlier.get(sec) or {}) if n not in ran})
    if not names:
        return []
    keep, note = same_weights(run, JSON_NAME, earlier.get("model_sha256"), result.summary.get("model_sha256"), names)
    if not keep:
        notes.append(note)
        return []
    arrays, why = read_earlier_npz(run, earlier.get("arrays_file"), JSON_NAME,
                                   earlier.get("arrays_sha256"))  # read only when something is kept
    if arrays is None:
        notes.append(why)
        return []
    notes.append(note)
    kept_settings = result.summary.setdefault("earlier_settings", {})
    for name in names:
        for sec in sections:
            if name in (earlier.get(sec) or {}):
                result.summary[sec][name] = earlier[sec][name]
        result.arrays.update({k: v for k, v in arrays.items() if k.startswith(f"{name}.")})
        if f"{name}.example.images" in arrays and name not in result.examples:  # drawn beside this call's
            result.examples[name] = example_from_arrays(arrays[f"{name}.example.images"],
                                                        arrays[f"{name}.example.labels"])
        kept_settings[name] = earlier.get("settings", {})
        notes.extend(n for n in earlier.get("notes", []) if isinstance(n, str)
                     and n.startswith((f"{name}:", f"black-box {name}:")))
    result.summary["arrays"] = sorted(result.arrays)
    return names


def attack_run(run: str | RunDir, *, figures: bool = True, keep_earlier: bool = True, **options) -> dict[str, Any]:
    """Compute the experiment (``options``: see :func:`compute_adversarial`), draw its figures, write it.

    One writer at a time (the run's lock). The attacks keep their progress in the run directory, so an
    interrupted call resumes them; the journals are removed once the result is written.
    ``keep_earlier``: keep the earlier attacks this call does not run (:func:`carry_over`; never with your
    own ``dataset``, whose images the earlier results were not taken on).
    Returns the summary as written to ``RUN/adversarial.json``.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    with run.lock("attacking"):
        options.setdefault("journal_dir", run.path)
        result = compute_adversarial(run, **options)
        if keep_earlier and options.get("dataset") is None and options.get("train_dataset") is None:
            carry_over(run, result)
        result.summary["figures"] = []
        if figures:
            from .figures import render_figures

            result.summary["figures"] = render_figures(result, run.figures_dir, title=run.path.name)
        summary = write_result(run, result)
        settings = result.summary["settings"]
        for name in [*settings["attacks"], *settings["blackbox"]]:  # another attack's journal is kept for its
            journal_path(run.path, name).unlink(missing_ok=True)     # own resume
        return summary


__all__ = ["attack_run", "carry_over", "write_result", "JSON_NAME", "NPZ_NAME"]
