"""The localization pipeline: maps -> regions -> IoU/AP against object masks -> JSON and figures."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import CsgError
from ..core.fingerprint import fingerprint, model_fingerprint
from ..core.io import file_sha256
from ..core.journal import read_journal, write_journal
from ..core.run_files import LOCALIZATION, LOCALIZATION_ARRAYS
from ..metrics.interpretability import CONVERGENCE_SLACK, gate_unconverged
from ..runs.earlier import read_earlier_json, read_earlier_npz, same_weights
from .maps import MapMethod, build_method, check_method_names
from .scoring import FilterScores, ImageScores, iou

#: the schema of localization.json; localization.npz holds image_index, labels and <method>_ious per image
SCHEMA = "csg.localization/2"
#: the methods an interrupted ``csg localize`` finished, in the run directory (removed once the result is written)
LOCALIZATION_JOURNAL = "localization.partial.npz"
#: datasets whose images come with object masks
MASKED_DATASETS = ("fashion-mnist-clutter", "voc-animals")
#: map values held at once (N x K x H x W floats), to bound memory on big models
ELEMENT_BUDGET = 1 << 25


def check_model_data(model, dataset, in_channels: int | None = None) -> None:
    """The model must take the data's channels and predict its classes."""
    channels = int(dataset.images.shape[1])
    expected = int(in_channels) if in_channels is not None else int(model.input_mean.shape[1])
    # without a config, a 1-channel normalisation buffer may just be a default; trust it only if > 1
    if expected != channels and (in_channels is not None or expected > 1):
        raise CsgError(f"the model takes {expected}-channel images but {dataset.name} has {channels}; "
                       "localize with the data the run was trained on")
    if len(dataset.classes) != model.num_classes:
        raise CsgError(f"the model predicts {model.num_classes} classes but {dataset.name} has "
                       f"{len(dataset.classes)}; localize with the data the run was trained on")
    if dataset.masks is None:
        raise CsgError(f"dataset {dataset.name!r} has no object masks; localization needs one of: "
                       f"{', '.join(MASKED_DATASETS)}")


