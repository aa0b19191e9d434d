"""The adversarial experiment of a run directory (``csg attack RUN``): METHOD.md section 6.

1. For each white-box attack, attack images of the run's train split (detector
   training pool) and test split (detector test pool), keeping a clean /
   adversarial feature pair per image, until every class has enough pairs.
   By default (``successful_only=True``) a pair is kept only when the model
   classifies the clean image correctly and the attack succeeds (see
   docs/adversarial.md); pools are clipped, with a note, when a split runs out.
2. The random-forest detector: per training size, ``repeats`` seeded draws of
   ``n`` pairs per class (train pool) and ``test_size`` per class (test pool);
   mean and spread of the error rate.
3. Black-box attacks on the first ``blackbox_samples`` correctly classified
   test images (seeded order): success rate and queries.
4. ``RUN/adversarial.json`` and the figures in ``RUN/figures/``.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.errors import CsgError
from ..runs.rundir import RunDir
from .attacks import ATTACKS, Attack, build_attack, is_adversarial, perturbation_norms
from .blackbox import BLACKBOX
from .detector import BlockFeatures, detection_experiment
from .targets import random_targets

JSON_NAME = "adversarial.json"


def _within_class_rank(labels: np.ndarray) -> np.ndarray:
    """Rank of each entry among the entries of its class, in order of appearance (no loop)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - first
    return rank


