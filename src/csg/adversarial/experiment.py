"""The adversarial experiment of a run directory, computed (METHOD.md section 6): no drawing, no writing.

:func:`compute_adversarial` returns an :class:`AdversarialResult`: the summary
(``schema`` ``csg.adversarial/2``, written as ``RUN/adversarial.json``), the
per-item arrays (``RUN/adversarial.npz``) and example images for the figures.
``csg.adversarial.run`` draws and writes it.

1. Per white-box attack, on the test split in a seeded order: the success
   sample (the first ``success_samples`` correctly classified images, every
   one attacked; its success rate with the 95% Wilson interval) and the
   detector's test pairs (``test_size`` per class); on the train split the
   detector's training pairs (the largest training size per class). See
   :mod:`csg.adversarial.collect`.
2. The random-forest detector per training size: ``repeats`` seeded draws of
   the training pairs, each scored on every test pair; errors per repeat and,
   per test item, the fraction of repeats that got it right.
3. Black-box attacks on the first ``blackbox_samples`` correctly classified
   test images (the same seeded order): success per image, queries, rate with
   its Wilson interval.

Before the long work, one batch of every white-box attack runs and the whole
run's duration is estimated from it (``on_estimate``); a progress bar counts
model passes against that estimate (:mod:`csg.adversarial.progress`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.errors import CsgError
from ..runs.rundir import RunDir
from .attacks import ATTACKS, build_attack, perturbation_norms
from .blackbox import BLACKBOX, local_search_rounds, one_pixel_generations
from .collect import AttackCost, PairCollector
from .detector import BlockFeatures, default_jobs, detection_experiment
from .examples import example_to_arrays
from ..core.fingerprint import fingerprint, model_fingerprint
from .journal import PIECE, BlackBoxJournal, WhiteBoxJournal, attack_in_pieces
from .progress import FORWARD, WorkMeter
from .stats import rate_summary
from .targets import random_targets

SCHEMA = "csg.adversarial/2"


@dataclass
class AdversarialResult:
    """``summary`` (JSON-ready, with ``schema``), ``arrays`` (name -> array, for the npz), ``examples`` (figures)."""

    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    examples: dict[str, dict] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- settings
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CsgError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def check_settings(*, attacks: Sequence[str], train_sizes: Sequence[int], test_size: int, repeats: int,
                   success_samples: int | None, blackbox: Sequence[str], blackbox_samples: int, batch_size: int,
                   n_estimators: int, query_budget: int | None, jobs: int | None) -> tuple[list[str], list[str],
                                                                                            list[int]]:
    """Validate the options before anything is loaded; returns the cleaned attack lists and sizes."""
    attacks = [a.strip().lower() for a in attacks if a.strip()]
    blackbox = [b.strip().lower() for b in blackbox if b.strip()]
    for a in attacks:
        if a not in ATTACKS:
            raise CsgError(f"unknown attack {a!r}; available: {', '.join(ATTACKS)}")
    for b in blackbox:
        if b not in BLACKBOX:
            raise CsgError(f"unknown black-box attack {b!r}; available: {', '.join(BLACKBOX)}")
    if not attacks and not blackbox:
        raise CsgError("nothing to do: give attacks and/or black-box attacks")
    sizes = sorted({_positive_int("every training size", n) for n in train_sizes})
    if attacks and not sizes:
        raise CsgError("the detector needs at least one training size")
    for name, value in (("test_size", test_size), ("repeats", repeats), ("blackbox_samples", blackbox_samples),
                        ("batch_size", batch_size), ("n_estimators", n_estimators)):
        _positive_int(name, value)
    if success_samples is not None:
        _positive_int("success_samples", success_samples)
    if query_budget is not None:
        _positive_int("query_budget", query_budget)
    if jobs is not None:
        _positive_int("jobs", jobs)
    return attacks, blackbox, sizes


def _blackbox_budget(name: str, opts: dict, query_budget: int | None, hw: int) -> dict:
    """The whole generations / rounds a run gets and its worst-case queries per image (stated in the JSON)."""
    if name == "one-pixel":
        population = int(opts.get("population", 400))
        generations = one_pixel_generations(population, int(opts.get("max_iter", 100)), query_budget)
        return {"population": population, "generations": generations,
                "max_queries_per_image": population * (1 + generations)}
    d, t = int(opts.get("d", 5)), int(opts.get("t", 5))
    fraction = float(opts.get("seed_fraction", 0.1))
    rounds = local_search_rounds(hw, d=d, t=t, rounds=int(opts.get("rounds", 150)), seed_fraction=fraction,
                                 max_queries=query_budget)
    first, later = max(1, int(fraction * hw)) + 1, min(hw, t * (2 * d + 1) ** 2) + 1
    return {"rounds": rounds, "max_queries_per_image": first + (rounds - 1) * later}


# ------------------------------------------------------------------------------------------- helpers
@torch.no_grad()
def _accuracy(model, dataset, batch_size: int, device) -> float:
    correct = total = 0
    for x, y in dataset.batches(batch_size, shuffle=False, device=device):
        correct += int((model.logits(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


@torch.no_grad()
def _first_correct(model, images: torch.Tensor, labels: torch.Tensor, order: np.ndarray, count: int,
                   batch_size: int, device) -> np.ndarray:
    """The first ``count`` entries of ``order`` the model classifies correctly."""
    found: list[np.ndarray] = []
    have = 0
    for start in range(0, len(order), batch_size):
        if have >= count:
            break
        chunk = order[start:start + batch_size]
        x = images[torch.as_tensor(chunk)].to(device).float() / 255.0
        ok = (model.logits(x).argmax(1).cpu() == labels[torch.as_tensor(chunk)]).numpy()
        found.append(chunk[ok])
        have += int(ok.sum())
    return np.concatenate(found)[:count] if found else np.zeros(0, dtype=np.int64)


def _short_classes(labels: np.ndarray, num_classes: int, wanted: int) -> list[int]:
    return np.flatnonzero(np.bincount(labels, minlength=num_classes) < wanted).tolist()


def _forest_seconds(dim: int, train_sizes: Sequence[int], num_classes: int, repeats: int, n_estimators: int,
                    jobs: int) -> float:
    """Seconds of all detector fits, scaled from one small fit on random features (n log n in the samples)."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    n0 = 200
    x = rng.normal(size=(2 * n0, max(dim, 1))).astype(np.float32)
    y = np.repeat([0, 1], n0)
    trees = min(10, n_estimators)
    t0 = time.perf_counter()
    RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=jobs).fit(x, y)
    per_tree = (time.perf_counter() - t0) / trees
    total = 0.0
    for n in train_sizes:
        m = 2 * n * num_classes
        total += per_tree * n_estimators * (m * math.log(m)) / (2 * n0 * math.log(2 * n0)) * repeats
    return total


