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

from typing import Callable

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
    same shape, in [0, 1], on the device the images came from.
    """

    name = "attack"

    def __init__(self, model: Model, *, batch_size: int | None = None):
        if not callable(model):
            raise CsgError(f"the model of an attack must be callable (images -> logits), got {type(model).__name__}")
        self.model = model
        self.batch_size = batch_size

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
        out = []
        for start in range(0, len(images), bs):
            x = images[start:start + bs].to(device, torch.float32)
            y = labels[start:start + bs].to(device)
            t = None if targets is None else targets[start:start + bs].to(device)
            adv = self.perturb(x, y, t).detach()
            out.append(adv.to(home))
        return torch.cat(out) if out else images.clone()

    # shared helper
    def _gradient(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """``d L / d x`` of the summed per-sample objective (sum keeps each sample's gradient its own)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = attack_objective(self.model(x), labels, targets).sum()
            (grad,) = torch.autograd.grad(loss, x)
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
        if eps < 0:
            raise CsgError(f"FGSM eps must be >= 0, got {eps}")
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
        if eps < 0 or steps < 1:
            raise CsgError(f"PGD needs eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.0 / 255.0
        self.random_start = bool(random_start)
        self.generator = torch.Generator().manual_seed(int(seed))

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
    """Carlini-Wagner L2 attack (Carlini & Wagner 2017), batched, with a binary search over c.

    Change of variable ``x' = (tanh(w) + 1) / 2`` keeps ``x'`` in [0, 1]; Adam minimises

        ||x' - x||_2^2 + c * f(x'),
        f = max(max_{i != t} Z_i - Z_t, -kappa)      targeted (t the target)
        f = max(Z_y - max_{i != y} Z_i, -kappa)      untargeted (y the label)

    over ``steps`` iterations, for ``search_steps`` values of ``c`` per sample
    (start ``initial_const``; halve the bracket after a success, multiply by 10
    before the first one). Returns, per sample, the successful iterate with
    the smallest L2 distance, or the clean image where no iterate succeeded.
    """

    name = "cw"

    def __init__(self, model: Model, steps: int = 100, search_steps: int = 5, initial_const: float = 1e-2,
                 lr: float = 0.01, confidence: float = 0.0, **kw):
        super().__init__(model, **kw)
        if steps < 1 or search_steps < 1 or initial_const <= 0:
            raise CsgError("CW needs steps >= 1, search_steps >= 1 and initial_const > 0")
        self.steps = int(steps)
        self.search_steps = int(search_steps)
        self.initial_const = float(initial_const)
        self.lr = float(lr)
        self.confidence = float(confidence)

    def _margin(self, logits, labels, targets):
        """``f`` above, and whether the iterate succeeds (with the confidence margin)."""
        cls = labels if targets is None else targets
        real = logits.gather(1, cls[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(1)
        if targets is None:
            diff = real - others
        else:
            diff = others - real
        f = diff.clamp(min=-self.confidence)
        success = diff < -self.confidence if self.confidence > 0 else is_adversarial(logits, labels, targets)
        return f, success

    def perturb(self, images, labels, targets):
        n = len(images)
        dev = images.device
        x0 = images.detach()
        # atanh of the image scaled slightly inside (-1, 1) so w stays finite at 0 and 1.
        w0 = torch.atanh((x0 * 2 - 1) * (1 - 1e-6))
        const = torch.full((n,), self.initial_const, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), 1e10, device=dev)
        best_l2 = torch.full((n,), float("inf"), device=dev)
        best_adv = x0.clone()
        for _ in range(self.search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            round_success = torch.zeros(n, dtype=torch.bool, device=dev)
            for _ in range(self.steps):
                with torch.enable_grad():
                    x = (torch.tanh(w) + 1) / 2
                    logits = self.model(x)
                    l2 = (x - x0).flatten(1).pow(2).sum(1)
                    f, success = self._margin(logits, labels, targets)
                    loss = (l2 + const * f).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                # Record the iterate the loss was computed on (before the step), as the reference code does.
                with torch.no_grad():
                    better = success & (l2 < best_l2)
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best_adv[better] = x.detach()[better]
                    round_success |= success
                opt.step()
            # Binary search on c, per sample.
            upper = torch.where(round_success, torch.minimum(upper, const), upper)
            lower = torch.where(round_success, lower, torch.maximum(lower, const))
            bracketed = upper < 1e9
            const = torch.where(bracketed, (lower + upper) / 2, const * 10)
        return best_adv


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