def collect_pairs(features: BlockFeatures, attack: Attack, images: torch.Tensor, labels: torch.Tensor,
                  targets: torch.Tensor | None, order: np.ndarray, per_class: int, num_classes: int, *,
                  successful_only: bool = True, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = False, desc: str = "attack") -> dict[str, Any]:
    """Attack images in the given order until every class has ``per_class`` clean/adversarial feature pairs.

    ``images`` are uint8 (N, C, H, W) (or float in [0, 1]); one batch is
    classified and featurised clean, attacked, and featurised again. Returns
    ``clean``/``adv`` (n x D float32), ``labels``, ``indices`` (into ``images``),
    ``attempted`` / ``succeeded`` (correctly classified images attacked / fooled),
    ``used`` (how many entries of ``order`` were looked at) and one ``example``.
    """
    labels_np = labels.cpu().numpy().astype(np.int64)
    remaining = np.full(num_classes, int(per_class), dtype=np.int64)
    out_clean, out_adv, out_labels, out_idx = [], [], [], []
    attempted = succeeded = 0
    used = 0
    example = None
    bar = tqdm(total=int(remaining.sum()), desc=desc, leave=False, disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            if remaining.sum() == 0:
                break
            chunk = order[start:start + batch_size]
            used = start + len(chunk)
            chunk = chunk[remaining[labels_np[chunk]] > 0]
            if chunk.size == 0:
                continue
            idx_t = torch.as_tensor(chunk)
            x = images[idx_t].to(device)
            x = x.float() / 255.0 if not x.is_floating_point() else x.float()
            y = labels[idx_t].to(device).long()
            t = None if targets is None else targets[idx_t].to(device).long()
            f_clean, logits = features(x)
            correct = logits.argmax(1) == y
            sel = correct if successful_only else torch.ones_like(correct)
            if not bool(sel.any()):
                continue
            xs, ys = x[sel], y[sel]
            ts = None if t is None else t[sel]
            adv = attack(xs, ys, ts)
            f_adv, logits_adv = features(adv)
            success = is_adversarial(logits_adv, ys, ts)
            attempted += int(correct.sum())
            succeeded += int((success & correct[sel]).sum())
            keep = success if successful_only else torch.ones_like(success)
            keep_np = keep.cpu().numpy()
            kept_idx = chunk[sel.cpu().numpy()][keep_np]
            kept_lab = labels_np[kept_idx]
            cap = _within_class_rank(kept_lab) < remaining[kept_lab]
            if not cap.any():
                continue
            rows = torch.as_tensor(np.flatnonzero(keep_np)[cap], device=f_clean.device)
            out_clean.append(f_clean[sel][rows].cpu().numpy())
            out_adv.append(f_adv[rows].cpu().numpy())
            out_labels.append(kept_lab[cap])
            out_idx.append(kept_idx[cap])
            remaining -= np.bincount(kept_lab[cap], minlength=num_classes)
            bar.update(int(cap.sum()))
            if example is None or not example["success"]:
                # Show a successful pair when there is one.
                ok_rows = rows[success[rows]]
                if example is None or len(ok_rows):
                    r0 = int(ok_rows[0]) if len(ok_rows) else int(rows[0])
                    example = {"clean": xs[r0].cpu(), "adversarial": adv[r0].cpu(), "label": int(ys[r0]),
                               "target": None if ts is None else int(ts[r0]),
                               "prediction": int(logits_adv[r0].argmax()), "success": bool(success[r0])}
    finally:
        bar.close()
    if out_clean:
        clean = np.concatenate(out_clean).astype(np.float32)
        adv_f = np.concatenate(out_adv).astype(np.float32)
    else:
        clean = adv_f = np.zeros((0, 0), dtype=np.float32)
    return {
        "clean": clean, "adv": adv_f,
        "labels": np.concatenate(out_labels) if out_labels else np.zeros(0, dtype=np.int64),
        "indices": np.concatenate(out_idx) if out_idx else np.zeros(0, dtype=np.int64),
        "attempted": attempted, "succeeded": succeeded, "used": used, "example": example,
    }


def _short_classes(labels: np.ndarray, num_classes: int, wanted: int) -> list[int]:
    """Classes with fewer than ``wanted`` pairs."""
    return np.flatnonzero(np.bincount(labels, minlength=num_classes) < wanted).tolist()


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


def _parse_device(device: str) -> torch.device:
    from ..core.device import resolve_device

    return resolve_device(device)


def attack_run(run: str | RunDir, *, attacks: Sequence[str] = ("fgsm", "pgd", "cw"),
               train_sizes: Sequence[int] = (500, 1000, 2000), test_size: int = 100, repeats: int = 5,
               blackbox: Sequence[str] = ("one-pixel", "local-search"), blackbox_samples: int = 100,
               targeted: bool = True, successful_only: bool = True, seed: int = 0, device: str = "auto",
               batch_size: int = 256, attack_options: dict[str, dict] | None = None,
               blackbox_options: dict[str, dict] | None = None, query_budget: int | None = None,
               blocks: Sequence[str] | None = None, n_estimators: int = 100, figures: bool = True,
               progress: bool = True) -> dict[str, Any]:
    """Run the whole adversarial experiment on a run directory and write ``RUN/adversarial.json``."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    attacks = [a.strip().lower() for a in attacks if a.strip()]
    blackbox = [b.strip().lower() for b in blackbox if b.strip()]
    for a in attacks:
        if a not in ATTACKS:
            raise CsgError(f"unknown attack {a!r}; available: {', '.join(ATTACKS)}")
    for b in blackbox:
        if b not in BLACKBOX:
            raise CsgError(f"unknown black-box attack {b!r}; available: {', '.join(BLACKBOX)}")
    if not attacks and not blackbox:
        raise CsgError("nothing to do: give --attacks and/or --blackbox")
    train_sizes = sorted({int(n) for n in train_sizes})
    if attacks and (not train_sizes or min(train_sizes) < 1 or test_size < 1 or repeats < 1):
        raise CsgError("--train-sizes, --test-size and --repeats must be positive")
    attack_options = attack_options or {}
    blackbox_options = blackbox_options or {}
    dev = _parse_device(device)
    t_start = time.time()
    model = run.load_model(device=str(dev))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # only input gradients are needed
    notes: list[str] = []
    test_ds = run.load_dataset("test")
    num_classes = int(model.num_classes)
    try:
        train_ds = run.load_dataset("train") if attacks else None
    except (CsgError, FileNotFoundError) as exc:
        train_ds = None
        notes.append(f"the train split could not be loaded ({exc}); detector training pairs come from the test "
                     "split, disjoint from the test pairs")

    # Clean accuracy on the whole test split (from the evaluation when it exists).
    if run.has("features.npz"):
        feats = run.features()
        clean_accuracy = float(np.mean(feats["predictions"] == feats["labels"]))
    else:
        clean_accuracy = _accuracy(model, test_ds, batch_size, dev)

    result: dict[str, Any] = {
        "clean_accuracy": clean_accuracy,
        "detection": {}, "attack_success": {}, "blackbox": {},
        "settings": {
            "attacks": attacks, "train_sizes": train_sizes, "test_size": int(test_size), "repeats": int(repeats),
            "blackbox": blackbox, "blackbox_samples": int(blackbox_samples), "targeted": bool(targeted),
            "successful_only": bool(successful_only), "seed": int(seed), "device": str(dev),
            "attack_options": attack_options, "blackbox_options": blackbox_options, "query_budget": query_budget,
            "n_estimators": int(n_estimators),
            "detector_train_split": "train" if train_ds is not None else "test",
            "detector_test_split": "test",
        },
        "notes": notes,
    }
    examples: dict[str, dict] = {}
    test_images, test_labels = test_ds.images, test_ds.labels.long()
    test_order = np.random.default_rng([int(seed), 1]).permutation(len(test_labels))

    if attacks:
        features = BlockFeatures(model, blocks)
        probe = test_images[:1].to(dev).float() / 255.0
        result["blocks"] = features.blocks
        result["block_channels"] = features.dims(probe)
        result["feature_dim"] = int(sum(result["block_channels"]))
        if train_ds is not None:
            train_images, train_labels = train_ds.images, train_ds.labels.long()
            train_order = np.random.default_rng([int(seed), 2]).permutation(len(train_labels))
        test_targets = random_targets(test_labels, num_classes, seed=int(seed) * 2 + 1) if targeted else None
        train_targets = (random_targets(train_labels, num_classes, seed=int(seed) * 2 + 2)
                         if targeted and train_ds is not None else None)
        for name in attacks:
            opts = dict(attack_options.get(name, {}))
            if name == "pgd":
                opts.setdefault("seed", int(seed))
            attack = build_attack(name, model.logits, batch_size=batch_size, **opts)
            t0 = time.time()
            test_pool = collect_pairs(features, attack, test_images, test_labels, test_targets, test_order,
                                      int(test_size), num_classes, successful_only=successful_only,
                                      batch_size=batch_size, device=dev, progress=progress,
                                      desc=f"{name} test pairs")
            if train_ds is not None:
                train_pool = collect_pairs(features, attack, train_images, train_labels, train_targets,
                                           train_order, max(train_sizes), num_classes,
                                           successful_only=successful_only, batch_size=batch_size, device=dev,
                                           progress=progress, desc=f"{name} train pairs")
            else:
                rest = test_order[test_pool["used"]:]
                train_pool = collect_pairs(features, attack, test_images, test_labels, test_targets, rest,
                                           max(train_sizes), num_classes, successful_only=successful_only,
                                           batch_size=batch_size, device=dev, progress=progress,
                                           desc=f"{name} train pairs")
            seconds = time.time() - t0
            short_test = _short_classes(test_pool["labels"], num_classes, int(test_size))
            short_train = _short_classes(train_pool["labels"], num_classes, max(train_sizes))
            if short_test:
                notes.append(f"{name}: fewer than {test_size} usable test pairs in classes {short_test}; those "
                             "classes contribute what they have")
            if short_train:
                notes.append(f"{name}: fewer than {max(train_sizes)} usable training pairs in classes "
                             f"{short_train}; those classes contribute what they have at the larger sizes")
            attempted = train_pool["attempted"] + test_pool["attempted"]
            succeeded = train_pool["succeeded"] + test_pool["succeeded"]
            result["attack_success"][name] = {
                "success_rate": succeeded / attempted if attempted else float("nan"),
                "attempted": int(attempted), "succeeded": int(succeeded),
                "train_pairs": int(len(train_pool["labels"])), "test_pairs": int(len(test_pool["labels"])),
                "train_pairs_per_class": np.bincount(train_pool["labels"], minlength=num_classes).tolist(),
                "test_pairs_per_class": np.bincount(test_pool["labels"], minlength=num_classes).tolist(),
                "seconds": round(seconds, 3),
            }
            if len(train_pool["labels"]) and len(test_pool["labels"]):
                det = detection_experiment(train_pool, test_pool, train_sizes, int(test_size), repeats=int(repeats),
                                           seed=int(seed), n_estimators=n_estimators)
                for n_key, entry in det.items():
                    n = int(n_key)
                    entry["train_pairs"] = int(np.minimum(np.bincount(train_pool["labels"], minlength=num_classes),
                                                          n).sum())
                    entry["test_pairs"] = int(np.minimum(np.bincount(test_pool["labels"], minlength=num_classes),
                                                         int(test_size)).sum())
                result["detection"][name] = det
            else:
                notes.append(f"{name}: no usable pairs for the detector (train {len(train_pool['labels'])}, test "
                             f"{len(test_pool['labels'])}); no error rate")
                result["detection"][name] = {}
            if test_pool["example"] is not None:
                examples[name] = test_pool["example"]

    if blackbox:
        chosen = _first_correct(model, test_images, test_labels, test_order, int(blackbox_samples), batch_size, dev)
        if len(chosen) < blackbox_samples:
            notes.append(f"black-box: only {len(chosen)} correctly classified test images (asked {blackbox_samples})")
        x = test_images[torch.as_tensor(chosen)].float() / 255.0 if len(chosen) else None
        y = test_labels[torch.as_tensor(chosen)] if len(chosen) else None
        for name in blackbox:
            if x is None:
                result["blackbox"][name] = {"success_rate": float("nan"), "attempted": 0}
                continue
            opts = dict(blackbox_options.get(name, {}))
            if query_budget is not None:
                opts.setdefault("max_queries", int(query_budget))
            opts.setdefault("seed", int(seed))
            t0 = time.time()
            res = BLACKBOX[name](model.logits, x.to(dev), y.to(dev), **opts)
            norms = perturbation_norms(x, res.images.cpu())
            ok = res.success
            result["blackbox"][name] = {
                "success_rate": res.success_rate, "attempted": int(len(ok)), "succeeded": int(ok.sum()),
                "mean_queries": float(res.queries.float().mean()),
                "mean_l0_successful": float(norms["l0"][ok].float().mean()) if bool(ok.any()) else None,
                "seconds": round(time.time() - t0, 3), "options": {**res.extra, **opts},
            }
            first = int(ok.nonzero()[0]) if bool(ok.any()) else 0
            with torch.no_grad():
                pred = int(model.logits(res.images[first:first + 1].to(dev)).argmax(1))
            examples[name] = {"clean": x[first], "adversarial": res.images[first].cpu(), "label": int(y[first]),
                              "target": None, "prediction": pred, "success": bool(ok[first])}

    result["seconds"] = round(time.time() - t_start, 3)
    result["figures"] = []
    if figures:
        from .figures import plot_detection, plot_examples

        classes = list(getattr(test_ds, "classes", [])) or [str(i) for i in range(num_classes)]
        if examples:
            path = run.figures_dir / "adversarial_examples.png"
            plot_examples(examples, path, classes=classes)
            result["figures"].append({"path": "figures/adversarial_examples.png",
                                      "caption": "Example per attack: clean image, adversarial image and the "
                                                 "difference amplified to the full colour range."})
        if any(result["detection"].values()):
            path = run.figures_dir / "adversarial_detection.png"
            plot_detection(result["detection"], path, title=f"Detector error ({run.path.name})")
            result["figures"].append({"path": "figures/adversarial_detection.png",
                                      "caption": "Random-forest detector error rate against training images per "
                                                 "class, mean and std over repeats, per attack."})
    run.write_json(JSON_NAME, result)
    return result


__all__ = ["attack_run", "collect_pairs", "JSON_NAME"]
