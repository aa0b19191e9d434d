"""The adversarial-sample detector (METHOD.md section 6): a random forest on pooled block features.

For an image ``x`` the feature vector is the concatenation, over the
convolution blocks ``b = 1..B`` up to and including the feature layer, of the
globally average-pooled block outputs:

    phi(x) = [ mean_hw(O_1(x)), ..., mean_hw(O_B(x)) ]        (sum_b K_b values)

captured in one forward pass per batch. A scikit-learn
``RandomForestClassifier`` separates clean (label 0) from adversarial (label 1)
features; the detector's error rate on held-out pairs is

    err = (#clean called adversarial + #adversarial called clean) / (2 n_test)
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import CsgError
from ..core.hooks import capture_outputs, resolve_module

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU, nn.Hardswish, nn.Mish)


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def _flat_stack_units(seq: nn.Sequential, prefix: str) -> list[str]:
    """In a flat conv stack (VGG/AlexNet ``features``): the last conv/BN/activation of each conv unit."""
    names: list[str] = []
    children = list(seq.named_children())
    for i, (name, child) in enumerate(children):
        if not isinstance(child, nn.modules.conv._ConvNd):
            continue
        end = name
        for later_name, later in children[i + 1:]:
            if isinstance(later, nn.modules.conv._ConvNd):
                break
            if isinstance(later, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm) + _ACTIVATIONS):
                end = later_name
            else:
                break  # a pool or anything else closes the unit
        names.append(f"{prefix}{end}")
    return names


def find_blocks(model: nn.Module) -> list[str]:
    """Names (relative to ``model``) of the convolution blocks up to and including the feature layer.

    For a :class:`csg.core.model.GatedClassifier`: walk the backbone's children in
    order up to the one holding the feature layer; a ``Sequential`` stage of
    blocks (ResNet ``layer1`` ...) gives each of its blocks, a flat conv stack
    (VGG/AlexNet ``features``) gives each conv(-BN)-activation unit. The stem
    outside any stage is not included. If the feature layer's own output is not
    the last block's output, the feature layer is appended.
    """
    backbone = getattr(model, "backbone", None)
    feature_layer = getattr(model, "feature_layer", None)
    if backbone is None or feature_layer is None:
        raise CsgError(f"cannot find the blocks of a {type(model).__name__} automatically; "
                       "pass the block names (e.g. blocks=['layer1', 'layer2'])")
    prefix = "backbone."
    order = [n for n, _ in backbone.named_modules()]
    if feature_layer:
        feat_mod = resolve_module(backbone, feature_layer)
        # The last module inside the feature layer (in registration order) bounds the blocks.
        inside = [n for n in order if n == feature_layer or n.startswith(feature_layer + ".")]
        limit = order.index(inside[-1])
    else:
        feat_mod = backbone
        limit = len(order) - 1
    names: list[str] = []
    for name, child in backbone.named_children():
        if not isinstance(child, nn.Sequential) or not _contains_conv(child):
            continue
        if any(isinstance(c, nn.modules.conv._ConvNd) for c in child.children()):
            units = _flat_stack_units(child, f"{name}.")
        else:
            units = [f"{name}.{sub}" for sub, c in child.named_children() if _contains_conv(c)]
        names += [u for u in units if order.index(u) <= limit]
    # Does the last block's output equal the feature layer's output (the chain of last children)?
    chain, mod, path = [], feat_mod, feature_layer
    while True:
        chain.append(path)
        kids = list(mod.named_children())
        if not kids:
            break
        sub, mod = kids[-1]
        path = f"{path}.{sub}" if path else sub
    if not names or names[-1] not in chain:
        names.append(feature_layer)
    return [prefix + n if n else "backbone" for n in names]


class BlockFeatures:
    """Pooled features after every block, with the logits, from one forward pass per batch.

    ``BlockFeatures(model, blocks)(images) -> (features N x D, logits N x C)``;
    ``model`` is an ``nn.Module`` whose ``forward_fn`` (default: ``model.logits``
    if it exists, else ``model``) maps images in [0, 1] to logits.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[str] | None = None,
                 forward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model = model
        self.blocks = list(blocks) if blocks else find_blocks(model)
        for name in self.blocks:
            resolve_module(model, name)  # fail early, with the closest names
        self.forward_fn = forward_fn or getattr(model, "logits", model)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with capture_outputs(self.model, self.blocks) as out:
            logits = self.forward_fn(images)
        missing = [b for b in self.blocks if b not in out]
        if missing:
            raise CsgError(f"blocks {', '.join(missing)} were not run in the forward pass; name blocks "
                           "before the feature layer")
        pooled = []
        for b in self.blocks:
            o = out[b]
            if isinstance(o, (tuple, list)):
                o = o[0]
            pooled.append(o.float().mean(dim=tuple(range(2, o.dim()))) if o.dim() > 2 else o.float().flatten(1))
        return torch.cat(pooled, dim=1), logits

    def dims(self, images: torch.Tensor) -> list[int]:
        """Channels per block (for the JSON), from one probe batch."""
        with torch.no_grad(), capture_outputs(self.model, self.blocks) as out:
            self.forward_fn(images[:1])
        return [int(out[b].shape[1]) for b in self.blocks]


