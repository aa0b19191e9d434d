"""The data of ``csg compare``: every run's numbers, each method's mean ± std, and each method's paired
difference from STD with a 95% interval (schema ``csg.comparison/2``). Drawing and writing the page is
:mod:`.compare`'s job; this module only computes.

Differences (method minus STD, same data and architecture):

* several seeds that both methods ran: one difference per seed, ``mean +- t_{0.975, n-1} sd / sqrt(n)``
  (:func:`csg.metrics.paired_t_interval`);
* one seed: a bootstrap over the test items behind the number - paired when both runs scored the same
  items (accuracy: the test images; localization: the same canvases), matched by image id when the two
  item sets overlap (black-box images, detector test pairs: the shared items resampled together, each
  run's own items on their own); MIS and gap closed by subsampling without replacement, since a
  duplicated image would sit at distance 0 from itself in the k-NN MI estimator.

``excludes_zero`` says whether the interval decides the sign of the difference.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import CsgError
from ..core.io import file_sha256
from ..core.run_files import (ADVERSARIAL, ADVERSARIAL_ARRAYS, ANALYSIS, FEATURES, GRAPH, LOCALIZATION,
                              LOCALIZATION_ARRAYS)
from ..metrics import (mis_ceiling, mutual_information_matrix, paired_bootstrap_mean_difference,
                       paired_t_interval, subsample_interval)
from ..metrics.statistics import (Interval, independent_bootstrap_mean_difference, matched_bootstrap_mean_difference,
                                  paired_bootstrap_interval)

SCHEMA = "csg.comparison/2"
BASELINE = "std"
LOC_METHODS = ("gradmap", "activmap", "cam")
LOC_METRICS = ("avg_iou", "ap20", "ap30")
#: metric key -> (label, higher is better); localization, detection and black-box keys are added per run
MAIN_METRICS: "OrderedDict[str, tuple[str, bool]]" = OrderedDict([
    ("accuracy", ("accuracy", True)),
    ("mis", ("MIS", True)),
    ("gap_closed", ("gap closed", True)),
    ("gate_mi_agreement", ("gate-MI agreement", True)),
    ("gate_activation_agreement", ("gate-activation agreement", True)),
])


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _read_json(path: Path) -> dict | None:
    from ..core.io import read_json

    if not path.is_file():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) else None


class RunResults:
    """One run directory's numbers for the comparison, read by schema."""

    def __init__(self, path: str | Path):
        from ..runs.rundir import RunDir

        self.run = RunDir(path)
        self.path = Path(path)
        self.cfg = self.run.config
        self.metrics = self.run.metrics()
        self.method = str(self.cfg.get("method", self.metrics.get("method", "?")))
        self.data = str(self.cfg.get("data", "?"))
        self.arch = str(self.cfg.get("model_builder") or self.cfg.get("arch", "?"))  # --model: its factory
        self.seed = self.cfg.get("seed")
        self.label = self.path.resolve().name
        self.recorded_in: Path | None = None  # a run directory, not an earlier comparison's record
        self.notes: list[str] = []
        self._arrays_read: dict[str, dict[str, np.ndarray] | None] = {}
        self.analysis = _read_json(self.path / ANALYSIS)
        self.localization = self._schema(LOCALIZATION, "csg.localization/2", "localize")
        self.adversarial = self._schema(ADVERSARIAL, "csg.adversarial/2", "attack")
        self.graph = _read_json(self.path / GRAPH)
        C = self.metrics.get("num_classes") or self.cfg.get("num_classes")
        self.num_classes = int(C) if C else None

    def _schema(self, name: str, schema: str, command: str) -> dict | None:
        data = _read_json(self.path / name)
        if data is None:
            return None
        if data.get("schema") != schema:
            self.notes.append(f"{self.label}: {name} has schema {data.get('schema')!r}, not {schema!r}; re-run "
                              f"`csg {command} {self.path}` to include it")
            return None
        return data

    @property
    def ceiling(self) -> float | None:
        c = _num(self.metrics.get("mis_ceiling"))
        return c if c is not None else (mis_ceiling(num_classes=self.num_classes) if self.num_classes else None)

    def training_seconds(self) -> float | None:
        secs = [_num(r.get("seconds")) for r in self.run.log()]
        secs = [s for s in secs if s is not None]
        return float(sum(secs)) if secs else None

    def values(self) -> dict[str, float | None]:
        m = self.metrics
        out = {k: _num(m.get(k)) for k in ("accuracy", "mis", "gate_mi_agreement", "gate_activation_agreement",
                                           "l1_density", "csg_accuracy", "interpretation_accuracy",
                                           "accuracy_true_class_filters_removed", "icnn_masked_accuracy")}
        out["mis_ceiling"] = self.ceiling
        interval = m.get("l1_interval")
        if out["l1_density"] is not None and isinstance(interval, list) and len(interval) == 2:
            out["interval_low"], out["interval_high"] = _num(interval[0]), _num(interval[1])
        out["training_seconds"] = self.training_seconds()
        if self.analysis and isinstance(self.analysis.get("correlation"), dict):
            out["c_ic"] = _num(self.analysis["correlation"].get("c_ic"))
        for key, total in self.localization_totals().items():
            out[key] = total
        for key, value in self.adversarial_values().items():
            out[key] = value
        if self.graph is not None:
            from .graph_section import graph_values

            out.update({f"graph.{k}": v for k, v in graph_values(self.graph).items()})
        return out

    # ---- localization ------------------------------------------------------------------------------------
    def localization_totals(self) -> dict[str, float | None]:
        data = self.localization or {}
        # csg's maps first, then every other scored method of the file (captum:NAME), in its order
        methods = [k for k in LOC_METHODS if k in data] + [k for k in data if k not in LOC_METHODS
                                                            and isinstance(data[k], dict) and "total" in data[k]]
        return {f"loc.{k}.{m}": _num((data.get(k) or {}).get("total", {}).get(m))
                for k in methods if isinstance(data.get(k), dict) for m in LOC_METRICS}

    def localization_items(self) -> dict[str, np.ndarray] | None:
        return self._arrays(self.localization, LOCALIZATION_ARRAYS)

    def _arrays(self, result: dict | None, name: str) -> dict[str, np.ndarray] | None:
        """The arrays behind a result (its ``.npz``), when the result was read and the file exists."""
        if name not in self._arrays_read:  # read (and checked) once, though every pair of runs asks
            self._arrays_read[name] = self._read_arrays(result, name)
        return self._arrays_read[name]

    def _read_arrays(self, result: dict | None, name: str) -> dict[str, np.ndarray] | None:
        path = self.path / name
        if result is None or not path.is_file():
            return None
        recorded = result.get("arrays_sha256")
        if recorded is not None and file_sha256(path) != recorded:
            self.notes.append(f"{self.label}: {name} is not the file its summary was written with (an interrupted "
                              "write?), so its per-item intervals are left out; re-run the command that wrote it")
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    # ---- adversarial (csg.adversarial/2) ------------------------------------------------------------------
    def adversarial_values(self) -> dict[str, float | None]:
        data = self.adversarial or {}
        out: dict[str, float | None] = {}
        if self.adversarial is not None:
            out["adversarial_clean_accuracy"] = _num(data.get("clean_accuracy"))
        for attack, per_size in (data.get("detection") or {}).items():
            for size, cell in (per_size or {}).items():
                if isinstance(cell, dict):
                    out[f"detection.{attack}.{size}"] = _num(cell.get("mean"))
        for attack, entry in (data.get("blackbox") or {}).items():
            if isinstance(entry, dict):
                out[f"blackbox.{attack}"] = _num(entry.get("success_rate"))
        return out

    def adversarial_items(self) -> dict[str, np.ndarray] | None:
        return self._arrays(self.adversarial, ADVERSARIAL_ARRAYS)

    def features(self) -> dict[str, np.ndarray] | None:
        return self.run.features() if self.run.has(FEATURES) else None


