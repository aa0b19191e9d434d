"""Clean / adversarial feature pairs of one split for one white-box attack, and the success-rate sample.

A :class:`PairCollector` walks the images of a split in a seeded order, one
batch per :meth:`PairCollector.step`:

* the **success sample**: the first ``sample_size`` images of the order that
  the model classifies correctly are all attacked, whatever their class, and
  each one's success is recorded. The success rate is measured on this fixed
  sample, so it does not depend on how many pairs a class needs (a pair
  collection that keeps attacking until every class is full samples the classes
  that resist more often: per-class rates 0.9 and 0.1 with 100 pairs each
  would read 200 / 1111 = 0.18 instead of 0.5);
* the **pairs**: images are attacked until every class has ``per_class``
  pairs. With ``successful_only`` an image gives a pair when it is classified
  correctly and the attack succeeds; otherwise every image does. Pairs keep
  the order: a class's pairs are its first ``per_class`` usable images.

Images of a class that is already full are not attacked (outside the success
sample); a batch is featurised clean and adversarial with one forward pass
each (:class:`BlockFeatures`), so the hot path has no loop over samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .attacks import Attack, is_adversarial
from .detector import BlockFeatures
from .examples import example_from_arrays, example_to_arrays
from .progress import FORWARD


def within_class_rank(labels: np.ndarray) -> np.ndarray:
    """Rank of each entry among the entries of its class, in order of appearance (no loop)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - first
    return rank