def select_images(n: int, max_images: int | None, seed: int = 0) -> torch.Tensor:
    """All indices, or a seeded random ``max_images`` of them (sorted)."""
    if max_images is None or max_images >= n:
        return torch.arange(n)
    if max_images < 1:
        raise CsgError(f"--max-images must be positive, got {max_images}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_images].sort().values


def _batches(dataset, index: torch.Tensor, batch_size: int, device):
    for start in range(0, index.numel(), batch_size):
        idx = index[start:start + batch_size]
        images = dataset.images[idx].to(device=device, dtype=torch.float32) / 255.0
        yield idx, images, dataset.labels[idx].to(device), dataset.masks[idx].to(device)


def _batch_size(method: MapMethod, model, dataset, requested: int) -> int:
    _, c, h, w = dataset.images.shape
    per_image = (model.num_filters if method.per_filter else 1) * h * w * (c if method.name == "gradmap" else 1)
    return int(max(1, min(requested, ELEMENT_BUDGET // max(per_image, 1))))


def score_method(method: MapMethod, model, dataset, index: torch.Tensor, *, batch_size: int = 64,
                 device="cpu", progress: bool = False):
    """Run one method over the selected images: fit its region rule if needed, then score every region.

    Returns ``(result dict, fitted region rule)``.
    """
    bs = _batch_size(method, model, dataset, batch_size)
    rule = method.region_rule()

    def loop(desc):
        it = _batches(dataset, index, bs, device)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=(index.numel() + bs - 1) // bs, desc=desc, leave=False)
        return it

    timer = _FirstBatchEstimate(method.name, (index.numel() + bs - 1) // bs, 3 if rule.needs_fit else 1,
                                index.numel(), enabled=True)  # said even with --no-progress (logs of long runs)
    while rule.needs_fit:  # the dataset-wide level per filter: a histogram pass, then the values near it
        for _, x, y, _ in loop(f"{method.name} levels"):
            rule.update(method(model, x, y))
            timer.tick()
        rule.end_pass()
    c = model.num_classes
    scorer = FilterScores(c, model.num_filters) if method.per_filter else ImageScores(c)
    for _, x, y, m in loop(method.name):
        ious = iou(rule.regions(method(model, x, y)), m)
        scorer.update(ious, y)
        timer.tick()
    names = list(dataset.classes)
    if method.per_filter:
        result = scorer.result(select_ap=method.select_ap, class_names=names)
        result["num_images"] = int(index.numel())
    else:
        result = scorer.result(class_names=names)
    result["settings"] = {**method.describe(), **rule.describe()}
    result["_image_ious"] = scorer.image_ious()
    return result, rule


class _FirstBatchEstimate:
    """Says, after the first batch, how long a method will take over all its passes."""

    def __init__(self, name: str, batches: int, passes: int, images: int, enabled: bool):
        import time

        self.name, self.batches, self.passes, self.images, self.enabled = name, batches, passes, images, enabled
        self.start, self.done, self._time = time.perf_counter(), 0, time.perf_counter

    def tick(self) -> None:
        self.done += 1
        if self.enabled and self.done == 1:
            import sys

            per = self._time() - self.start
            total = per * self.batches * self.passes
            print(f"{self.name}: about {_duration(total)} for {self.images} images ({self.passes} pass"
                  f"{'es' if self.passes > 1 else ''}; first batch {per:.1f} s)", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def check_converged(run, *, allow_unconverged: bool = False, slack: float = CONVERGENCE_SLACK) -> str | None:
    """Refuse a learnable-gate run whose L1-density lies outside ``[1/C, rho + slack]``: its filters are
    not class-specific yet, so its localization says nothing about the method. Returns a note when
    ``allow_unconverged`` lets it through."""
    outside = gate_unconverged(run.metrics(), slack)
    if outside is None:
        return None
    density, lo, hi = outside
    text = (f"{run.path}'s gate has not converged: L1-density {density:.4f} lies outside "
            f"[1/C, rho + {slack:g}] = [{lo:.4f}, {hi:.4f}]")
    if not allow_unconverged:
        raise CsgError(f"{text}; train longer (more epochs or CSG steps; for CSG+ a larger --lambda2, "
                       "docs/tuning.md) or pass --allow-unconverged to score it anyway")
    return text + " (scored anyway: --allow-unconverged)"


def figure_rows(method: MapMethod, rule, model, dataset, index: torch.Tensor, result: dict, *,
                per_class: int = 2, max_classes: int = 10, device="cpu") -> list[dict]:
    """Rows for :func:`overlay_grid`: per class, its best filter (highest IoU among filters assigned to it)
    on the first ``per_class`` evaluated images of the class; for CAM, the images alone."""
    rows = []
    labels = dataset.labels[index]
    names = list(dataset.classes)
    for c in range(min(len(names), max_classes)):  # a handful of figure rows, not a hot path
        img_idx = index[labels == c][:per_class]
        if img_idx.numel() == 0:
            continue
        x = dataset.images[img_idx].to(device=device, dtype=torch.float32) / 255.0
        y = dataset.labels[img_idx].to(device)
        masks = dataset.masks[img_idx].to(device)
        if method.per_filter:
            pf = result["per_filter"]
            cand = [k for k, ck in enumerate(pf["class"]) if ck == c]
            if not cand:
                continue
            k = max(cand, key=lambda j: pf["avg_iou"][j])
            maps = method(model, x, y, filters=[k])
            regions = rule.regions(maps, filters=[k])[:, 0]
            maps = maps[:, 0]
            tag = f"{names[c]}, filter {k}"
        else:
            maps = method(model, x, y)
            regions = rule.regions(maps)
            tag = names[c]
        scores = iou(regions, masks)
        for i in range(img_idx.numel()):
            rows.append({"image": x[i].cpu().numpy(), "map": maps[i].detach().cpu().numpy(),
                         "mask": masks[i].cpu().numpy(), "region": regions[i].cpu().numpy(),
                         "iou": float(scores[i]), "label": f"{tag}\nimage {int(img_idx[i])}"})
    return rows


def localize(model, dataset, methods: Sequence[str] = ("gradmap", "activmap", "cam"), *,
             sigma: float | None = None, threshold: float | None = None, quantile: float | None = None,
             max_images: int | None = None, batch_size: int = 64, device="cpu", seed: int = 0,
             figures_dir: str | Path | None = None, progress: bool = False,
             in_channels: int | None = None, journal_dir: str | Path | None = None) -> dict:
    """Score ``methods`` on ``dataset`` (which must have masks); returns ``{method: scores, "figures": [...]}``.

    ``per_image`` holds the arrays behind the scores (``image_index``, ``labels`` and ``<method>_ious``:
    N x K per-filter IoUs, or N for CAM), which ``csg compare`` resamples for its intervals.
    Each method's scores hold ``avg_iou``, ``ap20``, ``ap30`` at the top level and under ``total``,
    ``per_class`` rows and its ``settings``; per-filter methods add ``per_filter`` (class, scores).
    With ``figures_dir`` an overlay figure per method is drawn there. With ``journal_dir`` each method's
    result is kept there as it ends (``localization.partial.npz``, :mod:`csg.core.journal`), and a later
    call on the same images, weights and settings takes the methods it finds there instead of scoring
    them again (a note says which): an interrupted call resumes after its last finished method.
    """
    check_model_data(model, dataset, in_channels)
    check_method_names(methods)
    model.eval()
    index = select_images(len(dataset.labels), max_images, seed)
    out: dict = {"schema": SCHEMA, "num_images": int(index.numel()), "data": dataset.name,
                 "image_seed": int(seed), "max_images": max_images, "model_sha256": model_fingerprint(model)}
    arrays = {"image_index": index.numpy().astype(np.int64), "labels": dataset.labels[index].numpy().astype(np.int64)}
    figures, notes = [], []
    journal = _Journal(journal_dir, fingerprint(
        data=dataset.name, index=index, images=dataset.images[index], labels=dataset.labels[index],
        masks=dataset.masks[index], model=out["model_sha256"], sigma=sigma, threshold=threshold,
        quantile=quantile, batch_size=int(batch_size), device=str(device)))
    if journal.discarded:
        notes.append(journal.discarded)
    resumed = []
    for name in methods:
        method = build_method(name, sigma=sigma, threshold=threshold, quantile=quantile)
        done = journal.finished(name, figures_dir)
        if done is not None:  # scored by an interrupted call on the same images, weights and settings
            result, arrays[f"{name}_ious"], figure = done
            out[name] = result
            figures.extend([figure] if figure else [])
            resumed.append(name)
            continue
        result, rule = score_method(method, model, dataset, index, batch_size=batch_size, device=device,
                                    progress=progress)
        arrays[f"{name}_ious"] = result.pop("_image_ious")
        out[name] = result
        if figures_dir is not None:
            from .figures import overlay_grid

            rows = figure_rows(method, rule, model, dataset, index, result, device=device)
            path = Path(figures_dir) / f"localization_{name.replace(':', '-')}.png"  # captum:X
            overlay_grid(rows, path, f"{name}: image, map, object mask, region "
                                     f"(total IoU {result['avg_iou']:.3f})")
            what = "its best filter per class" if method.per_filter else "per class"
            figures.append({"path": f"figures/{path.name}",
                            "caption": f"{name} on {dataset.name}, {what}: the map over the image, the object "
                                       f"mask and the predicted region (avg IoU {result['avg_iou']:.3f}, "
                                       f"AP20 {result['ap20']:.3f}, AP30 {result['ap30']:.3f})."})
        journal.add(name, result, arrays[f"{name}_ious"], figures[-1] if figures_dir is not None else None)
    for name in methods:  # said of resumed methods too: it follows from their settings
        whole = out[name]["settings"].get("whole_image_filters") or []
        if whole:
            notes.append(f"{name}: {len(whole)} of {model.num_filters} filters have a dataset-level top-"
                         f"{out[name]['settings']['quantile']:.0%} level equal to their smallest value (their "
                         "zeros fill most of their cells), so the rule's region is the whole image and each "
                         "of them scores the object's share of the image, whatever it responds to "
                         "(settings.whole_image_filters)")
    if resumed:
        notes.append(f"resumed: {', '.join(resumed)} from {journal.path.name}, scored by an earlier call that "
                     "was interrupted (same images, weights and settings)")
    out["figures"] = figures
    out["notes"] = notes
    out["per_image"] = arrays
    return out


class _Journal:
    """The methods a call has finished, kept in ``localization.partial.npz`` (``folder=None``: nothing kept)."""

    def __init__(self, folder: str | Path | None, key: str):
        self.path = None if folder is None else Path(folder) / LOCALIZATION_JOURNAL
        self.key, self.discarded = key, None
        self.arrays: dict[str, np.ndarray] = {}
        self.extra: dict = {"results": {}, "figures": {}}
        if self.path is not None and self.path.exists():
            arrays, extra, why = read_journal(self.path, key)
            if arrays is None:
                self.discarded = why
            elif isinstance(extra, dict) and {"results", "figures"} <= set(extra):
                self.arrays, self.extra = arrays, extra

    def finished(self, name: str, figures_dir) -> tuple[dict, np.ndarray, dict | None] | None:
        """``(scores, per-image IoUs, figure entry)`` of a method the journal holds, else ``None``. Its figure
        is kept only if the file is still there (it was drawn before the journal entry was written)."""
        result = self.extra["results"].get(name)
        if result is None or f"{name}_ious" not in self.arrays:
            return None
        figure = self.extra["figures"].get(name)
        if figure is not None and (figures_dir is None or not (Path(figures_dir) / Path(figure["path"]).name).exists()):
            figure = None
        return result, self.arrays[f"{name}_ious"], figure

    def add(self, name: str, result: dict, ious: np.ndarray, figure: dict | None) -> None:
        if self.path is None:
            return
        self.extra["results"][name] = result
        self.extra["figures"][name] = figure
        self.arrays[f"{name}_ious"] = ious
        write_journal(self.path, self.key, self.arrays, self.extra)


def scored_methods(result: dict) -> list[str]:
    """The map methods a ``localization.json`` holds scores for, in its order."""
    return [k for k, v in result.items() if isinstance(v, dict) and "avg_iou" in v]


def carry_over(run, result: dict, arrays: dict) -> list[str]:
    """Add to ``result`` (and its per-image ``arrays``) the map methods of the run's earlier
    ``localization.json`` that this call did not score: their scores, their ``{method}_ious``, their
    figures and notes. Kept only when they were taken on the same images (data, split, draw and image
    index) with the same weights (:func:`csg.runs.earlier.same_weights`). Returns the names kept."""
    earlier, why = read_earlier_json(run, LOCALIZATION, SCHEMA)
    notes = result.setdefault("notes", [])
    if why:
        notes.append(why)
    if earlier is None:
        return []
    ran = set(scored_methods(result))
    names = [k for k in scored_methods(earlier) if k not in ran]
    if not names:
        return []
    what = ", ".join(names)
    keys = ("data", "split", "image_seed", "max_images", "num_images")
    if any(earlier.get(k) != result.get(k) for k in keys):
        notes.append(f"the earlier results of {what} were on other images ("
                     + ", ".join(f"{k} {earlier.get(k)}" for k in keys if earlier.get(k) != result.get(k))
                     + "); they were dropped")
        return []
    keep, note = same_weights(run, LOCALIZATION, earlier.get("model_sha256"), result.get("model_sha256"), names)
    if not keep:
        notes.append(note)
        return []
    old, why = read_earlier_npz(run, LOCALIZATION_ARRAYS, LOCALIZATION, earlier.get("arrays_sha256"))
    if old is None or not np.array_equal(old.get("image_index"), arrays["image_index"]) or \
            any(f"{m}_ious" not in old for m in names):
        notes.append(why or f"the earlier {LOCALIZATION_ARRAYS} does not hold the images or scores of {what}; "
                            "they were dropped")
        return []
    notes.append(note)
    for m in names:
        result[m] = earlier[m]
        arrays[f"{m}_ious"] = old[f"{m}_ious"]
        stem = f"figures/localization_{m.replace(':', '-')}.png"
        result["figures"].extend(f for f in earlier.get("figures", []) if isinstance(f, dict) and f.get("path") == stem)
        notes.extend(n for n in earlier.get("notes", []) if isinstance(n, str) and n.startswith(f"{m}:"))
    return names


def localize_run(run, data: str | None = None, methods: Sequence[str] = ("gradmap", "activmap", "cam"), *,
                 data_dir: str | None = None, split: str = "test", device="cpu", allow_unconverged: bool = False,
                 dataset=None, keep_earlier: bool = True, **options) -> dict:
    """``csg localize``: load the run's model and the masked dataset, score, write ``RUN/localization.json``.

    ``dataset``: your own images with object masks instead of a built-in masked set: a torch ``Dataset`` of
    ``(image, label, mask)`` (mask H x W, nonzero on the object), a ``DataLoader`` of such batches, or a csg
    dataset with masks.
    ``keep_earlier``: keep the map methods of the earlier ``localization.json`` that this call does not
    score (:func:`carry_over`; never with your own ``dataset``). One writer at a time (the run's lock).
    """
    from ..data import load_dataset

    cfg = run.config
    name = data or cfg.get("data")
    own_data = dataset is not None
    if dataset is not None:
        note = check_converged(run, allow_unconverged=allow_unconverged)
        dataset = run.dataset(dataset, split, with_masks=True)
    elif cfg.get("data_source") == "python" and data is None:
        run.load_dataset(split)  # one line: the run was trained on your own data, pass it with dataset=
    elif name not in MASKED_DATASETS:
        raise CsgError(f"dataset {name!r} has no object masks; localization needs one of: "
                       f"{', '.join(MASKED_DATASETS)} (pass it with --data)")
    if dataset is None:
        note = check_converged(run, allow_unconverged=allow_unconverged)
        dataset = load_dataset(name, split=split, data_dir=data_dir if data_dir is not None else cfg.get("data_dir"))
    model = run.load_model(device)
    with run.lock("localizing"):
        result = localize(model, dataset, methods, device=device, figures_dir=run.figures_dir,
                          in_channels=cfg.get("in_channels"), journal_dir=None if own_data else run.path,
                          **options)
        result["split"] = split
        result["notes"] = ([note] if note else []) + result.get("notes", [])
        arrays = result.pop("per_image")
        if keep_earlier and not own_data:
            carry_over(run, result, arrays)
        result["arrays_sha256"] = file_sha256(run.write_npz(LOCALIZATION_ARRAYS, **arrays))
        run.write_json(LOCALIZATION, result)
        run.update_metrics({f"loc_{m}_{k}": result[m][k] for m in scored_methods(result)
                            for k in ("avg_iou", "ap20", "ap30")})
        (run.path / LOCALIZATION_JOURNAL).unlink(missing_ok=True)  # the result is written: nothing to resume
    return result
