"""Black-box attacks: one-pixel (differential evolution) and local search (METHOD.md section 6)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from csg.adversarial import (local_search_attack, local_search_rounds, one_pixel_attack, one_pixel_generations,
                             perturbation_norms)
from csg.adversarial.blackbox import _cyclic
from csg.core.errors import CsgError


class BrightPixel(nn.Module):
    """Class 1 when any pixel (any channel) exceeds ``threshold``, else class 0: one pixel can flip it."""

    def __init__(self, threshold: float = 0.7, sharp: float = 40.0):
        super().__init__()
        self.threshold, self.sharp = threshold, sharp
        self.dummy = nn.Parameter(torch.zeros(()))  # so the attacks find a device

    def forward(self, x):
        m = x.flatten(1).amax(1) + self.dummy
        z = self.sharp * (m - self.threshold)
        return torch.stack([-z / 2, z / 2], dim=1)


class NoGradients(BrightPixel):
    """Refuses to run with autograd on, and its backward raises: a gradient-free attack still works."""

    class _Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward called on a black-box model")

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("black-box model called with gradients enabled")
        return super().forward(self._Boom.apply(x))


def dark_images(n: int, c: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 0.3  # every pixel below the threshold


def test_one_pixel_changes_at_most_one_pixel_and_fools_a_one_pixel_model():
    x = dark_images(3, c=3)
    y = torch.zeros(3, dtype=torch.long)
    res = one_pixel_attack(BrightPixel(), x, y, population=60, max_iter=30, seed=0)
    assert bool(res.success.all())
    l0 = perturbation_norms(x, res.images)["l0"]
    assert bool((l0 == 1).all())
    with torch.no_grad():
        assert bool((BrightPixel()(res.images).argmax(1) == 1).all())


def test_one_pixel_failure_changes_nothing_and_respects_the_budget():
    x = dark_images(2)
    y = torch.zeros(2, dtype=torch.long)
    unbeatable = BrightPixel(threshold=2.0)  # no value in [0, 1] reaches it
    res = one_pixel_attack(unbeatable, x, y, population=30, max_iter=100, max_queries=200, seed=1)
    assert not bool(res.success.any())
    torch.testing.assert_close(res.images, x)
    assert bool((res.queries <= 200).all())
    assert bool((res.queries > 200 - 30).all())  # it used the budget, in whole generations of 30


def test_one_pixel_budget_is_whole_generations_of_the_published_population():
    # Su et al.: exactly 400 candidates per generation. A budget of 1000 queries holds the initial generation
    # and one more (800 queries), never a part of a third; below one generation the budget is refused.
    x = dark_images(2)
    y = torch.zeros(2, dtype=torch.long)
    assert one_pixel_generations(400, 100, None) == 100 and one_pixel_generations(400, 100, 1000) == 1
    res = one_pixel_attack(BrightPixel(threshold=2.0), x, y, population=400, max_iter=100, max_queries=1000, seed=0)
    assert res.extra["population"] == 400 and res.extra["generations"] == 1
    assert res.queries.tolist() == [800, 800] and res.extra["generations_run"].tolist() == [1, 1]
    with pytest.raises(CsgError, match="query budget 300 is below one generation"):
        one_pixel_attack(BrightPixel(), x, y, max_queries=300)


def test_one_pixel_stops_after_the_generation_that_fooled_the_model():
    x = dark_images(1)
    y = torch.zeros(1, dtype=torch.long)
    # Threshold 0.1 on dark images: almost any candidate value fools it, already in the initial population.
    res = one_pixel_attack(BrightPixel(threshold=0.31), x, y, population=40, max_iter=100, seed=0)
    assert bool(res.success.all()) and res.queries.tolist() == [40]


def test_local_search_uses_no_gradients_and_follows_the_algorithm():
    # Dark images: every probe scores alike; the t chosen pixels go through CYC(r * I) on I = x - 1/2.
    x = torch.zeros(4, 1, 10, 10)
    y = torch.zeros(4, dtype=torch.long)
    res = local_search_attack(NoGradients(threshold=0.7), x, y, p=10.0, r=1.5, d=2, t=3, rounds=5, seed=0)
    assert bool(res.success.all())
    # CYC(1.5 * -0.5) = -0.75 + 1 = 0.25, i.e. 0.75 in [0, 1]; exactly t pixels changed in the single round.
    changed = res.images != x
    assert changed.flatten(1).sum(1).tolist() == [3, 3, 3, 3]
    torch.testing.assert_close(res.images[changed], torch.full((12,), 0.75))
    n_seed = int(0.1 * 100)
    assert res.queries.tolist() == [n_seed + 1] * 4  # one probe per seed location, one success check


def test_local_search_budget_is_whole_rounds_and_keeps_the_range():
    # 12 x 12 images, d = 2, t = 2: the first round costs 14 + 1 queries, every later one at most 2 * 25 + 1.
    x = dark_images(3, c=3, size=12)
    y = torch.zeros(3, dtype=torch.long)
    assert local_search_rounds(144, d=2, t=2, rounds=50, seed_fraction=0.1, max_queries=120) == 3  # 15 + 2 * 51
    res = local_search_attack(BrightPixel(threshold=2.0), x, y, d=2, t=2, rounds=50, max_queries=120, seed=2)
    assert res.extra["rounds"] == 3 and res.extra["max_queries_per_image"] == 117
    assert not bool(res.success.any()) and res.extra["rounds_run"].tolist() == [3, 3, 3]
    assert bool((res.queries <= 117).all()) and bool((res.queries > 15).all())
    assert float(res.images.min()) >= 0 and float(res.images.max()) <= 1
    with pytest.raises(CsgError, match="below one round"):
        local_search_attack(BrightPixel(), x, y, d=2, t=2, max_queries=10)


def test_cyclic_transformation():
    z = torch.tensor([-0.75, -0.5, 0.2, 0.5, 0.9])
    torch.testing.assert_close(_cyclic(z, -0.5, 0.5), torch.tensor([0.25, -0.5, 0.2, 0.5, -0.1]))
