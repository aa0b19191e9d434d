"""Captum's attribution methods as map methods: ``csg localize --methods captum:NAME``.

Each is scored with the protocol of CAM, the other one-map-per-image method (METHOD.md section 5):

* the attribution is taken for the **true class** (the predicted class when no label is given), as CAM's
  class activation map is;
* input-space methods (Saliency, IntegratedGradients, GuidedBackprop, InputXGradient) give one value per
  pixel and colour channel; the map is the **sum over colour channels of the absolute attribution**
  (``M = sum_c |attr_c|``), so positive and negative evidence both count as "where the network looks"
  and a grey image and an RGB image are treated alike;
* LayerGradCam is taken at the run's feature layer (the layer CAM reads), ReLU'd as in Grad-CAM, and
  upsampled bilinearly to the image size, as CAM is;
* region: the image's own top ``quantile`` (0.3) of map values, CAM's rule.

Captum is an optional dependency (``pip install "csg[captum]"``): it is imported only when such a method
is asked for.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.errors import CsgError
from .maps import MapMethod, upsample
from .regions import ImageQuantile, RegionRule

PREFIX = "captum:"
#: the Captum classes csg scores; name -> whether it attributes at the feature layer (else at the input)
CAPTUM_METHODS = {"Saliency": False, "IntegratedGradients": False, "GuidedBackprop": False,
                  "InputXGradient": False, "LayerGradCam": True}


def is_captum_name(name: str) -> bool:
    return str(name).startswith(PREFIX)


def captum_names() -> list[str]:
    return [PREFIX + n for n in CAPTUM_METHODS]


def check_captum_name(name: str) -> str:
    """The Captum class name of ``captum:NAME``; an unknown one is one line listing the valid names."""
    attr = name[len(PREFIX):]
    if attr not in CAPTUM_METHODS:
        raise CsgError(f"unknown Captum method {name!r}; choose from {', '.join(captum_names())}")
    return attr


def import_captum_attr():
    try:
        import captum.attr as attr
    except ImportError:
        raise CsgError('the captum:* map methods need the captum package; install it with '
                       'pip install "csg[captum]"') from None
    return attr


class _Logits(nn.Module):
    """The STD path's logits as a module: Captum calls it, and GuidedBackprop finds the model's ReLUs in it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.logits(images)


class CaptumMap(MapMethod):
    """One Captum attribution per image for the true (else predicted) class; see the module's rule."""

    per_filter = False
    select_ap = 30

    def __init__(self, attribution: str, quantile: float = 0.3, n_steps: int = 50):
        self.attribution = check_captum_name(PREFIX + attribution) if not is_captum_name(attribution) \
            else check_captum_name(attribution)
        self.name = PREFIX + self.attribution
        self.quantile = float(quantile)
        self.n_steps = int(n_steps)
        self._attr = import_captum_attr()  # fails at build time, before any image is loaded

    def _explainer(self, model):
        forward = _Logits(model)
        cls = getattr(self._attr, self.attribution)
        if CAPTUM_METHODS[self.attribution]:
            return cls(forward, model._feature_module if model.feature_layer else model.backbone)
        return cls(forward)

    def compute(self, model, images, labels=None, filters=None):
        with torch.no_grad():
            target = model.logits(images).argmax(dim=1) if labels is None else labels.to(images.device)
        x = images.detach().float().requires_grad_(True)  # a leaf of our own: Captum then leaves it as it is
        explainer = self._explainer(model)
        with torch.enable_grad():
            if self.attribution == "IntegratedGradients":
                # baseline: the black image (inputs live in [0, 1]); the path's steps in batches of N images
                attr = explainer.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=self.n_steps,
                                           internal_batch_size=x.shape[0])
            elif self.attribution == "LayerGradCam":
                attr = explainer.attribute(x, target=target, relu_attributions=True)
            elif self.attribution == "Saliency":
                attr = explainer.attribute(x, target=target, abs=True)
            else:
                attr = explainer.attribute(x, target=target)
        attr = attr.detach().float()
        if CAPTUM_METHODS[self.attribution]:
            return upsample(attr[:, 0], images.shape[-2:])  # N x 1 x h x w: one Grad-CAM channel
        return attr.abs().sum(dim=1)  # N x H x W: abs-sum over colour channels

    def region_rule(self) -> RegionRule:
        return ImageQuantile(self.quantile)

    def describe(self) -> dict:
        d = {"method": self.name, "quantile": self.quantile, "target": "true class",
             "reduction": "upsampled Grad-CAM" if CAPTUM_METHODS[self.attribution] else "abs-sum over channels"}
        if self.attribution == "IntegratedGradients":
            d.update(n_steps=self.n_steps, baseline="zeros")
        return d
