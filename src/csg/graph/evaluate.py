"""Scoring a mined graph against part landmarks: location instability and few-shot part localization.

Both take, for a set of *units* (graph nodes, or raw filters as the baseline), their inferred positions
in input pixels (``n x N x 2``) and scores (``n x N``) on N images, and the images' landmarks (``N x P x 2``
pixels, with a validity mask ``N x P``). Distances are divided by the image diagonal.

- **Location instability** (``computeStability.m``): a unit's ``top_images`` best-scoring images; per
  landmark p the sample standard deviation over them of ``||position - landmark_p||``; the mean over
  landmarks, then over the ``top_units`` units with the highest mean top-``top_images`` score. Lower is
  better: a unit that always fires at the same place relative to the object's parts is stable.
- **Few-shot part localization**: for a class c and landmark p, ``k`` annotated images ("shots") of class
  c; each unit's offset to the part, ``o_u = mean_shots(landmark - position_u)``; the voters are the
  ``voters`` units nearest the part in the shots (mean ``||o_u||``) among those scoring at least
  ``min_score`` in every shot; on another image of class c the prediction is
  ``sum_u S_u (position_u + o_u) / sum_u S_u``. Error = ``||prediction - landmark|| / diagonal``, averaged
  over the other images, then over repeats, landmarks and classes. The released code does not show how
  nodes vote; this rule is the one METHOD.md section 9 suggests. ``fixed`` is the baseline that predicts
  the shots' mean landmark position on every image.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..core.errors import CsgError


def raw_filter_units(scores: torch.Tensor, positions_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw-filter baseline as units: scores (max of the normalised map) divided by their mean over
    filters and images, so that ``min_score = 1`` means "at least the layer's average", as for nodes."""
    mean = float(scores.mean())
    return positions_px, scores / (mean if mean > 0 else 1.0)


def location_instability(positions: torch.Tensor, scores: torch.Tensor, landmarks: torch.Tensor,
                         valid: torch.Tensor, *, diagonal: float, top_images: int = 20,
                         top_units: int | None = None) -> dict:
    """Instability of the ``top_units`` most responsive units (all units when None), see the module docstring.

    Returns ``{"instability": mean / diagonal, "per_unit": [...] (selected units), "units": [...] indices,
    "top_images": T}``; a landmark seen valid in fewer than 2 of a unit's top images is left out of its mean.
    """
    n, num_images = scores.shape
    if num_images < 2:
        raise CsgError("location instability needs at least 2 images")
    t = max(2, min(int(top_images), num_images))
    best = torch.topk(scores, t, dim=1)  # n x T
    strength = best.values.mean(1)
    k = n if top_units is None else max(1, min(int(top_units), n))
    units = torch.topk(strength, k).indices
    idx = best.indices[units]  # k x T
    pos = positions[units[:, None], idx]  # k x T x 2
    dist = (pos[:, :, None, :] - landmarks[idx]).norm(dim=-1)  # k x T x P
    ok = valid[idx] & torch.isfinite(dist)
    dist = torch.where(ok, dist, torch.zeros((), dtype=dist.dtype))
    count = ok.sum(1)  # k x P
    mean = dist.sum(1) / count.clamp_min(1)
    var = (((dist - mean[:, None]) ** 2) * ok).sum(1) / (count - 1).clamp_min(1)
    part_ok = count >= 2
    per_unit = (var.sqrt() * part_ok).sum(1) / part_ok.sum(1).clamp_min(1)
    has = part_ok.any(1)
    value = float(per_unit[has].mean()) / diagonal if bool(has.any()) else math.nan
    return {"instability": value, "per_unit": (per_unit / diagonal).tolist(), "units": units.tolist(),
            "top_images": t}


def _vote(positions: torch.Tensor, scores: torch.Tensor, lm_shot: torch.Tensor, shots: torch.Tensor,
          tests: torch.Tensor, voters: int, min_score: float) -> torch.Tensor:
    """Predicted part positions (R x T x 2) for R draws at once: ``shots`` R x k and ``tests`` R x T image
    indices, ``lm_shot`` R x k x 2 the shots' landmarks; see the module docstring."""
    shot_pos = positions[:, shots]  # n x R x k x 2
    to_part = lm_shot[None] - shot_pos
    offset = to_part.mean(2)  # n x R x 2
    near = to_part.norm(dim=-1).mean(2)  # n x R
    firing = scores[:, shots].amin(2) >= min_score  # n x R
    firing |= ~firing.any(0, keepdim=True)  # a draw where no unit fires everywhere: every unit may vote
    near = torch.where(firing, near, torch.tensor(math.inf, dtype=near.dtype))
    v = min(int(voters), positions.shape[0])
    chosen = torch.topk(-near, v, dim=0).indices  # v x R (a draw with fewer firing units: inf ones drop out)
    ok = torch.isfinite(near.gather(0, chosen))  # v x R
    draw = torch.arange(shots.shape[0])
    w = scores[chosen[:, :, None], tests[None]].clamp_min(0) * ok[..., None]  # v x R x T
    votes = positions[chosen[:, :, None], tests[None]] + offset[chosen, draw[None]][:, :, None]  # v x R x T x 2
    total = w.sum(0)  # R x T
    pred = (w[..., None] * votes).sum(0) / total.clamp_min(1e-12)[..., None]
    fallback = lm_shot.mean(1, keepdim=True).expand_as(pred)  # nobody fires: the shots' mean position
    return torch.where((total > 0)[..., None], pred, fallback)


def few_shot_localization(units: dict[str, tuple[torch.Tensor, torch.Tensor]], landmarks: torch.Tensor,
                          valid: torch.Tensor, labels: torch.Tensor, *, diagonal: float,
                          shots: Sequence[int] = (1, 3), repeats: int = 10, voters: int = 10,
                          min_score: float = 1.0, seed: int = 0) -> dict:
    """Few-shot part localization error of each unit set in ``units`` (``{name: (positions px, scores)}``)
    and of the ``fixed`` baseline, on the same draws of shots (see the module docstring).

    Returns ``{str(k): {name: error, "fixed": error, "predictions": count}}``.
    """
    g = torch.Generator().manual_seed(int(seed))
    classes = sorted(int(c) for c in torch.unique(labels))
    out: dict[str, dict] = {}
    for k in shots:
        errors: dict[str, list[float]] = {name: [] for name in units}
        errors["fixed"] = []
        count = 0
        for c in classes:  # a few classes x landmarks; the repeats, units and images of each are one tensor op
            for p in range(landmarks.shape[1]):
                eligible = torch.nonzero((labels == c) & valid[:, p]).squeeze(1)
                if eligible.numel() <= k:
                    continue
                order = torch.rand(int(repeats), eligible.numel(), generator=g).argsort(dim=1)
                perm = eligible[order]  # R x E: one random order per repeat
                shot, test = perm[:, :k], perm[:, k:]
                lm_shot, lm_test = landmarks[shot, p], landmarks[test, p]  # R x k x 2, R x T x 2
                for name, (pos, sc) in units.items():
                    pred = _vote(pos, sc, lm_shot, shot, test, voters, min_score)
                    errors[name] += ((pred - lm_test).norm(dim=-1).mean(1) / diagonal).tolist()
                errors["fixed"] += ((lm_shot.mean(1, keepdim=True) - lm_test).norm(dim=-1).mean(1)
                                    / diagonal).tolist()
                count += int(test.numel())
        out[str(k)] = {name: (sum(v) / len(v) if v else math.nan) for name, v in errors.items()}
        out[str(k)]["predictions"] = count
    return out