class RecordedRun:
    """A run known by the values an earlier comparison recorded (an entry of its ``comparison.json``),
    whose directory may be gone: it joins the rows and the per-seed differences like a run directory,
    and has no figures, pages or per-image arrays (so no one-seed bootstrap)."""

    def __init__(self, entry: dict, source: Path):
        try:
            self.label = str(entry["label"])
            self.method, self.data, self.arch = str(entry["method"]), str(entry["data"]), str(entry["arch"])
            recorded = dict(entry["values"])
        except (KeyError, TypeError, ValueError):
            raise CsgError(f"{source}: a run entry lacks label, method, data, arch or values; pass a "
                           "comparison.json written by csg compare") from None
        self.seed = entry.get("seed")
        self.path = Path(str(entry.get("path") or self.label))
        # re-recorded (a comparison.json of comparison.json files) keeps the file it was first recorded in
        self.recorded_in: Path | None = Path(entry["recorded_in"]) if entry.get("recorded_in") else source
        recorded.pop("gap_closed", None)  # recomputed against the STD runs of this comparison
        self._values = {k: _num(v) for k, v in recorded.items()}
        self.notes: list[str] = []
        self.run = self.analysis = self.localization = self.adversarial = self.graph = None
        self.num_classes = None

    @property
    def ceiling(self) -> float | None:
        return self._values.get("mis_ceiling")

    def values(self) -> dict[str, float | None]:
        return dict(self._values)

    def localization_items(self):
        return None

    def adversarial_items(self):
        return None

    def features(self):
        return None


