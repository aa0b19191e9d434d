"""Black-box attacks that see only predicted probabilities (METHOD.md section 6).

Both are untargeted (success: the prediction leaves the true class) and run
under ``torch.no_grad()``: they never ask the model for a gradient.

* :func:`one_pixel_attack` (Su, Vargas, Sakurai 2019): differential evolution
  over ``(x, y, v_1..v_C)`` for ``pixels`` pixels, minimising the true class's
  probability; SciPy's ``differential_evolution`` with a vectorised objective,
  so one model call scores the whole population.
* :func:`local_search_attack` (Narodytska & Kasiviswanathan 2016, LocSearchAdv),
  batched over images: per round, score every candidate location by the
  true-class probability after setting that pixel to ``p * sign(I)``, apply
  the cyclic transformation to the ``t`` best, and move the candidates to the
  ``(2d+1)^2`` neighbourhoods of those ``t`` pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..core.errors import CsgError
from .attacks import Model, model_device


@dataclass
class BlackBoxResult:
    """Per-image outcome: adversarial images (clean where it failed), success, model queries used."""

    images: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    extra: dict = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.success) else float("nan")


@torch.no_grad()
def _probs(model: Model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = [torch.softmax(model(images[i:i + batch_size]).float(), dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images.new_zeros((0, 0))


def _check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() != 4:
        raise CsgError(f"black-box attack inputs must be images N x C x H x W, got shape {tuple(images.shape)}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise CsgError("black-box attack inputs must be images in [0, 1]")
    if len(images) != len(labels):
        raise CsgError(f"{len(images)} images but {len(labels)} labels")


def one_pixel_generations(population: int, generations: int, max_queries: int | None) -> int:
    """Generations after the initial one that fit ``max_queries`` (whole generations of ``population``).

    One run costs ``population * (1 + generations)`` queries at most; a budget
    is rounded down to whole generations, never to a part of one.
    """
    if max_queries is None:
        return int(generations)
    whole = int(max_queries) // int(population) - 1
    if whole < 0:
        raise CsgError(f"query budget {max_queries} is below one generation of the one-pixel attack "
                       f"({population} candidates); raise --query-budget to at least {population}")
    return min(int(generations), whole)


@torch.no_grad()
def one_pixel_attack(model: Model, images: torch.Tensor, labels: torch.Tensor, *, pixels: int = 1,
                     population: int = 400, max_iter: int = 100, max_queries: int | None = None,
                     mutation: float = 0.5, recombination: float = 1.0, seed: int = 0, index_offset: int = 0,
                     batch_size: int = 256, on_queries: Callable[[int], None] | None = None) -> BlackBoxResult:
    """Change at most ``pixels`` pixels (all channels of each) to fool the model; one DE run per image.

    Su, Vargas and Sakurai (2019): a candidate is ``(x_1, y_1, v_1..v_C, ...)``
    for ``pixels`` pixels, coordinates floored to integers, values in [0, 1];
    the fitness is the true-class probability ``P(y | x')`` (minimised) by
    differential evolution (SciPy's, ``rand1bin``) with their settings:
    a population of exactly ``population`` = 400 (coordinates drawn uniformly,
    values from N(1/2, 127/255) clipped to [0, 1], the paper's N(128, 127) on
    the 0..255 scale), F = 0.5, no crossover (recombination 1), up to
    ``max_iter`` = 100 generations after the initial one, stopping after the
    first generation in which a candidate fools the model.

    ``max_queries`` (per image) is rounded down to whole generations
    (:func:`one_pixel_generations`); a budget below one generation is refused.
    The generations run and the queries per image are returned in ``extra``;
    ``on_queries`` is called with the queries of every generation (a progress bar).
    Image ``i`` is seeded by ``(seed, index_offset + i)``: attacking a sample in pieces, each with its
    offset in the sample, gives the same result as attacking it at once (how a run resumes).
    """
    from scipy.optimize import differential_evolution

    _check_images(images, labels)
    if pixels < 1 or population < 5 or max_iter < 0:
        raise CsgError(f"one-pixel attack needs pixels >= 1, population >= 5 and max_iter >= 0, got "
                       f"{pixels}, {population}, {max_iter}")
    device = model_device(model) or images.device
    n, c, h, w = images.shape
    dim = pixels * (2 + c)
    generations = one_pixel_generations(population, max_iter, max_queries)
    bounds = ([(0, w - 1e-6), (0, h - 1e-6)] + [(0.0, 1.0)] * c) * pixels
    low = np.array([b[0] for b in bounds])
    high = np.array([b[1] for b in bounds])
    is_value = np.array(([False, False] + [True] * c) * pixels)
    adv_all = images.clone()
    success = torch.zeros(n, dtype=torch.bool)
    queries = torch.zeros(n, dtype=torch.long)
    used = torch.zeros(n, dtype=torch.long)

    def apply(image: torch.Tensor, cand: np.ndarray) -> torch.Tensor:
        """``cand`` (dim x P) -> P perturbed copies of ``image`` (one indexed write per pixel, no sample loop)."""
        cand_t = torch.as_tensor(cand, dtype=torch.float32, device=device)
        p_count = cand_t.shape[1]
        out = image.unsqueeze(0).repeat(p_count, 1, 1, 1)
        rows = torch.arange(p_count, device=device)
        for k in range(pixels):
            block = cand_t[k * (2 + c):(k + 1) * (2 + c)]
            xs = block[0].floor().long().clamp_(0, w - 1)
            ys = block[1].floor().long().clamp_(0, h - 1)
            out[rows, :, ys, xs] = block[2:].T
        return out

    for i in range(n):
        image = images[i].to(device, torch.float32)
        label = int(labels[i])
        rng = np.random.default_rng([int(seed), int(index_offset) + i])
        init = rng.uniform(low, high, size=(population, dim))
        init[:, is_value] = np.clip(rng.normal(0.5, 127 / 255, size=(population, int(is_value.sum()))), 0, 1)
        state = {"queries": 0, "found": None, "generations": -1}

        def fitness(cand: np.ndarray) -> np.ndarray:
            cand = cand.reshape(dim, -1)
            if state["found"] is not None:
                # SciPy asks for one more generation before its callback can stop it: spend no query on it.
                return np.ones(cand.shape[1])
            probs = _probs(model, apply(image, cand), batch_size)
            state["queries"] += cand.shape[1]
            state["generations"] += 1
            if on_queries is not None:
                on_queries(cand.shape[1])
            fooled = probs.argmax(1) != label
            if state["found"] is None and bool(fooled.any()):
                state["found"] = cand[:, int(fooled.nonzero()[0])].copy()
            return probs[:, label].cpu().numpy().astype(np.float64)

        def stop(intermediate_result) -> bool:
            return state["found"] is not None

        if generations == 0:
            fitness(init.T)  # the initial population alone
        else:
            differential_evolution(
                fitness, bounds, strategy="rand1bin", maxiter=generations, tol=-1, atol=0,
                mutation=mutation, recombination=recombination, rng=rng, callback=stop, polish=False,
                init=init, updating="deferred", vectorized=True)
        # A candidate that fooled the model was seen in ``fitness``; no query is spent re-checking it.
        queries[i] = state["queries"]
        used[i] = state["generations"]
        if state["found"] is not None:
            adv_all[i] = apply(image, state["found"].reshape(dim, 1))[0].to(images.device)
            success[i] = True
    return BlackBoxResult(adv_all, success, queries,
                          {"pixels": pixels, "population": int(population), "generations": int(generations),
                           "max_queries_per_image": int(population) * (1 + int(generations)),
                           "generations_run": used})


def _cyclic(z: torch.Tensor, lb: float, ub: float) -> torch.Tensor:
    """CYC(z): ``z + (UB - LB)`` below LB, ``z - (UB - LB)`` above UB, else ``z`` (the paper's eq.)."""
    span = ub - lb
    return torch.where(z < lb, z + span, torch.where(z > ub, z - span, z))


def _round_costs(hw: int, *, d: int, t: int, seed_fraction: float) -> tuple[int, int]:
    """Worst-case queries of the first round and of every later round of LocSearchAdv."""
    return max(1, int(seed_fraction * hw)) + 1, min(hw, t * (2 * d + 1) ** 2) + 1


def local_search_rounds(hw: int, *, d: int, t: int, rounds: int, seed_fraction: float,
                        max_queries: int | None) -> int:
    """Rounds of LocSearchAdv that fit ``max_queries`` in the worst case (whole rounds only).

    A round scores every candidate pixel once and checks the result once: the
    first round ``M + 1`` queries (``M = max(1, floor(seed_fraction * H W))``
    seed pixels), every later one at most ``t (2d + 1)^2 + 1``. The budget is
    rounded down to the rounds whose worst case fits; below one round it is refused.
    """
    if max_queries is None:
        return int(rounds)
    first, later = _round_costs(hw, d=d, t=t, seed_fraction=seed_fraction)
    if int(max_queries) < first:
        raise CsgError(f"query budget {max_queries} is below one round of the local search ({first} queries); "
                       f"raise --query-budget to at least {first}")
    return min(int(rounds), 1 + (int(max_queries) - first) // later)


@torch.no_grad()
def local_search_attack(model: Model, images: torch.Tensor, labels: torch.Tensor, *, p: float = 10.0,
                        r: float = 1.5, d: int = 5, t: int = 5, rounds: int = 150, k: int = 1,
                        seed_fraction: float = 0.1, max_queries: int | None = None, seed: int = 0,
                        index_offset: int = 0, batch_size: int = 256, images_per_batch: int = 16,
                        on_queries: Callable[[int], None] | None = None) -> BlackBoxResult:
    """LocSearchAdv (Narodytska & Kasiviswanathan 2017, Algorithm 3), batched over images, no gradients.

    Images are mapped to ``I = x - 1/2`` in ``[LB, UB] = [-1/2, 1/2]`` (as
    foolbox does). With ``g(I, u) = P(y | PERT(I, p, u))`` where
    ``PERT`` sets every channel of pixel ``u`` to ``p * sign(I(u))``, one round:

    1. score every candidate ``u`` by ``g`` (the first round: a random
       ``seed_fraction`` of the pixel locations); keep the ``t`` lowest
       (the pixels whose saturation hurts the true class most);
    2. set ``I(b, u) = CYC(r * I(b, u))`` on every channel ``b`` of those pixels;
    3. stop (success) when ``y`` leaves the top-``k`` predictions;
    4. the next candidates are the ``(2d+1) x (2d+1)`` squares around the ``t`` pixels.

    Defaults ``p = 10, r = 1.5, d = 5, t = 5, R = 150`` are foolbox's
    ``LocalSearchAttack``. ``max_queries`` (per image) is rounded down to whole
    rounds (:func:`local_search_rounds`), stated in ``extra["rounds"]``.
    ``images_per_batch`` images are searched together (each round scores up to
    ``t (2d+1)^2`` probes per image in batches of ``batch_size``). The batch starting at image ``s`` is
    seeded by ``seed * 1000003 + index_offset + s``: pieces of a sample that start at multiples of
    ``images_per_batch``, each with its offset, give the same result as the whole sample at once.
    """
    _check_images(images, labels)
    if not 0 <= r <= 2:
        raise CsgError(f"local search needs 0 <= r <= 2 (the cyclic transformation), got r={r}")
    if d < 0 or t < 1 or rounds < 1 or k < 1 or not 0 < seed_fraction <= 1:
        raise CsgError("local search needs d >= 0, t >= 1, rounds >= 1, k >= 1 and 0 < seed_fraction <= 1")
    rounds = local_search_rounds(images.shape[2] * images.shape[3], d=d, t=t, rounds=rounds,
                                 seed_fraction=seed_fraction, max_queries=max_queries)
    first, later = _round_costs(images.shape[2] * images.shape[3], d=d, t=t, seed_fraction=seed_fraction)
    parts = []
    for start in range(0, len(images), max(1, images_per_batch)):
        sl = slice(start, start + max(1, images_per_batch))
        parts.append(_local_search_batch(model, images[sl], labels[sl], p=p, r=r, d=d, t=t, rounds=rounds, k=k,
                                         seed_fraction=seed_fraction,
                                         seed=int(seed) * 1_000_003 + int(index_offset) + start,
                                         batch_size=batch_size, on_queries=on_queries))
    extra = {"p": p, "r": r, "d": d, "t": t, "rounds": rounds, "k": k, "seed_fraction": seed_fraction,
             "max_queries_per_image": first + (rounds - 1) * later}
    if not parts:
        return BlackBoxResult(images.clone(), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long),
                              extra)
    extra["rounds_run"] = torch.cat([q.extra["rounds_run"] for q in parts])
    return BlackBoxResult(torch.cat([q.images for q in parts]), torch.cat([q.success for q in parts]),
                          torch.cat([q.queries for q in parts]), extra)


def _local_search_batch(model, images, labels, *, p, r, d, t, rounds, k, seed_fraction, seed,
                        batch_size, on_queries=None) -> BlackBoxResult:
    device = model_device(model) or images.device
    n, c, h, w = images.shape
    hw = h * w
    lb, ub = -0.5, 0.5
    cur = (images.to(device, torch.float32) - 0.5).reshape(n, c, hw).clone()
    y = labels.to(device).long()
    gen = torch.Generator().manual_seed(int(seed))
    n_seed = max(1, int(seed_fraction * hw))
    cand = torch.rand(n, hw, generator=gen).argsort(dim=1)[:, :n_seed].to(device)  # (n, M) flat locations
    valid = torch.ones_like(cand, dtype=torch.bool)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    queries = torch.zeros(n, dtype=torch.long, device=device)
    rounds_run = torch.zeros(n, dtype=torch.long, device=device)
    offs = torch.arange(-d, d + 1, device=device)
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    t_eff = t
    for _ in range(rounds):
        # Images still running (the budget is whole rounds, fixed up front).
        active = ~done
        live = valid & active[:, None]
        if not bool(live.any()):
            break
        rows, cols = live.nonzero(as_tuple=True)
        locs = cand[rows, cols]
        probe = cur[rows].clone()  # (P, C, HW)
        pix = probe[torch.arange(len(rows), device=device), :, locs]  # (P, C)
        probe[torch.arange(len(rows), device=device), :, locs] = p * torch.sign(pix)
        scores = torch.full(cand.shape, float("inf"), device=device)
        scores[rows, cols] = _probs(model, (probe + 0.5).reshape(-1, c, h, w), batch_size)[
            torch.arange(len(rows), device=device), y[rows]]
        queries += live.sum(1)
        t_eff = min(t, cand.shape[1])
        best_scores, best_cols = scores.topk(t_eff, dim=1, largest=False)
        chosen = cand.gather(1, best_cols)  # (n, t)
        chosen_ok = torch.isfinite(best_scores) & active[:, None]
        # Cyclic transformation of every channel of the chosen pixels.
        idx = chosen.unsqueeze(1).expand(n, c, t_eff)
        old = cur.gather(2, idx)
        new = torch.where(chosen_ok.unsqueeze(1), _cyclic(r * old, lb, ub), old)
        cur.scatter_(2, idx, new)
        # Success test: the true class leaves the top-k.
        logits = torch.cat([model((cur[i:i + batch_size] + 0.5).reshape(-1, c, h, w))
                            for i in range(0, n, batch_size)])
        topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
        fooled = ~(topk == y[:, None]).any(1)
        queries += active.long()
        rounds_run += active.long()
        if on_queries is not None:
            on_queries(int(live.sum()) + int(active.sum()))
        done |= active & fooled
        # Next candidates: the (2d+1)^2 squares around the chosen pixels, inside the image, without repeats.
        cy, cx = chosen // w, chosen % w
        ny = cy.unsqueeze(2) + dy  # (n, t, S)
        nx = cx.unsqueeze(2) + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w) & chosen_ok.unsqueeze(2)
        flat = torch.where(ok, ny * w + nx, torch.full_like(ny, hw)).reshape(n, -1)
        flat, _ = flat.sort(dim=1)
        repeat = torch.zeros_like(flat, dtype=torch.bool)
        repeat[:, 1:] = flat[:, 1:] == flat[:, :-1]
        valid = (flat < hw) & ~repeat
        cand = flat.clamp(max=hw - 1)
    adv = (cur + 0.5).reshape(n, c, h, w).clamp_(0, 1)
    success = done.clone()
    # A failed image is returned as its last iterate (the perturbation the search reached).
    return BlackBoxResult(adv.to(images.device), success.cpu(), queries.cpu(), {"rounds_run": rounds_run.cpu()})


BLACKBOX = {"one-pixel": one_pixel_attack, "local-search": local_search_attack}

__all__ = ["BlackBoxResult", "one_pixel_attack", "local_search_attack", "BLACKBOX"]