class _PoolEstimate:
    """The work of a pool not built yet (training pairs from the test split): its pairs over the yield."""

    def __init__(self, cost: AttackCost, per_class: int):
        self.cost, self.per_class = cost, per_class

    def remaining_passes(self) -> float:
        left = np.minimum(self.per_class / self.cost.yield_per_class(), self.per_class * 10)
        return float(left.sum()) * (self.cost.passes_per_image() + 2 * FORWARD)


class _BlackBoxWork:
    """Remaining passes of a black-box attack: images left times queries per image (worst case until measured)."""

    def __init__(self, images: int, worst_queries: int):
        self.images, self.worst, self.done_images, self.queries = images, worst_queries, 0, 0

    def remaining_passes(self) -> float:
        per = self.queries / self.done_images if self.done_images else self.worst
        return (self.images - self.done_images) * per * FORWARD


# ------------------------------------------------------------------------------------------- compute
def compute_adversarial(run: str | RunDir, *, attacks: Sequence[str] = ("fgsm", "pgd", "cw"),
                        train_sizes: Sequence[int] = (500, 1000, 2000), test_size: int = 100, repeats: int = 5,
                        success_samples: int | None = None, blackbox: Sequence[str] = ("one-pixel", "local-search"),
                        blackbox_samples: int = 100, targeted: bool = True, successful_only: bool = True,
                        seed: int = 0, device: str = "auto", batch_size: int = 256,
                        attack_options: dict[str, dict] | None = None,
                        blackbox_options: dict[str, dict] | None = None, query_budget: int | None = None,
                        blocks: Sequence[str] | None = None, n_estimators: int = 100, jobs: int | None = None,
                        progress: bool = True, dataset=None, train_dataset=None,
                        on_estimate: Callable[[dict], None] | None = None,
                        fold_batchnorm: bool = True, journal_dir: "str | os.PathLike | None" = None) -> AdversarialResult:
    """Run the whole adversarial experiment on a run directory and return its result.

    Nothing is written but, with ``journal_dir``, each attack's progress
    (:class:`~csg.adversarial.journal.WhiteBoxJournal`, :class:`~csg.adversarial.journal.BlackBoxJournal`),
    from which a later call with the same settings resumes with the same result.

    ``success_samples`` (default ``test_size`` x classes) sets the size of the
    success-rate sample. Every option is checked before the model is loaded. ``on_estimate`` is
    called once, after the first batch of every white-box attack, with
    ``{"seconds", "white_box_seconds", "detector_seconds", "black_box_seconds"}``
    (the black-box part is an upper bound: every image at its full budget). ``dataset`` /
    ``train_dataset``: your own test / train images instead of the run's splits (a torch ``Dataset`` of
    ``(image, label)``, a ``DataLoader`` or a csg dataset); without a train set the detector's training
    pairs come from the test split. ``fold_batchnorm``: the attacks' passes go through a copy of the
    model with each batch norm folded into its convolution (the same function, ~1.5x faster on a CPU;
    ``csg.core.fold``); success is always judged on the model itself.
    """
    attacks, blackbox, train_sizes = check_settings(
        attacks=attacks, train_sizes=train_sizes, test_size=test_size, repeats=repeats,
        success_samples=success_samples, blackbox=blackbox, blackbox_samples=blackbox_samples,
        batch_size=batch_size, n_estimators=n_estimators, query_budget=query_budget, jobs=jobs)
    attack_options = {k: dict(v) for k, v in (attack_options or {}).items()}
    blackbox_options = {k: dict(v) for k, v in (blackbox_options or {}).items()}
    run = run if isinstance(run, RunDir) else RunDir(run)
    from ..core.device import resolve_device

    dev = resolve_device(device)
    jobs = jobs or default_jobs()
    t_start = time.time()
    test_ds = run.dataset(dataset, "test")
    test_images, test_labels = test_ds.images, test_ds.labels.long()
    hw = int(test_images.shape[-1] * test_images.shape[-2])
    # A query budget below one generation / round fails here, before the model is loaded.
    budgets = {b: _blackbox_budget(b, blackbox_options.get(b, {}), query_budget, hw) for b in blackbox}
    model = run.load_model(device=str(dev))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # only input gradients are needed
    notes: list[str] = []
    # Names the weights the results belong to: a later call keeps them only for the same weights.
    model_key = model_fingerprint(model)
    num_classes = int(model.num_classes)
    attack_model, n_folded = model, 0
    if fold_batchnorm:
        from ..core.fold import folded_copy

        attack_model, n_folded = folded_copy(model, test_images[:4].to(dev).float() / 255.0,
                                             protected=(getattr(model, "_feature_module", None),))
    # The success sample defaults to as many images as the detector's test pairs (1000 at the paper's 100 per
    # class), most of which it attacks anyway: a fixed sample that costs little beyond the pairs.
    success_samples = int(success_samples) if success_samples is not None else int(test_size) * num_classes
    classes = list(getattr(test_ds, "classes", [])) or [str(i) for i in range(num_classes)]
    train_ds = None
    if attacks and train_dataset is not None:
        train_ds = run.dataset(train_dataset, "train")  # your own set: a bad item is an error, not a note
    elif attacks:
        try:
            train_ds = run.load_dataset("train")
        except (CsgError, FileNotFoundError) as exc:
            notes.append(f"the train split could not be loaded ({exc}); detector training pairs come from the "
                         "test split, disjoint from the test pairs")
    if run.has("features.npz"):
        feats = run.features()
        clean_accuracy = float(np.mean(feats["predictions"] == feats["labels"]))
    else:
        clean_accuracy = _accuracy(model, test_ds, batch_size, dev)

    test_order = np.random.default_rng([int(seed), 1]).permutation(len(test_labels))
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "clean_accuracy": clean_accuracy, "model_sha256": model_key,
        "attack_success": {}, "detection": {}, "blackbox": {},
        "settings": {
            "attacks": attacks, "train_sizes": train_sizes, "test_size": int(test_size), "repeats": int(repeats),
            "success_samples": int(success_samples), "blackbox": blackbox,
            "blackbox_samples": int(blackbox_samples), "targeted": bool(targeted),
            "successful_only": bool(successful_only), "seed": int(seed), "device": str(dev),
            "batch_size": int(batch_size), "attack_options": attack_options, "blackbox_options": blackbox_options,
            "query_budget": query_budget, "blackbox_budget": budgets, "n_estimators": int(n_estimators),
            "jobs": int(jobs), "detector_train_split": "train" if train_ds is not None else "test",
            "detector_test_split": "test", "batchnorm_folded": int(n_folded),
        },
        "notes": notes,
    }
    arrays: dict[str, np.ndarray] = {}
    examples: dict[str, dict] = {}
    meter = WorkMeter(progress=progress)
    works = {b: _BlackBoxWork(int(blackbox_samples), budgets[b]["max_queries_per_image"]) for b in blackbox}
    try:
        if attacks:
            _white_box(summary, arrays, examples, meter, model, attack_model.logits, run, train_ds, test_images,
                       test_labels, test_order,
                       attacks=attacks, train_sizes=train_sizes, test_size=int(test_size), repeats=int(repeats),
                       success_samples=int(success_samples), targeted=targeted, successful_only=successful_only,
                       seed=int(seed), dev=dev, batch_size=int(batch_size), attack_options=attack_options,
                       blocks=blocks, n_estimators=int(n_estimators), jobs=int(jobs), num_classes=num_classes,
                       later_work=list(works.values()), progress=progress, on_estimate=on_estimate,
                       journal_dir=journal_dir, model_key=model_key)
        elif on_estimate is not None:
            # No white-box batch to time: the black-box bound waits for its first images.
            on_estimate({"white_box_seconds": 0.0, "detector_seconds": 0.0, "black_box_seconds": float("nan"),
                         "seconds": float("nan"), "passes_per_second": float("nan")})
        if blackbox:
            _black_box(summary, arrays, examples, meter, works, model, attack_model.logits, test_images, test_labels,
                       test_order,
                       blackbox=blackbox, blackbox_samples=int(blackbox_samples), budgets=budgets,
                       blackbox_options=blackbox_options, query_budget=query_budget, seed=int(seed), dev=dev,
                       batch_size=int(batch_size), journal_dir=journal_dir, model_key=model_key)
    finally:
        meter.close()
    summary["seconds"] = round(time.time() - t_start, 3)
    summary["arrays"] = sorted(arrays)
    return AdversarialResult(summary, arrays, examples, classes)