def recorded_runs(path: Path) -> list[RecordedRun]:
    """The runs of an earlier ``comparison.json`` (schema ``csg.comparison/2``)."""
    data = _read_json(path)
    if data is None or data.get("schema") != SCHEMA or not isinstance(data.get("runs"), list):
        raise CsgError(f"{path} is not a comparison.json of csg compare (schema {SCHEMA}); pass run directories "
                       "or such a file")
    return [RecordedRun(entry, path) for entry in data["runs"] if isinstance(entry, dict)]


# ---- one-seed intervals from the items behind each number ------------------------------------------------
def _mis_of(pooled: np.ndarray, labels: np.ndarray, C: int) -> float:
    return float(mutual_information_matrix(pooled, labels, num_classes=C).max(axis=1).mean())


def _one_seed_interval(metric: str, a: RunResults, b: RunResults, *, reps: int, seed: int) -> Interval | None:
    """The difference ``metric(a) - metric(b)`` for one run each, from their items; None when the items
    are not there (the row then shows the difference without an interval)."""
    if metric == "accuracy":
        fa, fb = a.features(), b.features()
        if fa is None or fb is None or not np.array_equal(fa["labels"], fb["labels"]):
            return None
        return paired_bootstrap_mean_difference(fa["predictions"] == fa["labels"], fb["predictions"] == fb["labels"],
                                                reps=reps, seed=seed)
    if metric in ("mis", "gap_closed"):
        fa, fb = a.features(), b.features()
        if fa is None or fb is None or not np.array_equal(fa["labels"], fb["labels"]) or a.num_classes is None:
            return None
        y, C, H = fa["labels"], a.num_classes, a.ceiling

        def stat(idx):
            ma, mb = _mis_of(fa["pooled"][idx], y[idx], C), _mis_of(fb["pooled"][idx], y[idx], C)
            return ma - mb if metric == "mis" else (ma - mb) / (H - mb)

        return subsample_interval(stat, y.size, reps=max(20, reps // 20), seed=seed)
    if metric.startswith("loc."):
        _, method, which = metric.split(".")
        ia, ib = a.localization_items(), b.localization_items()
        key = f"{method}_ious"
        if ia is None or ib is None or key not in ia or key not in ib \
                or not np.array_equal(ia["image_index"], ib["image_index"]):
            return None
        from ..localization.scoring import totals_from_image_ious

        labels, C = ia["labels"], a.num_classes
        sel_a = (a.localization.get(method) or {}).get("select_ap")
        sel_b = (b.localization.get(method) or {}).get("select_ap")

        def stat(idx):
            ta = totals_from_image_ious(ia[key][idx], labels[idx], C, sel_a)
            tb = totals_from_image_ious(ib[key][idx], labels[idx], C, sel_b)
            return (ta[which] or 0.0) - (tb[which] or 0.0)

        return paired_bootstrap_interval(stat, labels.size, reps=max(50, reps // 10), seed=seed)
    if metric.startswith("detection.") or metric.startswith("blackbox."):
        ia, ib = a.adversarial_items(), b.adversarial_items()
        if ia is None or ib is None:
            return None

        def items(arrays: dict) -> tuple[np.ndarray, np.ndarray] | None:
            # (values, ids). Detector: the share of repeats that got each clean and each adversarial test
            # pair wrong, named 2*id and 2*id+1; black-box: success per attacked image, named by its id.
            if metric.startswith("detection."):
                _, attack, size = metric.split(".", 2)
                keys = (f"{attack}.n{size}.clean_correct", f"{attack}.n{size}.adv_correct")
                if not all(k in arrays for k in (*keys, f"{attack}.test_ids")):
                    return None
                ids = np.asarray(arrays[f"{attack}.test_ids"], dtype=np.int64).ravel()
                values = 1.0 - np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in keys])
                return values, np.concatenate([2 * ids, 2 * ids + 1])
            attack = metric.split(".", 1)[1]
            if f"{attack}.success" not in arrays or f"{attack}.ids" not in arrays:
                return None
            return np.asarray(arrays[f"{attack}.success"], dtype=np.float64), np.asarray(arrays[f"{attack}.ids"])

        xa, xb = items(ia), items(ib)
        if xa is None or xb is None or not xa[0].size or not xb[0].size:
            return None
        try:
            return matched_bootstrap_mean_difference(xa[0], xa[1], xb[0], xb[1], reps=reps, seed=seed)
        except CsgError:  # ids that do not name one item each cannot match items: each side on its own
            return independent_bootstrap_mean_difference(xa[0], xb[0], reps=reps, seed=seed)
    return None


def _gap_closed(mis: float | None, base: float | None, ceiling: float | None) -> float | None:
    if mis is None or base is None or ceiling is None or ceiling <= base:
        return None
    return (mis - base) / (ceiling - base)


def _split_selection(given: str | Path) -> tuple[Path, list[str] | None]:
    """``FILE.json:LABEL,LABEL`` -> (FILE.json, labels); anything else (an existing path included) as is."""
    text = str(given)
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    file, _, labels = text.rpartition(":")
    if not file.endswith(".json"):
        return Path(text), None
    return Path(file), [s.strip() for s in labels.split(",") if s.strip()]


def _selected(recorded: list, labels: list[str], path: Path) -> list:
    by_label = {r.label: r for r in recorded}
    missing = [x for x in labels if x not in by_label]
    if missing or not labels:
        raise CsgError(f"{path} records no run {', '.join(missing) or '(none named)'}; it has "
                       f"{', '.join(by_label)}")
    return [by_label[x] for x in labels]


def _where(run) -> str:
    return f"{run.label} (recorded in {run.recorded_in})" if run.recorded_in is not None else str(run.path)


def repeated_seed_notes(runs: list) -> list[str]:
    """A note for each (data, arch, method, seed) given twice: both runs count in the row's mean and std as
    if they were two seeds, and only the later one is paired with STD's run of that seed. Variants of a
    method (other options, the same seed) are a real use, so this is said, not refused."""
    seen: dict[tuple, Any] = {}
    notes = []
    for r in runs:
        if r.seed is None:
            continue
        key = (r.data, r.arch, r.method, r.seed)
        if key in seen:
            notes.append(f"two {r.method} runs of seed {r.seed} on {r.data} / {r.arch}: {_where(seen[key])} and "
                         f"{_where(r)}; both count in the {r.method} row as if they were two seeds, and only "
                         f"{r.label} is paired with STD's seed {r.seed}. Pass one of them for a comparison over "
                         "seeds (FILE.json:LABEL,... takes some of a file's runs)")
        seen[key] = r
    return notes


def _aggregate(values: list[float | None]) -> dict[str, float | int | None]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size)}


