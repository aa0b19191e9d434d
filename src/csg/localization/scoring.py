"""Scoring regions against object masks (METHOD.md section 5, Appendix H).

* ``IoU(S, S') = |S and S'| / |S or S'|`` (0 when both are empty).
* Per filter k and class c: ``IoU_c^k`` = mean IoU over the images of class c; ``APn_c^k`` = share of
  those images with ``IoU >= n%``.
* A filter's class ``c* = argmax_c APn_c^k`` (``n = select_ap``: 20 for GradMap, 30 for ActivMap; ties go
  to the larger ``IoU_c^k``, then the lower class index); the filter's scores are taken at ``c*``.
* A class's score = mean over the filters whose ``c*`` is that class; the total = mean over all filters.
* CAM (one map per image): per-image IoU, averaged per class and overall; ``APn`` = share of images with
  ``IoU >= n%``.

The per-filter statistics are accumulated as ``C x K`` sums, so any number of images streams through.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.errors import CsgError

AP_LEVELS = (20, 30)


def iou(regions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``|S and S'| / |S or S'|`` in float64 for regions ``N x K x H x W`` (or ``N x H x W``) and masks
    ``N x H x W``; an empty union scores 0."""
    r = regions.bool()
    m = masks.bool().to(r.device)
    if r.dim() == 4:
        m = m[:, None]
    inter = (r & m).sum(dim=(-2, -1)).to(torch.float64)
    union = (r | m).sum(dim=(-2, -1)).to(torch.float64)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _hits(ious: torch.Tensor, n: int) -> torch.Tensor:
    # IoU is a ratio of integers computed in float64 (correctly rounded), so comparing with n / 100
    # agrees with the exact rational comparison
    return (ious >= n / 100.0).to(torch.float64)


class FilterScores:
    """Streaming per-filter, per-class statistics: ``update(ious N x K, labels N)``, then :meth:`result`."""

    def __init__(self, num_classes: int, num_filters: int, levels: Sequence[int] = AP_LEVELS):
        self.c, self.k = int(num_classes), int(num_filters)
        self.levels = tuple(int(n) for n in levels)
        self.iou_sum = torch.zeros(self.c, self.k, dtype=torch.float64)
        self.hits = {n: torch.zeros(self.c, self.k, dtype=torch.float64) for n in self.levels}
        self.count = torch.zeros(self.c, dtype=torch.float64)
        self.per_image: list[torch.Tensor] = []   # N x K float32, for paired resampling by csg compare

    def update(self, ious: torch.Tensor, labels: torch.Tensor) -> None:
        ious = ious.detach().to("cpu", torch.float64)
        self.per_image.append(ious.float())
        labels = labels.detach().to("cpu", torch.long)
        if ious.shape != (labels.numel(), self.k):
            raise CsgError(f"expected IoU of shape ({labels.numel()}, {self.k}), got {tuple(ious.shape)}")
        self.iou_sum.index_add_(0, labels, ious)
        for n in self.levels:
            self.hits[n].index_add_(0, labels, _hits(ious, n))
        self.count += torch.bincount(labels, minlength=self.c).to(torch.float64)

    def tables(self) -> dict[str, np.ndarray]:
        """``iou`` and ``ap<n>`` as ``C x K`` arrays (NaN for a class with no images)."""
        denom = self.count[:, None]
        nan = torch.full_like(self.iou_sum, float("nan"))
        out = {"iou": torch.where(denom > 0, self.iou_sum / denom.clamp(min=1), nan).numpy()}
        for n in self.levels:
            out[f"ap{n}"] = torch.where(denom > 0, self.hits[n] / denom.clamp(min=1), nan).numpy()
        return out

    def image_ious(self) -> np.ndarray:
        return torch.cat(self.per_image).numpy() if self.per_image else np.zeros((0, self.k), np.float32)

    def result(self, select_ap: int = 30, class_names: Sequence[str] | None = None) -> dict:
        return score_filters(self.tables(), select_ap=select_ap, class_names=class_names,
                             num_images=self.count.numpy())


def filter_tables(ious: np.ndarray | torch.Tensor, labels, num_classes: int,
                  levels: Sequence[int] = AP_LEVELS) -> dict[str, np.ndarray]:
    """``IoU_c^k`` and ``APn_c^k`` (``C x K``) from per-image, per-filter IoUs ``N x K``."""
    ious = torch.as_tensor(np.asarray(ious), dtype=torch.float64)
    acc = FilterScores(num_classes, ious.shape[1], levels)
    acc.update(ious, torch.as_tensor(np.asarray(labels)))
    return acc.tables()