def _white_box(summary, arrays, examples, meter, model, attack_logits, run, train_ds, test_images, test_labels,
               test_order, *,
               attacks, train_sizes, test_size, repeats, success_samples, targeted, successful_only, seed, dev,
               batch_size, attack_options, blocks, n_estimators, jobs, num_classes, later_work, progress,
               on_estimate, journal_dir=None, model_key: str = "") -> None:
    notes = summary["notes"]
    features = BlockFeatures(model, blocks)
    probe = test_images[:1].to(dev).float() / 255.0
    summary["blocks"] = features.blocks
    summary["block_channels"] = features.dims(probe)
    summary["feature_dim"] = int(sum(summary["block_channels"]))
    largest = max(train_sizes)
    test_targets = random_targets(test_labels, num_classes, seed=seed * 2 + 1) if targeted else None
    if train_ds is not None:
        train_images, train_labels = train_ds.images, train_ds.labels.long()
        train_order = np.random.default_rng([seed, 2]).permutation(len(train_labels))
        train_targets = random_targets(train_labels, num_classes, seed=seed * 2 + 2) if targeted else None
    # What decides a collection's results, for its journal: the images (hashed once), the settings, the weights.
    data_key = "" if journal_dir is None else fingerprint(
        test_images=test_images, test_labels=test_labels,
        train=[] if train_ds is None else fingerprint(images=train_images, labels=train_labels))
    plans = []
    def build_plan(name: str) -> dict:
        opts = dict(attack_options.get(name, {}))
        if name == "pgd":
            opts.setdefault("seed", seed)
        attack = build_attack(name, attack_logits, batch_size=batch_size, **opts)
        attack.on_passes = meter.add
        cost = AttackCost(num_classes, attack.budget_passes)
        common = dict(num_classes=num_classes, cost=cost, successful_only=successful_only, batch_size=batch_size,
                      device=dev, on_passes=meter.add)
        test_c = PairCollector(features, attack, test_images, test_labels, test_targets, test_order,
                               per_class=test_size, sample_size=success_samples, **common)
        if train_ds is not None:
            train_c = PairCollector(features, attack, train_images, train_labels, train_targets, train_order,
                                    per_class=largest, **common)
        else:
            train_c = None  # built from the test images the test collector leaves, once it is done
        key = "" if journal_dir is None else fingerprint(
            attack=name, options=opts, device=str(dev), seed=seed, targeted=bool(targeted),
            successful_only=bool(successful_only), batch_size=batch_size, test_size=test_size, largest=largest,
            success_samples=success_samples, blocks=features.blocks, model=model_key, data=data_key)
        return {"name": name, "attack": attack, "cost": cost, "test": test_c, "train": train_c, "seconds": 0.0,
                "journal": WhiteBoxJournal(journal_dir, name, key), "common": common}

    for name in attacks:
        plan = build_plan(name)
        try:
            _resume_collection(plan, notes, meter, features, test_images, test_labels, test_targets, test_order,
                               largest)
        except (KeyError, ValueError, RuntimeError) as exc:  # a journal of an older csg, or of another order
            notes.append(f"{name}: {plan['journal'].path.name} could not be used ({type(exc).__name__}: {exc}); "
                         "started over")
            plan = build_plan(name)
            plan["journal"].state = {}
        plans.append(plan)

    def pending():
        out = list(later_work)
        for p in plans:
            out.append(p["test"])
            out.append(p["train"] if p["train"] is not None else _PoolEstimate(p["cost"], largest))
        return out

    # A first total from the budgets, then one full batch of every attack: the estimate of the whole run
    # rests on measured costs and per-class success rates (64 CW images, ~6 a class, gave a first total
    # 20-30% short: the classes that resist need more images, and dearer ones).
    meter.estimate(pending())
    for p in plans:
        if p["test"].pos:
            continue  # resumed: its next step is the one an uninterrupted run would take, not a first batch
        t0 = time.perf_counter()
        p["test"].step(batch_size)
        p["seconds"] += time.perf_counter() - t0
        meter.estimate(pending())
        p["journal"].save(lambda: _collection_state(p))

    def announce_estimate() -> None:
        """The whole run's estimate, once, as soon as this run has measured a rate."""
        remaining, rate = meter.estimate(pending()), meter.rate
        if "estimate" in summary or not rate:
            return
        forest = len(attacks) * _forest_seconds(summary["feature_dim"], train_sizes, num_classes, repeats,
                                                n_estimators, jobs)
        black_passes = sum(w.remaining_passes() for w in later_work)
        white, black = (remaining - black_passes) / rate, black_passes / rate
        estimate = {"white_box_seconds": white, "detector_seconds": forest, "black_box_seconds": black,
                    "seconds": white + forest + black, "passes_per_second": rate}
        summary["estimate"] = {k: (round(v, 1) if math.isfinite(v) else None) for k, v in estimate.items()}
        if on_estimate is not None:
            on_estimate(estimate)

    announce_estimate()

    def after_step(p, *, force: bool = False) -> None:
        announce_estimate()
        p["journal"].save(lambda: _collection_state(p), force=force)

    from tqdm.auto import tqdm

    fits = tqdm(total=len(attacks) * len(train_sizes) * repeats, desc="detector fits", leave=False,
                disable=not progress)
    try:
        for p in plans:
            name = p["name"]
            p["t0"] = t0 = time.perf_counter()
            p["test"].run(lambda: after_step(p))
            if p["train"] is None:
                p["train"] = _train_from_test_rest(p, features, test_images, test_labels, test_targets, test_order,
                                                   largest)
            after_step(p, force=True)  # a split complete is never redone
            p["train"].run(lambda: after_step(p))
            del p["t0"]
            p["seconds"] += time.perf_counter() - t0
            after_step(p, force=True)
            _summarise_attack(p, summary, arrays, examples, num_classes=num_classes, test_size=test_size,
                              largest=largest, success_samples=success_samples)
            test_pool, train_pool = p["test"].pool(), p["train"].pool()
            if len(train_pool["labels"]) and len(test_pool["labels"]):
                t1 = time.perf_counter()
                fits.unpause()  # the bar's rate counts fitting time only, not the attacks between
                det = detection_experiment(train_pool, test_pool, train_sizes, test_size, repeats=repeats,
                                           seed=seed, n_estimators=n_estimators, n_jobs=jobs,
                                           on_fit=lambda: fits.update(1))
                train_counts = np.bincount(train_pool["labels"], minlength=num_classes)
                for n_key, entry in det.items():
                    entry["train_pairs"] = int(np.minimum(train_counts, int(n_key)).sum())
                    entry["test_pairs"] = int(len(test_pool["labels"]))
                    arrays[f"{name}.n{n_key}.errors"] = np.asarray(entry["errors"], dtype=np.float64)
                    arrays[f"{name}.n{n_key}.clean_correct"] = entry.pop("clean_correct")
                    arrays[f"{name}.n{n_key}.adv_correct"] = entry.pop("adv_correct")
                summary["detection"][name] = det
                summary["attack_success"][name]["detector_seconds"] = round(time.perf_counter() - t1, 3)
            else:
                notes.append(f"{name}: no usable pairs for the detector (train {len(train_pool['labels'])}, test "
                             f"{len(test_pool['labels'])}); no error rate")
                summary["detection"][name] = {}
    finally:
        fits.close()