def unique_labels(runs: list[RunResults]) -> None:
    """Run labels that tell runs apart (the parent folder when two runs share a name)."""
    import re

    seen: dict[str, int] = {}
    for r in runs:
        base = r.label
        if sum(x.label == base for x in runs) > 1:
            base = f"{r.path.resolve().parent.name}-{r.label}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        r.label = base if n == 0 else f"{base}-{n + 1}"
        r.slug = re.sub(r"[^A-Za-z0-9._-]+", "_", r.label)


def compare(paths: Sequence[str | Path], *, reps: int = 2000, seed: int = 0) -> tuple[dict, list[RunResults]]:
    """The comparison of the runs at ``paths`` (the content of ``comparison.json``) and the runs read."""
    if not paths:
        raise CsgError("no runs given; usage: csg compare RUN [RUN ...] --out DIR")
    runs: list = []
    for given in paths:  # a comparison.json brings the runs it recorded (FILE.json:LABEL,... some of them)
        p, labels = _split_selection(given)
        if p.suffix == ".json" and not p.exists():
            raise CsgError(f"{p}: no such file; pass run directories or comparison.json files of csg compare")
        if labels is not None:
            runs.extend(_selected(recorded_runs(p), labels, p))
        else:
            runs.extend(recorded_runs(p) if p.suffix == ".json" and p.is_file() else [RunResults(p)])
    unique_labels(runs)
    per_run = {r.label: r.values() for r in runs}
    # the STD baseline's mean MIS per (data, arch): each run's gap closed is measured against it
    std_mis: dict[tuple[str, str], float] = {}
    for key in {(r.data, r.arch) for r in runs}:
        vals = [per_run[r.label]["mis"] for r in runs if r.method == BASELINE and (r.data, r.arch) == key]
        vals = [v for v in vals if v is not None]
        if vals:
            std_mis[key] = float(np.mean(vals))
    for r in runs:
        v = per_run[r.label]
        v["gap_closed"] = _gap_closed(v["mis"], std_mis.get((r.data, r.arch)), v["mis_ceiling"])

    groups: "OrderedDict[tuple[str, str, str], list[RunResults]]" = OrderedDict()
    for r in sorted(runs, key=lambda r: (r.data, r.arch, r.method != BASELINE)):
        groups.setdefault((r.data, r.arch, r.method), []).append(r)
    keys = sorted({k for v in per_run.values() for k, x in v.items() if x is not None})
    rows = []
    for (data, arch, method), members in groups.items():
        rows.append({"method": method, "data": data, "arch": arch, "runs": [m.label for m in members],
                     "seeds": [m.seed for m in members],
                     "values": {k: _aggregate([per_run[m.label].get(k) for m in members]) for k in keys}})
    differences = _differences(groups, per_run, keys, reps=reps, seed=seed)
    notes = [n for r in runs for n in r.notes] + repeated_seed_notes(runs)
    result = {"schema": SCHEMA, "baseline": BASELINE,
              "runs": [{"label": r.label, "path": str(r.path), "method": r.method, "data": r.data, "arch": r.arch,
                        "seed": r.seed, "values": per_run[r.label],
                        **({"recorded_in": str(r.recorded_in)} if r.recorded_in is not None else {})} for r in runs],
              "rows": rows, "differences": differences, "notes": notes}
    return result, runs