@dataclass
class AttackCost:
    """What one attack has cost so far, shared by its collectors to estimate the work left.

    ``attacked`` / ``usable`` per class: images attacked for pairs and those that gave a usable pair
    (before the per-class cap), whose ratio predicts how many more images a class needs;
    ``success_*`` / ``fail_*``: the images attacked and the model passes they cost, split by outcome,
    because an image the attack fails on costs more (CW runs every value of c to its end on it): a
    class that resists needs more images *and* dearer ones, which one average cost per image misses
    (the estimate then grew during a run). ``images`` / ``passes`` are their sums.
    """

    num_classes: int
    budget_passes: int
    attacked: np.ndarray = field(init=False)
    usable: np.ndarray = field(init=False)
    success_images: int = 0
    success_passes: float = 0.0
    fail_images: int = 0
    fail_passes: float = 0.0

    def __post_init__(self):
        self.attacked = np.zeros(self.num_classes, dtype=np.int64)
        self.usable = np.zeros(self.num_classes, dtype=np.int64)

    def state(self) -> dict[str, np.ndarray]:
        """Everything measured so far, as arrays (a journal saves it; :meth:`load_state` restores it)."""
        return {"attacked": self.attacked.copy(), "usable": self.usable.copy(),
                "outcomes": np.array([self.success_images, self.success_passes, self.fail_images,
                                      self.fail_passes], dtype=np.float64)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.attacked = np.asarray(state["attacked"], dtype=np.int64).copy()
        self.usable = np.asarray(state["usable"], dtype=np.int64).copy()
        si, sp, fi, fp = (float(v) for v in state["outcomes"])
        self.success_images, self.success_passes, self.fail_images, self.fail_passes = int(si), sp, int(fi), fp

    def add_outcomes(self, sample_passes: np.ndarray, success: np.ndarray) -> None:
        """Record the passes each attacked image cost and whether the attack succeeded on it."""
        sample_passes, success = np.asarray(sample_passes, dtype=np.float64), np.asarray(success, dtype=bool)
        self.success_images += int(success.sum())
        self.success_passes += float(sample_passes[success].sum())
        self.fail_images += int((~success).sum())
        self.fail_passes += float(sample_passes[~success].sum())

    @property
    def images(self) -> int:
        return self.success_images + self.fail_images

    @property
    def passes(self) -> float:
        return self.success_passes + self.fail_passes

    def passes_per_image(self) -> float:
        return self.passes / self.images if self.images else float(self.budget_passes)

    def passes_per_image_by_class(self, success_rate: np.ndarray) -> np.ndarray:
        """Expected passes of one attacked image of each class: ``r_c s + (1 - r_c) f`` with ``s`` / ``f``
        the mean cost of a success / failure so far and ``r_c`` the class's success rate."""
        overall = self.passes_per_image()
        s = self.success_passes / self.success_images if self.success_images else overall
        f = self.fail_passes / self.fail_images if self.fail_images else overall
        return success_rate * s + (1.0 - success_rate) * f

    def yield_per_class(self, prior: float = 3.0) -> np.ndarray:
        """Usable pairs per attacked image, per class, shrunk towards the attack's overall yield.

        ``(usable_c + prior * Y) / (attacked_c + prior)`` with ``Y`` the overall
        yield (1 before any image), so a class seen a few times is not taken at
        its raw ratio; never below one in a million. The prior is small: images needed go as
        ``1 / yield``, so pulling a resisting class towards the mean underestimates the work.
        """
        overall = (self.usable.sum() + 1.0) / (self.attacked.sum() + 1.0)
        return np.maximum((self.usable + prior * overall) / (self.attacked + prior), 1e-6)


class PairCollector:
    """Attack the images of one split in ``order`` until the success sample and every class's pairs are complete.

    ``images`` are uint8 (N, C, H, W) (or float in [0, 1]) on any device,
    ``labels`` (N,), ``targets`` (N,) or ``None`` (untargeted). After the work
    is done, :meth:`pool` gives the pairs and :meth:`sample` the success sample.
    """

    def __init__(self, features: BlockFeatures, attack: Attack, images: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None, order: np.ndarray, *, per_class: int, num_classes: int,
                 cost: AttackCost, sample_size: int = 0, successful_only: bool = True, batch_size: int = 256,
                 device: str | torch.device = "cpu", on_passes=None):
        self.features, self.attack = features, attack
        self.images, self.labels, self.targets = images, labels.long(), targets
        self.labels_np = self.labels.cpu().numpy().astype(np.int64)
        self.order = np.asarray(order, dtype=np.int64)
        self.per_class, self.num_classes = int(per_class), int(num_classes)
        self.cost, self.sample_size = cost, int(sample_size)
        self.successful_only, self.batch_size, self.device = bool(successful_only), int(batch_size), device
        self.on_passes = on_passes
        self.pos = 0
        self.correct_seen = 0
        self.remaining = np.full(self.num_classes, self.per_class, dtype=np.int64)
        self._sample: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.example: dict[str, Any] | None = None
        self.images_attacked = 0

    # ---------------------------------------------------------------- state
    @property
    def finished(self) -> bool:
        sample_done = self.correct_seen >= self.sample_size
        return self.pos >= len(self.order) or (sample_done and not self.remaining.any())

    def remaining_passes(self) -> float:
        """Estimated passes still to make: images left to attack times passes per image, plus the features."""
        if self.finished:
            return 0.0
        y = self.cost.yield_per_class()
        # Per class: the images it still needs (never more than the split still holds of it), each at the
        # cost of that class's mix of successes and failures (every image gives a pair without
        # successful_only: then the attack's mean cost).
        per_image = (self.cost.passes_per_image_by_class(y) if self.successful_only
                     else np.full(self.num_classes, self.cost.passes_per_image())) + 2 * FORWARD
        available = np.bincount(self.labels_np[self.order[self.pos:]], minlength=self.num_classes)
        left = np.minimum(self.remaining / y, available)
        pair_passes = float((left * per_image).sum())
        sample_passes = float(self.sample_size - self.correct_seen) * (self.cost.passes_per_image() + 2 * FORWARD)
        passes, images = max(pair_passes, sample_passes), float(left.sum())
        room = float(len(self.order) - self.pos)  # never more images than the order has left
        return passes * min(1.0, room / images) if images > room else passes

    # ---------------------------------------------------------------- work
    def _forward(self, x: torch.Tensor):
        """Features and logits, in batches of ``batch_size`` (a larger batch is slower per image on a CPU,
        whose caches it outgrows)."""
        parts = [self.features(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        if self.on_passes is not None:
            self.on_passes(len(x) * FORWARD)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _chunk_size(self) -> int:
        """Images per step: the batch size, or for a streaming attack (CW) up to four batches, as many as the
        work left needs, so its working set stays full while samples finish at different iterations."""
        if not getattr(self.attack, "streams", False) or not self.cost.images:
            return self.batch_size
        needed = max(float(np.minimum(self.remaining / self.cost.yield_per_class(), len(self.order)).sum()),
                     float(self.sample_size - self.correct_seen))
        return int(min(4 * self.batch_size, max(self.batch_size, math.ceil(needed))))

    def step(self, size: int | None = None) -> int:
        """Attack one batch of the order (``size`` images, default the batch size or more for CW); returns the
        images attacked."""
        if self.finished:
            return 0
        size = int(size) if size else self._chunk_size()
        if self.correct_seen < self.sample_size:
            chunk = self.order[self.pos:self.pos + size]
            self.pos += len(chunk)
        else:
            # Only classes that still need pairs, and of each no more than it is expected to need: the chunk
            # ends before the first image past a class's quota (nothing is skipped, so a class's pairs stay
            # its first usable images). A whole batch of a class that needs a few more pairs was attacked
            # before, each image at up to the attack's budget.
            rest = self.order[self.pos:]
            hits = np.flatnonzero(self.remaining[self.labels_np[rest]] > 0)[:size]
            if hits.size == 0:
                self.pos = len(self.order)
                return 0
            lab_h = self.labels_np[rest[hits]]
            quota = np.ceil(self.remaining / self.cost.yield_per_class() * 1.05).astype(np.int64) + 1
            over = np.flatnonzero(within_class_rank(lab_h) >= quota[lab_h])
            if over.size:
                hits = hits[:max(1, int(over[0]))]
            chunk = rest[hits]
            self.pos += int(hits[-1]) + 1
        idx = torch.as_tensor(chunk)
        x = self.images[idx].to(self.device)
        x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        y = self.labels[idx].to(self.device)
        t = None if self.targets is None else self.targets[idx].to(self.device).long()
        f_clean, logits = self._forward(x)
        correct = (logits.argmax(1) == y).cpu().numpy()
        lab = self.labels_np[chunk]
        in_sample = correct & (self.correct_seen + np.cumsum(correct) <= self.sample_size)
        self.correct_seen += int(correct.sum())
        eligible = correct if self.successful_only else np.ones_like(correct)
        wanted = eligible & (self.remaining[lab] > 0)
        attack_rows = np.flatnonzero(in_sample | wanted)
        if attack_rows.size == 0:
            return 0
        rows_t = torch.as_tensor(attack_rows, device=x.device)
        xs, ys = x[rows_t], y[rows_t]
        ts = None if t is None else t[rows_t]
        adv = self.attack(xs, ys, ts)
        f_adv, logits_adv = self._forward(adv)
        success = is_adversarial(logits_adv, ys, ts).cpu().numpy()
        ids, lab_a = chunk[attack_rows], lab[attack_rows]
        self.images_attacked += len(attack_rows)
        self.cost.add_outcomes(self.attack.last_sample_passes.numpy(), success)  # sums to the call's passes

        sample_rows = in_sample[attack_rows]
        if sample_rows.any():
            self._sample.append((ids[sample_rows], lab_a[sample_rows], success[sample_rows]))
        # Pairs: usable images of classes that still need some, capped in order by the class's need.
        usable = wanted[attack_rows] & (success if self.successful_only else True)
        np.add.at(self.cost.attacked, lab_a[wanted[attack_rows]], 1)
        np.add.at(self.cost.usable, lab_a[usable], 1)
        cand = np.flatnonzero(usable)
        keep = cand[within_class_rank(lab_a[cand]) < self.remaining[lab_a[cand]]]
        if keep.size:
            keep_t = torch.as_tensor(keep, device=x.device)
            self._pairs.append((f_clean[rows_t[keep_t]].cpu().numpy(), f_adv[keep_t].cpu().numpy(),
                                lab_a[keep], ids[keep]))
            self.remaining -= np.bincount(lab_a[keep], minlength=self.num_classes)
        if self.example is None or not self.example["success"]:
            ok = np.flatnonzero(success)
            r0 = int(ok[0]) if ok.size else (0 if self.example is None else None)
            if r0 is not None:
                self.example = {"clean": xs[r0].cpu(), "adversarial": adv[r0].cpu(), "label": int(ys[r0]),
                                "target": None if ts is None else int(ts[r0]),
                                "prediction": int(logits_adv[r0].argmax()), "success": bool(success[r0])}
        return len(attack_rows)

    def run(self, after_step=None) -> "PairCollector":
        """Step until finished, calling ``after_step()`` after every batch."""
        while not self.finished:
            self.step()
            if after_step is not None:
                after_step()
        return self

    # ---------------------------------------------------------------- saved state
    def state(self) -> dict[str, np.ndarray]:
        """Where the walk stands and what it has found, as arrays: with :meth:`load_state` on a collector
        built the same way, the walk goes on as if it had not stopped (a journal saves it between steps)."""
        pool, sample = self.pool(), self.sample()
        out = {"counters": np.array([self.pos, self.correct_seen, self.images_attacked], dtype=np.int64),
               "remaining": self.remaining.copy(), "order": self.order,
               **{f"pool.{k}": v for k, v in pool.items()}, **{f"sample.{k}": v for k, v in sample.items()}}
        if self.example is not None:
            out.update({f"example.{k}": v for k, v in example_to_arrays(self.example).items()})
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from :meth:`state` (the collector must walk the same ``order``)."""
        if not np.array_equal(np.asarray(state["order"]), self.order):
            raise ValueError("the saved state walks another order of images")
        self.pos, self.correct_seen, self.images_attacked = (int(v) for v in state["counters"])
        self.remaining = np.asarray(state["remaining"], dtype=np.int64).copy()
        pool = {k: np.asarray(state[f"pool.{k}"]) for k in ("clean", "adv", "labels", "ids")}
        self._pairs = [(pool["clean"], pool["adv"], pool["labels"], pool["ids"])] if len(pool["labels"]) else []
        sample = {k: np.asarray(state[f"sample.{k}"]) for k in ("ids", "labels", "success")}
        self._sample = [(sample["ids"], sample["labels"], sample["success"])] if len(sample["ids"]) else []
        self.example = (example_from_arrays(state["example.images"], state["example.labels"])
                        if "example.images" in state else None)

    # ---------------------------------------------------------------- results
    def pool(self) -> dict[str, np.ndarray]:
        """``clean`` / ``adv`` (n x D float32), ``labels`` and ``ids`` (indices into the split), in order."""
        if not self._pairs:
            return {"clean": np.zeros((0, 0), np.float32), "adv": np.zeros((0, 0), np.float32),
                    "labels": np.zeros(0, np.int64), "ids": np.zeros(0, np.int64)}
        clean, adv, labels, ids = (np.concatenate(parts) for parts in zip(*self._pairs))
        return {"clean": clean.astype(np.float32), "adv": adv.astype(np.float32), "labels": labels, "ids": ids}

    def sample(self) -> dict[str, np.ndarray]:
        """The success sample: ``ids``, ``labels`` and ``success`` of the first correctly classified images."""
        if not self._sample:
            return {"ids": np.zeros(0, np.int64), "labels": np.zeros(0, np.int64), "success": np.zeros(0, bool)}
        ids, labels, success = (np.concatenate(parts) for parts in zip(*self._sample))
        return {"ids": ids, "labels": labels, "success": success.astype(bool)}


__all__ = ["PairCollector", "AttackCost", "within_class_rank"]