def balanced_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random rows of every class (fewer where a class has fewer), no loop.

    Random keys are sorted within each class (``lexsort`` by label, then key); a
    row is kept when its rank within its class is below ``per_class``.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    keys = rng.random(labels.size)
    order = np.lexsort((keys, labels))
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(labels.size) - first
    return np.sort(order[rank < per_class])


def default_jobs() -> int:
    """Worker processes for the forest: the torch thread count (the cores this run was given), at least 1."""
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


def detector_predictions(train_clean: np.ndarray, train_adv: np.ndarray, test_clean: np.ndarray,
                         test_adv: np.ndarray, *, seed: int = 0, n_estimators: int = 100,
                         n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit a random forest on clean (0) vs adversarial (1) features; return whether each test item is right.

    Returns ``(clean_correct, adv_correct)``: booleans per clean and per
    adversarial test item (a clean item is right when called clean).
    """
    from sklearn.ensemble import RandomForestClassifier

    if len(train_clean) + len(train_adv) == 0 or len(test_clean) + len(test_adv) == 0:
        raise CsgError("the detector needs at least one training and one test pair; lower --train-sizes/--test-size "
                       "or use more data")
    x_train = np.concatenate([train_clean, train_adv]).astype(np.float32)
    y_train = np.concatenate([np.zeros(len(train_clean)), np.ones(len(train_adv))]).astype(np.int64)
    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed,
                                    n_jobs=default_jobs() if n_jobs is None else n_jobs)
    forest.fit(x_train, y_train)
    pred = forest.predict(np.concatenate([test_clean, test_adv]).astype(np.float32))
    return pred[:len(test_clean)] == 0, pred[len(test_clean):] == 1


def detector_error(train_clean: np.ndarray, train_adv: np.ndarray, test_clean: np.ndarray, test_adv: np.ndarray,
                   *, seed: int = 0, n_estimators: int = 100, n_jobs: int | None = None) -> float:
    """Fit a random forest on clean (0) vs adversarial (1) features; return its test error rate."""
    clean_ok, adv_ok = detector_predictions(train_clean, train_adv, test_clean, test_adv, seed=seed,
                                            n_estimators=n_estimators, n_jobs=n_jobs)
    return float(1.0 - np.concatenate([clean_ok, adv_ok]).mean())


def detection_experiment(train: dict[str, np.ndarray], test: dict[str, np.ndarray], train_sizes: Sequence[int],
                         test_size: int, *, repeats: int = 5, seed: int = 0, n_estimators: int = 100,
                         n_jobs: int | None = None, on_fit: Callable[[], None] | None = None) -> dict[str, dict]:
    """Error rate of the detector per training size: mean and spread over seeded repeats, and per test item.

    ``train`` and ``test`` hold paired arrays ``clean`` (N x D), ``adv`` (N x D)
    and ``labels`` (N). Each repeat draws ``n`` pairs per class from ``train``
    (both the clean and the adversarial version of an image) and fits a forest
    seeded by the repeat; every repeat is scored on the whole ``test`` pool
    (already at most ``test_size`` pairs per class), so each test item has a
    result in every repeat. Per size: ``errors`` (one per repeat), their
    ``mean`` and sample ``std`` (ddof = 1; 0 for one repeat), and
    ``clean_correct`` / ``adv_correct``: per test item (in the pool's order),
    the fraction of repeats that got it right. ``on_fit`` is called after
    every forest (for a progress bar).
    """
    results: dict[str, dict] = {}
    for n in train_sizes:
        errors = []
        clean_hits = np.zeros(len(test["labels"]))
        adv_hits = np.zeros(len(test["labels"]))
        for r in range(repeats):
            rng = np.random.default_rng([int(seed), int(n), r])
            tr = balanced_sample(train["labels"], int(n), rng)
            clean_ok, adv_ok = detector_predictions(train["clean"][tr], train["adv"][tr], test["clean"],
                                                    test["adv"], seed=int(seed) * 1000 + r,
                                                    n_estimators=n_estimators, n_jobs=n_jobs)
            clean_hits += clean_ok
            adv_hits += adv_ok
            errors.append(1.0 - float(np.concatenate([clean_ok, adv_ok]).mean()))
            if on_fit is not None:
                on_fit()
        errs = np.asarray(errors)
        results[str(int(n))] = {
            "train_per_class": int(n),
            "test_per_class": int(test_size),
            "mean": float(errs.mean()),
            "std": float(errs.std(ddof=1)) if len(errs) > 1 else 0.0,
            "errors": [float(e) for e in errs],
            "clean_correct": clean_hits / repeats,
            "adv_correct": adv_hits / repeats,
        }
    return results


__all__ = ["find_blocks", "BlockFeatures", "balanced_sample", "detector_predictions", "detector_error",
           "detection_experiment", "default_jobs"]