def localization_keys(keys) -> list[str]:
    """The ``loc.METHOD.METRIC`` keys among ``keys``: csg's maps first (GradMap, ActivMap, CAM), then the
    others (``captum:NAME``) by name; within a method Avg-IoU, AP20, AP30."""
    found = {k for k in keys if k.startswith("loc.")}
    methods = sorted({k.split(".")[1] for k in found},
                     key=lambda m: (LOC_METHODS.index(m) if m in LOC_METHODS else len(LOC_METHODS), m))
    return [f"loc.{m}.{x}" for m in methods for x in LOC_METRICS if f"loc.{m}.{x}" in found]


def _metric_keys(keys: list[str]) -> list[str]:
    """The metrics compared against STD, in the page's order."""
    extra = localization_keys(keys) + sorted(k for k in keys if k.startswith(("detection.", "blackbox.", "graph.")))
    return [k for k in MAIN_METRICS if k in keys or k == "gap_closed"] + extra


def _differences(groups, per_run, keys, *, reps: int, seed: int) -> list[dict]:
    out = []
    for (data, arch, method), members in groups.items():
        base_runs = groups.get((data, arch, BASELINE))
        if method == BASELINE or not base_runs:
            continue
        by_seed_m = {r.seed: r for r in members}
        by_seed_b = {r.seed: r for r in base_runs}
        common = sorted(set(by_seed_m) & set(by_seed_b), key=str)
        for metric in _metric_keys(keys):
            pairs = []
            for s in common:
                vm, vb = per_run[by_seed_m[s].label].get(metric), per_run[by_seed_b[s].label].get(metric)
                if metric == "gap_closed":  # paired per seed: against that seed's own STD run
                    vm = _gap_closed(per_run[by_seed_m[s].label]["mis"], per_run[by_seed_b[s].label]["mis"],
                                     per_run[by_seed_b[s].label]["mis_ceiling"])
                    vb = 0.0 if vm is not None else None
                if vm is not None and vb is not None:
                    pairs.append((s, vm - vb))
            if not pairs:
                continue
            if len(pairs) >= 2:
                interval = paired_t_interval([d for _, d in pairs])
            else:
                s = pairs[0][0]
                interval = _one_seed_interval(metric, by_seed_m[s], by_seed_b[s], reps=reps, seed=seed)
                if interval is None:
                    interval = Interval(pairs[0][1], math.nan, math.nan, 1, "none")
            entry = {"method": method, "data": data, "arch": arch, "baseline": BASELINE, "metric": metric,
                     "label": MAIN_METRICS.get(metric, (metric, True))[0], "seeds": [s for s, _ in pairs],
                     "per_seed": [d for _, d in pairs], **interval.to_dict()}
            out.append(entry)
    return out


LOC_LABELS = {"gradmap": "GradMap", "activmap": "ActivMap", "cam": "CAM"}
METRIC_LABELS = {"avg_iou": "Avg-IoU", "ap20": "AP20", "ap30": "AP30"}


def metric_label(key: str) -> str:
    if key in MAIN_METRICS:
        return MAIN_METRICS[key][0]
    if key.startswith("loc."):
        _, m, which = key.split(".")
        name = LOC_LABELS.get(m) or (f"{m.split(':', 1)[1]} (Captum)" if m.startswith("captum:") else m)
        return f"{name} {METRIC_LABELS.get(which, which)}"
    if key.startswith("detection."):
        _, attack, size = key.split(".", 2)
        return f"{attack} detector error @{size}/class"
    if key.startswith("blackbox."):
        return f"{key.split('.', 1)[1]} success"
    if key.startswith("graph."):
        return key.split(".", 1)[1]
    return key