def _train_from_test_rest(p, features, test_images, test_labels, test_targets, test_order, largest):
    """The training pairs' collector when there is no train split: the test images the test pairs left."""
    return PairCollector(features, p["attack"], test_images, test_labels, test_targets, test_order[p["test"].pos:],
                         per_class=largest, **p["common"])


def _collection_state(p) -> dict[str, dict[str, np.ndarray]]:
    """What :class:`~csg.adversarial.journal.WhiteBoxJournal` saves of one attack's collection."""
    parts = {"test": p["test"].state(), "cost": p["cost"].state(),
             "attack": {**p["attack"].state(),
                       "seconds": np.array(p["seconds"] + (time.perf_counter() - p["t0"] if "t0" in p else 0.0))}}
    if p["train"] is not None:
        parts["train"] = p["train"].state()
    return parts


def _resume_collection(p, notes, meter, features, test_images, test_labels, test_targets, test_order,
                       largest) -> None:
    """Continue the collection of an earlier, interrupted call from its journal (when it matches)."""
    journal, name = p["journal"], p["name"]
    if journal.discarded:
        notes.append(f"{name}: {journal.discarded}")
    saved = journal.state
    if not {"test", "cost", "attack"} <= set(saved):
        return
    # Raises KeyError / ValueError / RuntimeError on a journal it cannot use; the caller then starts afresh.
    p["test"].load_state(saved["test"])
    if "train" in saved:
        if p["train"] is None:
            p["train"] = _train_from_test_rest(p, features, test_images, test_labels, test_targets, test_order,
                                               largest)
        p["train"].load_state(saved["train"])
    p["cost"].load_state(saved["cost"])
    p["attack"].load_state(saved["attack"])
    p["seconds"] = float(saved["attack"].get("seconds", 0.0))
    done = [c for c in (p["test"], p["train"]) if c is not None]
    images = sum(c.images_attacked for c in done)
    meter.skip(p["attack"].passes + 2 * FORWARD * sum(c.pos for c in done))
    notes.append(f"{name}: resumed after {images} images attacked by an earlier run ({journal.path.name})")
    p["resumed_images"] = int(images)


