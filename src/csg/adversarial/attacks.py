"""White-box attacks on images in [0, 1], batched on the model's device.

Every attack is a subclass of :class:`Attack` that overrides one method,
:meth:`Attack.perturb` (one batch in, one batch of adversarial images out);
the base class splits the input into batches, moves them to the model's device
and puts the results back. The model is any callable ``images [0, 1] -> logits``;
for a :class:`csg.core.model.GatedClassifier` pass ``model.logits`` (eval mode).

An attack is *untargeted* when ``targets`` is ``None`` (push the true label
``y`` down) and *targeted* otherwise (pull the target ``t`` up):

    objective L(x) = CE(f(x), y)          untargeted  (ascended)
    objective L(x) = -CE(f(x), t)         targeted    (ascended)

Gradients are taken with :func:`torch.autograd.grad` with respect to the
images only, so the model's parameters never accumulate ``.grad``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import CsgError

Model = Callable[[torch.Tensor], torch.Tensor]


def model_device(model: Model) -> torch.device | None:
    """The device of the model's first parameter (``None`` for a parameter-free callable)."""
    module = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    if isinstance(module, nn.Module):
        for p in module.parameters():
            return p.device
        for b in module.buffers():
            return b.device
    return None


def attack_objective(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Per-sample objective to *increase*: ``CE(logits, y)`` untargeted, ``-CE(logits, t)`` targeted."""
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Success per sample: ``argmax != y`` (untargeted) or ``argmax == t`` (targeted)."""
    pred = logits.argmax(1)
    return pred != labels if targets is None else pred == targets


class Attack:
    """Base class: subclasses override :meth:`perturb` for one batch.

    ``attack(images, labels, targets=None)`` returns adversarial images of the
    same shape, in [0, 1], on the device the images came from. ``passes``
    counts the model evaluations with an input gradient (one image through one
    forward and backward pass is one pass) since the attack was built, so a
    caller can report the cost and a progress bar can count work done.
    ``budget_passes`` is the most one image can cost.
    """

    name = "attack"
    #: ``True`` when :meth:`perturb` takes the whole input and keeps its own working set of ``batch_size``.
    streams = False

    def __init__(self, model: Model, *, batch_size: int | None = None):
        if not callable(model):
            raise CsgError(f"the model of an attack must be callable (images -> logits), got {type(model).__name__}")
        self.model = model
        self.batch_size = batch_size
        self.passes = 0
        self._sample_passes: torch.Tensor | None = None
        self.last_sample_passes = torch.zeros(0)
        #: called with the number of passes just made (a progress bar's update), or ``None``
        self.on_passes: Callable[[int], None] | None = None

    def _count(self, passes: int) -> None:
        self.passes += passes
        if self.on_passes is not None:
            self.on_passes(passes)

    @property
    def budget_passes(self) -> int:
        """The most passes one image can cost (the attack's iteration budget)."""
        return 1

    def state(self) -> dict[str, np.ndarray]:
        """The pass count and the random state (``generator``, when the attack draws): a run that stopped
        goes on with the random numbers an uninterrupted one would have drawn next."""
        out = {"passes": np.array(self.passes, dtype=np.int64)}
        generator = getattr(self, "generator", None)
        if isinstance(generator, torch.Generator):
            out["generator"] = generator.get_state().numpy()
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.passes = int(state["passes"])
        generator = getattr(self, "generator", None)
        if isinstance(generator, torch.Generator) and "generator" in state:
            generator.set_state(torch.from_numpy(np.asarray(state["generator"], dtype=np.uint8).copy()))

    def perturb(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Adversarial images for one batch (already on the model's device). Override this."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
                 *, batch_size: int | None = None) -> torch.Tensor:
        if images.dim() != 4:
            raise CsgError(f"attack inputs must be images N x C x H x W, got shape {tuple(images.shape)}")
        if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
            raise CsgError("attack inputs must be images in [0, 1]; divide uint8 images by 255")
        if targets is not None and targets.shape != labels.shape:
            raise CsgError(f"targets {tuple(targets.shape)} and labels {tuple(labels.shape)} differ in shape")
        home = images.device
        device = model_device(self.model) or home
        bs = batch_size or self.batch_size or len(images) or 1
        if self.streams:
            bs = max(len(images), 1)  # the attack batches internally
        out, spent = [], []
        for start in range(0, len(images), bs):
            x = images[start:start + bs].to(device, torch.float32)
            y = labels[start:start + bs].to(device)
            t = None if targets is None else targets[start:start + bs].to(device)
            before, self._sample_passes = self.passes, None
            adv = self.perturb(x, y, t).detach()
            out.append(adv.to(home))
            # an attack whose samples cost different numbers of passes (CW's early stops) sets its own
            spent.append(self._sample_passes if self._sample_passes is not None
                         else torch.full((len(x),), (self.passes - before) / max(len(x), 1)))
        #: passes each input of the last call cost (a cost model of the work left needs them per sample)
        self.last_sample_passes = torch.cat(spent).float().cpu() if spent else torch.zeros(0)
        return torch.cat(out) if out else images.clone()

    # shared helper
    def _gradient(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """``d L / d x`` of the summed per-sample objective (sum keeps each sample's gradient its own)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = attack_objective(self.model(x), labels, targets).sum()
            (grad,) = torch.autograd.grad(loss, x)
        self._count(len(x))
        return grad


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015).

        x' = clip_[0,1]( x + eps * sign(grad_x L(x)) )

    with ``L`` the objective of :func:`attack_objective` (targeted: the step goes
    down the target's cross-entropy).
    """

    name = "fgsm"

    def __init__(self, model: Model, eps: float = 0.031, **kw):
        super().__init__(model, **kw)
        if not 0 <= eps <= 1:
            raise CsgError(f"FGSM eps must lie in [0, 1] (images are in [0, 1]), got {eps}")
        self.eps = float(eps)

    def perturb(self, images, labels, targets):
        grad = self._gradient(images, labels, targets)
        return (images + self.eps * grad.sign()).clamp_(0.0, 1.0)


class PGD(Attack):
    """Projected gradient descent in the L-infinity ball (Madry et al. 2018).

        x_0     = x (+ U(-eps, eps) with random_start, clipped to [0, 1])
        x_{k+1} = clip_[max(0, x-eps), min(1, x+eps)]( x_k + step_size * sign(grad L(x_k)) )

    Returns the last iterate (as ART does). ``step_size`` defaults to 2/255,
    the usual companion of eps = 8/255 ~ 0.031 with 7 steps.
    """

    name = "pgd"

    def __init__(self, model: Model, eps: float = 0.031, steps: int = 7, step_size: float | None = None,
                 random_start: bool = True, seed: int = 0, **kw):
        super().__init__(model, **kw)
        if not 0 <= eps <= 1 or steps < 1:
            raise CsgError(f"PGD needs eps in [0, 1] and steps >= 1, got eps={eps}, steps={steps}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.0 / 255.0
        self.random_start = bool(random_start)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def budget_passes(self) -> int:
        return self.steps

    def perturb(self, images, labels, targets):
        lower = (images - self.eps).clamp(min=0.0)
        upper = (images + self.eps).clamp(max=1.0)
        x = images.clone()
        if self.random_start:
            # Drawn on the CPU generator so a seed gives the same start on every device.
            noise = torch.empty(images.shape).uniform_(-self.eps, self.eps, generator=self.generator)
            x = (x + noise.to(images.device)).clamp(0.0, 1.0)
        for _ in range(self.steps):
            grad = self._gradient(x, labels, targets)
            x = torch.maximum(torch.minimum(x + self.step_size * grad.sign(), upper), lower)
        return x


class CarliniWagnerL2(Attack):
    """Carlini-Wagner L2 attack (Carlini & Wagner 2017) with its binary search over c, run per sample.

    Change of variable ``x' = (tanh(w) + 1) / 2`` keeps ``x'`` in [0, 1]; Adam
    (lr, beta 0.9 / 0.999, eps 1e-8) minimises, per sample,

        L(w) = ||x' - x||_2^2 + c * f(x'),
        f = max(max_{i != t} Z_i - Z_t, -kappa)      targeted (t the target)
        f = max(Z_y - max_{i != y} Z_i, -kappa)      untargeted (y the label)

    for up to ``steps`` iterations, for up to ``search_steps`` values of ``c``
    (start ``initial_const``; ``c <- 10 c`` until a success, then bisection
    between the largest failing and the smallest succeeding ``c``). Returns,
    per sample, the successful iterate with the smallest L2 distance, or the
    clean image where no iterate succeeded.

    The gradient is written out rather than taken through ``tanh`` and the
    distance: ``dL/dw = (2 (x' - x) + c df/dx') * (1 - tanh^2 w) / 2``, with
    ``df/dx'`` the only autograd call (one forward and backward of the model).

    Two early stops cut the cost without lowering the budget; both act on one
    sample at a time, so a sample's result does not depend on its batch:

    * ``abort_early`` (Carlini's reference code, cleverhans and foolbox 2,
      default on): every ``ceil(steps / 10)`` iterations, a sample whose loss
      is not below 0.9999 times its loss at the previous check ends this
      value of ``c``;
    * ``stop_when_bracketed`` (default on): a sample's search over ``c`` ends
      at the end of the first value of ``c`` that succeeded, i.e. once the
      boundary is bracketed between a failing (or zero) and a succeeding
      ``c``; the bisection steps after it are skipped.

    The samples run as a stream: a working set of ``batch_size`` samples is
    kept full, a finished sample leaves and the next input takes its place,
    so the early stops shorten the run instead of leaving idle rows.
    ``passes`` counts the model passes actually made.
    """

    name = "cw"
    streams = True

    def __init__(self, model: Model, steps: int = 100, search_steps: int = 5, initial_const: float = 1e-2,
                 lr: float = 0.01, confidence: float = 0.0, abort_early: bool = True,
                 stop_when_bracketed: bool = True, **kw):
        super().__init__(model, **kw)
        if steps < 1 or search_steps < 1 or not initial_const > 0 or not lr > 0 or confidence < 0:
            raise CsgError("CW needs steps >= 1, search_steps >= 1, initial_const > 0, lr > 0 and confidence >= 0")
        self.steps = int(steps)
        self.search_steps = int(search_steps)
        self.initial_const = float(initial_const)
        self.lr = float(lr)
        self.confidence = float(confidence)
        self.abort_early = bool(abort_early)
        self.stop_when_bracketed = bool(stop_when_bracketed)

    @property
    def budget_passes(self) -> int:
        return self.steps * self.search_steps

    def _margin(self, logits, labels, targets):
        """``f`` above, and whether the iterate succeeds (with the confidence margin)."""
        cls = labels if targets is None else targets
        real = logits.gather(1, cls[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(1)
        diff = real - others if targets is None else others - real
        f = diff.clamp(min=-self.confidence)
        success = diff < -self.confidence if self.confidence > 0 else is_adversarial(logits, labels, targets)
        return f, success

    def perturb(self, images, labels, targets):
        n = len(images)
        dev = images.device
        width = min(n, self.batch_size or n) or 1
        x_all = images.detach()
        best_adv = x_all.clone()
        best_l2 = torch.full((n,), float("inf"), device=dev)
        check_every = max(1, math.ceil(self.steps / 10))
        b1, b2, eps = 0.9, 0.999, 1e-8

        # Per-sample state of the working set; a row is one sample, ``idx`` its input row.
        idx = torch.zeros(0, dtype=torch.long, device=dev)
        fields = ("w", "m", "v")
        state = {k: x_all.new_zeros((0,) + x_all.shape[1:]) for k in fields}
        vec = {"it": torch.zeros(0, dtype=torch.long, device=dev), "step": torch.zeros(0, dtype=torch.long, device=dev),
               "const": x_all.new_zeros(0), "lower": x_all.new_zeros(0), "upper": x_all.new_zeros(0),
               "prev": x_all.new_zeros(0), "hit": torch.zeros(0, dtype=torch.bool, device=dev)}

        def start_rows(rows: torch.Tensor) -> None:
            """Append the inputs ``rows`` to the working set, at the first value of c."""
            nonlocal idx
            k = len(rows)
            x0 = x_all[rows]
            # atanh of the image scaled slightly inside (-1, 1) so w stays finite at 0 and 1.
            state["w"] = torch.cat([state["w"], torch.atanh((x0 * 2 - 1) * (1 - 1e-6))])
            state["m"] = torch.cat([state["m"], torch.zeros_like(x0)])
            state["v"] = torch.cat([state["v"], torch.zeros_like(x0)])
            vec["it"] = torch.cat([vec["it"], rows.new_zeros(k)])
            vec["step"] = torch.cat([vec["step"], rows.new_zeros(k)])
            vec["const"] = torch.cat([vec["const"], x0.new_full((k,), self.initial_const)])
            vec["lower"] = torch.cat([vec["lower"], x0.new_zeros(k)])
            vec["upper"] = torch.cat([vec["upper"], x0.new_full((k,), 1e10)])
            vec["prev"] = torch.cat([vec["prev"], x0.new_full((k,), float("inf"))])
            vec["hit"] = torch.cat([vec["hit"], torch.zeros(k, dtype=torch.bool, device=dev)])
            idx = torch.cat([idx, rows])

        spent = torch.zeros(n, dtype=torch.long, device=dev)  # passes per input
        queue = torch.arange(n, device=dev)
        start_rows(queue[:width])
        queue = queue[width:]
        y_all = labels
        t_all = targets
        while len(idx):
            x0 = x_all[idx]
            w = state["w"]
            tw = torch.tanh(w)
            x = (tw + 1) / 2
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                logits = self.model(xg)
                f, success = self._margin(logits, y_all[idx], None if t_all is None else t_all[idx])
                (grad_f,) = torch.autograd.grad((vec["const"] * f).sum(), xg)
            self._count(len(idx))
            spent[idx] += 1
            with torch.no_grad():
                delta = x - x0
                l2 = delta.flatten(1).pow(2).sum(1)
                loss = l2 + vec["const"] * f.detach()
                # Record the iterate the loss was computed on (before the step), as the reference code does.
                better = success & (l2 < best_l2[idx])
                if bool(better.any()):
                    rows = idx[better]
                    best_l2[rows] = l2[better]
                    best_adv[rows] = x[better]
                vec["hit"] |= success
                # Adam on w (torch.optim.Adam's update, with each sample's own step count).
                grad_w = (2 * delta + grad_f) * (1 - tw * tw) * 0.5
                t = (vec["it"] + 1).to(x.dtype)
                shape = (-1,) + (1,) * (x.dim() - 1)
                state["m"].mul_(b1).add_(grad_w, alpha=1 - b1)
                state["v"].mul_(b2).addcmul_(grad_w, grad_w, value=1 - b2)
                bc1 = (1 - b1 ** t).view(shape)
                bc2 = (1 - b2 ** t).view(shape)
                denom = (state["v"].sqrt() / bc2.sqrt()).add_(eps)
                state["w"] = w - (self.lr / bc1) * state["m"] / denom
                it = vec["it"]
                # Early abort: every check_every iterations, stop this c when the loss stopped falling.
                check = (it % check_every) == 0
                stalled = check & ~(loss <= 0.9999 * vec["prev"]) if self.abort_early else torch.zeros_like(check)
                vec["prev"] = torch.where(check, loss, vec["prev"])
                vec["it"] = it + 1
                end_c = stalled | (vec["it"] >= self.steps)
                if bool(end_c.any()):
                    self._end_search_step(end_c, vec, state, x_all, idx)
                    done = vec["step"] >= self.search_steps
                    if self.stop_when_bracketed:
                        done |= end_c & (vec["upper"] < 1e9)
                    if bool(done.any()):
                        keep = ~done
                        idx = idx[keep]
                        for k in fields:
                            state[k] = state[k][keep]
                        for k in vec:
                            vec[k] = vec[k][keep]
                        free = width - len(idx)
                        if free and len(queue):
                            start_rows(queue[:free])
                            queue = queue[free:]
        self._sample_passes = spent
        return best_adv

    def _end_search_step(self, end_c, vec, state, x_all, idx) -> None:
        """Binary-search update of c for the rows whose value of c ended; restart them at the clean image."""
        hit = vec["hit"]
        const = vec["const"]
        upper = torch.where(end_c & hit, torch.minimum(vec["upper"], const), vec["upper"])
        lower = torch.where(end_c & ~hit, torch.maximum(vec["lower"], const), vec["lower"])
        new_const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        vec["upper"], vec["lower"] = upper, lower
        vec["const"] = torch.where(end_c, new_const, const)
        vec["step"] = vec["step"] + end_c.long()
        vec["it"] = torch.where(end_c, torch.zeros_like(vec["it"]), vec["it"])
        vec["prev"] = torch.where(end_c, torch.full_like(vec["prev"], float("inf")), vec["prev"])
        vec["hit"] = hit & ~end_c
        if bool(end_c.any()):
            rows = end_c.nonzero().squeeze(1)
            x0 = x_all[idx[rows]]
            state["w"][rows] = torch.atanh((x0 * 2 - 1) * (1 - 1e-6))
            state["m"][rows] = 0
            state["v"][rows] = 0


ATTACKS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "cw": CarliniWagnerL2}


def build_attack(name: str, model: Model, **options) -> Attack:
    """Build a registered white-box attack by name (``fgsm``, ``pgd``, ``cw``) with its options."""
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"cw-l2": "cw", "carlini-wagner": "cw", "cwl2": "cw"}
    key = aliases.get(key, key)
    if key not in ATTACKS:
        raise CsgError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    return ATTACKS[key](model, **options)


def perturbation_norms(clean: torch.Tensor, adversarial: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample L2, L-infinity and L0 (pixels changed in any channel) norms of ``adversarial - clean``."""
    delta = (adversarial - clean).flatten(1)
    changed = (adversarial != clean).any(dim=1).flatten(1) if clean.dim() == 4 else delta != 0
    return {"l2": delta.norm(dim=1), "linf": delta.abs().amax(dim=1) if delta.shape[1] else delta.sum(1),
            "l0": changed.sum(1)}


__all__ = ["Attack", "FGSM", "PGD", "CarliniWagnerL2", "ATTACKS", "build_attack", "attack_objective",
           "is_adversarial", "model_device", "perturbation_norms"]