def assign_classes(tables: dict[str, np.ndarray], select_ap: int = 30) -> np.ndarray:
    """``c*_k = argmax_c APn_c^k`` (n = ``select_ap``); ties broken by ``IoU_c^k``, then lowest class."""
    key = f"ap{select_ap}"
    if key not in tables:
        raise CsgError(f"no AP{select_ap} table; levels computed: {', '.join(k for k in tables if k != 'iou')}")
    ap = np.where(np.isnan(tables[key]), -np.inf, tables[key])
    best = ap.max(axis=0, keepdims=True)
    tie_iou = np.where(ap == best, np.nan_to_num(tables["iou"], nan=-np.inf), -np.inf)
    return tie_iou.argmax(axis=0)


def _mean_or_none(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def score_filters(tables: dict[str, np.ndarray], select_ap: int = 30, class_names: Sequence[str] | None = None,
                  num_images: np.ndarray | None = None) -> dict:
    """Filter scores at each filter's class ``c*``, per-class means over filters, and totals.

    Returns ``{"avg_iou", "ap20", "ap30", "total": {...}, "per_class": {name: {...}}, "per_filter": {...},
    "select_ap"}``; a class that no filter picked has ``None`` scores and ``num_filters`` 0.
    """
    c, k = tables["iou"].shape
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    cls = assign_classes(tables, select_ap)
    cols = np.arange(k)
    keys = ["iou"] + sorted(t for t in tables if t.startswith("ap"))
    per_filter = {t: tables[t][cls, cols] for t in keys}
    rename = {"iou": "avg_iou"}
    total = {rename.get(t, t): _mean_or_none(per_filter[t]) for t in keys}
    per_class = {}
    for ci in range(c):  # C rows of a summary table, not a hot path
        sel = cls == ci
        row = {rename.get(t, t): _mean_or_none(per_filter[t][sel]) for t in keys}
        row["num_filters"] = int(sel.sum())
        if num_images is not None:
            row["num_images"] = int(num_images[ci])
        per_class[names[ci]] = row
    out = dict(total)
    out["total"] = dict(total)
    out["per_class"] = per_class
    out["select_ap"] = int(select_ap)
    out["per_filter"] = {"class": cls.tolist(), "class_name": [names[i] for i in cls],
                         **{rename.get(t, t): per_filter[t].tolist() for t in keys}}
    return out


class ImageScores:
    """Streaming per-image IoU (one map per image, CAM): ``update(ious N, labels N)``, then :meth:`result`."""

    def __init__(self, num_classes: int, levels: Sequence[int] = AP_LEVELS):
        self.c = int(num_classes)
        self.levels = tuple(int(n) for n in levels)
        self.ious: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, ious: torch.Tensor, labels: torch.Tensor) -> None:
        self.ious.append(ious.detach().to("cpu", torch.float64).reshape(-1))
        self.labels.append(labels.detach().to("cpu", torch.long).reshape(-1))

    def image_ious(self) -> np.ndarray:
        return torch.cat(self.ious).float().numpy() if self.ious else np.zeros(0, np.float32)

    def result(self, class_names: Sequence[str] | None = None) -> dict:
        ious = torch.cat(self.ious) if self.ious else torch.zeros(0, dtype=torch.float64)
        labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)
        return score_images(ious.numpy(), labels.numpy(), self.c, class_names, self.levels)


def score_images(ious, labels, num_classes: int, class_names: Sequence[str] | None = None,
                 levels: Sequence[int] = AP_LEVELS) -> dict:
    """CAM scores: ``avg_iou`` = mean IoU, ``ap<n>`` = share of images with ``IoU >= n%``, overall and per class."""
    ious = np.asarray(ious, dtype=np.float64)
    labels = np.asarray(labels)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]

    def summary(x: np.ndarray) -> dict:
        row = {"avg_iou": _mean_or_none(x)}
        for n in levels:
            row[f"ap{n}"] = _mean_or_none((x >= n / 100.0).astype(np.float64))
        return row

    total = summary(ious)
    per_class = {}
    for ci in range(num_classes):  # C summary rows
        row = summary(ious[labels == ci])
        row["num_images"] = int((labels == ci).sum())
        per_class[names[ci]] = row
    out = dict(total)
    out["total"] = dict(total)
    out["per_class"] = per_class
    out["num_images"] = int(ious.size)
    return out


def totals_from_image_ious(ious: np.ndarray, labels: np.ndarray, num_classes: int, select_ap: int | None) -> dict:
    """The totals (``avg_iou``, ``ap20``, ``ap30``) from stored per-image IoUs: ``N x K`` for a per-filter
    method (``select_ap`` its class-selection level), ``N`` for CAM (``select_ap=None``). Used by
    ``csg compare`` to resample test images."""
    if np.asarray(ious).ndim == 2:
        return score_filters(filter_tables(ious, labels, num_classes), select_ap=select_ap or 30)["total"]
    return score_images(ious, labels, num_classes)["total"]