def _summarise_attack(p, summary, arrays, examples, *, num_classes, test_size, largest, success_samples) -> None:
    name, notes = p["name"], summary["notes"]
    test_c, train_c = p["test"], p["train"]
    sample, test_pool, train_pool = test_c.sample(), test_c.pool(), train_c.pool()
    if len(sample["ids"]) < success_samples:
        notes.append(f"{name}: the success sample has {len(sample['ids'])} correctly classified test images "
                     f"(asked {success_samples}); the test split has no more")
    short_test = _short_classes(test_pool["labels"], num_classes, test_size)
    short_train = _short_classes(train_pool["labels"], num_classes, largest)
    if short_test:
        notes.append(f"{name}: fewer than {test_size} usable test pairs in classes {short_test}; those classes "
                     "contribute what they have")
    if short_train:
        notes.append(f"{name}: fewer than {largest} usable training pairs in classes {short_train}; those classes "
                     "contribute what they have at the larger sizes")
    images = test_c.images_attacked + train_c.images_attacked
    entry = rate_summary(int(sample["success"].sum()), len(sample["ids"]))
    entry.update({
        "sample": f"the first {len(sample['ids'])} correctly classified test images of the seeded order",
        "sample_per_class": np.bincount(sample["labels"], minlength=num_classes).tolist(),
        "success_per_class": np.bincount(sample["labels"][sample["success"]], minlength=num_classes).tolist(),
        "train_pairs": int(len(train_pool["labels"])), "test_pairs": int(len(test_pool["labels"])),
        "train_pairs_per_class": np.bincount(train_pool["labels"], minlength=num_classes).tolist(),
        "test_pairs_per_class": np.bincount(test_pool["labels"], minlength=num_classes).tolist(),
        "images_attacked": int(images), "passes": int(p["attack"].passes),
        "passes_per_image": round(p["attack"].passes / images, 2) if images else None,
        "budget_passes_per_image": int(p["attack"].budget_passes),
        "seconds": round(p["seconds"], 3), "resumed_images": int(p.get("resumed_images", 0)),
    })
    summary["attack_success"][name] = entry
    arrays[f"{name}.success_ids"] = sample["ids"]
    arrays[f"{name}.success"] = sample["success"]
    arrays[f"{name}.test_ids"] = test_pool["ids"]
    arrays[f"{name}.test_labels"] = test_pool["labels"]
    arrays[f"{name}.train_ids"] = train_pool["ids"]
    if test_c.example is not None:
        examples[name] = test_c.example
        arrays.update({f"{name}.example.{k}": v for k, v in example_to_arrays(test_c.example).items()})


def _black_box(summary, arrays, examples, meter, works, model, attack_logits, test_images, test_labels, test_order, *,
               blackbox,
               blackbox_samples, budgets, blackbox_options, query_budget, seed, dev, batch_size,
               journal_dir=None, model_key: str = "") -> None:
    chosen = _first_correct(model, test_images, test_labels, test_order, blackbox_samples, batch_size, dev)
    if len(chosen) < blackbox_samples:
        summary["notes"].append(f"black-box: only {len(chosen)} correctly classified test images "
                                f"(asked {blackbox_samples})")
    x = test_images[torch.as_tensor(chosen)].float() / 255.0 if len(chosen) else None
    y = test_labels[torch.as_tensor(chosen)] if len(chosen) else None
    for w in works.values():
        w.images = len(chosen)
    meter.estimate(list(works.values()))
    for name in blackbox:
        if x is None:
            summary["blackbox"][name] = {**rate_summary(0, 0), "budget": budgets[name]}
            continue
        opts = dict(blackbox_options.get(name, {}))
        if query_budget is not None:
            opts["max_queries"] = int(query_budget)
        opts.setdefault("seed", seed)
        opts.setdefault("batch_size", batch_size)  # model calls of --batch-size images, not the attacks' 1024
        piece = int(opts.get("images_per_batch", PIECE))
        # Only a journal on disk needs the fingerprint (hashing the images is wasted work otherwise).
        key = "" if journal_dir is None else fingerprint(attack=name, options=opts, device=str(dev), images=x,
                                                         labels=y, model=model_key, piece=piece)
        journal = BlackBoxJournal(journal_dir, name, key)
        if journal.discarded:
            summary["notes"].append(f"black-box {name}: {journal.discarded}")
        if journal.resumed:
            summary["notes"].append(f"black-box {name}: resumed after {journal.resumed} of {len(chosen)} images "
                                    f"finished by an earlier run ({journal.path.name})")
            meter.skip(int(journal.arrays["queries"].sum()) * FORWARD)
        t0 = time.time()
        res = attack_in_pieces(BLACKBOX[name], attack_logits, x.to(dev), y.to(dev), journal, piece=piece,
                               on_queries=lambda q: meter.add(q * FORWARD), **opts)
        works[name].done_images, works[name].queries = len(chosen), int(res.queries.sum())
        meter.estimate(list(works.values()))
        norms = perturbation_norms(x, res.images.cpu())
        ok = res.success
        extra = {k: v for k, v in res.extra.items() if not torch.is_tensor(v)}
        summary["blackbox"][name] = {
            **rate_summary(int(ok.sum()), len(ok)),
            "sample": f"the first {len(ok)} correctly classified test images of the seeded order",
            "mean_queries": float(res.queries.float().mean()),
            "mean_l0_successful": float(norms["l0"][ok].float().mean()) if bool(ok.any()) else None,
            "budget": budgets[name], "seconds": round(time.time() - t0, 3),
            "resumed_images": int(journal.resumed), "options": {**extra, **opts},
        }
        arrays[f"{name}.ids"] = chosen
        arrays[f"{name}.success"] = ok.numpy().astype(bool)
        arrays[f"{name}.queries"] = res.queries.numpy().astype(np.int64)
        first = int(ok.nonzero()[0]) if bool(ok.any()) else 0
        with torch.no_grad():
            pred = int(model.logits(res.images[first:first + 1].to(dev)).argmax(1))
        examples[name] = {"clean": x[first], "adversarial": res.images[first].cpu(), "label": int(y[first]),
                          "target": None, "prediction": pred, "success": bool(ok[first])}
        arrays.update({f"{name}.example.{k}": v for k, v in example_to_arrays(examples[name]).items()})


__all__ = ["compute_adversarial", "check_settings", "AdversarialResult", "SCHEMA"]
