"""One image explained: the prediction, the filters that gave most to it, their gate classes and maps.

For the predicted class ``c`` the logit is ``z_c = sum_k W[c, k] a_k + b_c`` with ``a_k = mean_hw A_k``,
so filter k's contribution is ``W[c, k] * a_k``. The ``top`` filters by contribution are reported with
their gate classes (``G[c', k] > 0.5``, CSG runs), their ActivMap (``A_k`` upsampled) and their GradMap
(``d a_k / d x``, normalised and blurred, see :class:`csg.localization.GradMap`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import CsgError
from ..localization.maps import ActivMap, GradMap
from ..core.plotting import pyplot, save_figure


@dataclass
class FilterContribution:
    filter: int
    contribution: float  # W[c, k] * a_k
    activation: float  # a_k = mean_hw A_k
    weight: float  # W[c, k]
    gate_classes: list[str] | None = None  # classes c' with G[c', k] > 0.5 (None without a gate)


@dataclass
class Explanation:
    predicted: int
    predicted_name: str
    probability: float
    probabilities: list[float]
    logit: float
    bias: float
    filters: list[FilterContribution]
    activ_maps: np.ndarray = field(repr=False)  # top x H x W
    grad_maps: np.ndarray = field(repr=False)  # top x H x W
    class_names: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready (maps left out; they are in the figure)."""
        return {"predicted": self.predicted, "predicted_name": self.predicted_name,
                "probability": self.probability, "logit": self.logit, "bias": self.bias,
                "probabilities": {n: p for n, p in zip(self.class_names, self.probabilities)},
                "filters": [asdict(f) for f in self.filters],
                "rest_contribution": self.logit - self.bias - sum(f.contribution for f in self.filters)}


def _gate_matrix(model, gate) -> np.ndarray | None:
    if gate is None:
        g = getattr(model, "gate", None)
        if g is None:
            return None
        gate = g.weight if hasattr(g, "weight") else g
    gate = gate.detach().cpu().numpy() if torch.is_tensor(gate) else np.asarray(gate)
    if gate.shape != (model.num_classes, model.num_filters):
        raise CsgError(f"gate is {gate.shape[0]} x {gate.shape[1]} but the model has {model.num_classes} classes "
                       f"and {model.num_filters} filters")
    return gate


def explain(model, image: torch.Tensor, gate=None, top: int = 5, class_names: Sequence[str] | None = None,
            sigma: float = 5.0) -> Explanation:
    """Explain the model's prediction for one image (``C x H x W`` or ``1 x C x H x W``, values in [0, 1]).

    ``gate``: a ``C x K`` array, or ``None`` to use ``model.gate`` when the model has one.
    """
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise CsgError(f"explain takes one image (C x H x W), got shape {tuple(image.shape)}")
    device = next(model.parameters()).device
    image = image.to(device=device, dtype=torch.float32)
    model.eval()
    c_names = list(class_names) if class_names is not None else [str(i) for i in range(model.num_classes)]
    with torch.no_grad():
        out = model(image)
    logits = out.logits[0]
    probs = torch.softmax(logits.float(), dim=0)
    c = int(logits.argmax())
    w = model.head.weight[c].detach().float()
    b = float(model.head.bias[c].detach()) if model.head.bias is not None else 0.0
    a = out.pooled[0].detach().float()
    contrib = w * a
    top = max(1, min(int(top), model.num_filters))
    order = torch.argsort(contrib, descending=True)[:top]
    g = _gate_matrix(model, gate)
    filters = []
    for k in order.tolist():  # the `top` rows of the answer
        gc = None if g is None else [c_names[i] for i in np.nonzero(g[:, k] > 0.5)[0].tolist()]
        filters.append(FilterContribution(filter=int(k), contribution=float(contrib[k]), activation=float(a[k]),
                                          weight=float(w[k]), gate_classes=gc))
    sel = order.tolist()
    activ = ActivMap()(model, image, filters=sel)[0].cpu().numpy()
    grad = GradMap(sigma=sigma)(model, image, filters=sel)[0].detach().cpu().numpy()
    return Explanation(predicted=c, predicted_name=c_names[c], probability=float(probs[c]),
                       probabilities=probs.tolist(), logit=float(logits[c]), bias=b, filters=filters,
                       activ_maps=activ, grad_maps=grad, class_names=c_names)


def explanation_figure(expl: Explanation, image: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """One PNG: the image and a bar chart of the contributions, then per top filter its ActivMap and GradMap."""
    plt = pyplot()

    from ..localization.figures import to_display

    img = image[0] if image.dim() == 4 else image
    disp = to_display(img.detach().cpu().numpy())
    cmap = "gray" if disp.ndim == 2 else None
    n = len(expl.filters)
    fig, axes = plt.subplots(2, n + 1, figsize=(2.2 * (n + 1), 4.8), squeeze=False)
    axes[0, 0].imshow(disp, cmap=cmap, vmin=0, vmax=1)
    axes[0, 0].set_title(f"predicted: {expl.predicted_name}\np = {expl.probability:.2f}", fontsize=8)
    ax = axes[1, 0]
    ks = [f"f{f.filter}" for f in expl.filters]
    ax.barh(range(n)[::-1], [f.contribution for f in expl.filters], color="tab:blue")
    ax.set_yticks(range(n)[::-1])
    ax.set_yticklabels(ks, fontsize=7)
    ax.set_xlabel("W[c,k] * a_k", fontsize=7)
    ax.tick_params(axis="x", labelsize=6)
    ax.set_title("contribution to the logit", fontsize=8)
    for j, f in enumerate(expl.filters):
        gates = "" if f.gate_classes is None else "\ngate: " + (", ".join(f.gate_classes[:3]) or "-") + \
            ("..." if len(f.gate_classes) > 3 else "")
        a0, a1 = axes[0, j + 1], axes[1, j + 1]
        a0.imshow(disp, cmap=cmap, vmin=0, vmax=1)
        a0.imshow(expl.activ_maps[j], cmap="jet", alpha=0.5)
        a0.set_title(f"filter {f.filter}: {f.contribution:+.3f}{gates}", fontsize=7)
        a1.imshow(disp, cmap=cmap, vmin=0, vmax=1)
        a1.imshow(expl.grad_maps[j], cmap="jet", alpha=0.5)
        if j == 0:
            a0.set_ylabel("ActivMap", fontsize=8)
            a1.set_ylabel("GradMap", fontsize=8)
    for a in axes.flat:
        if a is not axes[1, 0]:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(title or f"why {expl.predicted_name}: the {n} filters that gave most", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, path, tight=False)


def load_image(path: str | Path, in_channels: int, size: Sequence[int]) -> torch.Tensor:
    """Read an image with Pillow, convert to ``in_channels`` (1: grey, 3: RGB), resize to ``size`` = (H, W)
    bilinearly; a float tensor ``C x H x W`` in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_channels == 1 else "RGB")
            h, w = int(size[0]), int(size[1])
            im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise CsgError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CsgError(f"cannot read image {path} ({type(exc).__name__}); give a PNG or JPEG file") from None
    if in_channels not in (1, 3):
        raise CsgError(f"the run takes {in_channels}-channel images; explain reads grey (1) or RGB (3) images")
    t = torch.from_numpy(arr.copy()).float() / 255.0
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


def explain_run(run, images, top: int = 5, out_dir: str | Path | None = None,
                device="cpu", sigma: float = 5.0) -> list[dict]:
    """``csg explain``: explain each image with the run's model; writes ``NAME.png`` and ``NAME.json`` per image
    into ``out_dir`` (default ``RUN/explain``). Returns the JSON records.

    ``images``: image files (paths), or your own images as a torch ``Dataset`` of ``(image, label)``, a
    ``DataLoader`` or a csg dataset (every item is explained; its files are named ``item-I``)."""
    from ..core.io import atomic_write_json

    if not isinstance(images, (list, tuple)) or not all(isinstance(p, (str, Path)) for p in images):
        return _explain_dataset(run, images, top=top, out_dir=out_dir, device=device, sigma=sigma)
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:  # before loading the model: a typo should fail at once
        raise CsgError(f"image {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                                 else ""))
    cfg = run.config
    for key in ("in_channels", "image_size"):
        if key not in cfg:
            raise CsgError(f"{run.path}/config.json has no {key!r}; re-train with this version of csg")
    model = run.load_model(device)
    classes = cfg.get("classes")
    gate = run.gate()
    out = Path(out_dir) if out_dir is not None else run.path / "explain"
    records = []
    used: dict[str, int] = {}
    for path in images:  # one figure per image the user named
        x = load_image(path, int(cfg["in_channels"]), cfg["image_size"])
        expl = explain(model, x, gate=gate, top=top, class_names=classes, sigma=sigma)
        stem = Path(path).stem
        used[stem] = used.get(stem, 0) + 1
        if used[stem] > 1:
            stem = f"{stem}-{used[stem]}"
        png = explanation_figure(expl, x, out / f"{stem}.png", title=f"{Path(path).name}: predicted "
                                 f"{expl.predicted_name} ({expl.probability:.2f})")
        record = {"image": str(path), **expl.to_dict(), "figure": str(png)}
        atomic_write_json(out / f"{stem}.json", record)
        records.append(record)
    return records


def _explain_dataset(run, given, *, top, out_dir, device, sigma) -> list[dict]:
    """``explain_run`` on a Dataset / DataLoader / csg dataset: one figure and record per item, ``item-I``."""
    from ..core.io import atomic_write_json

    dataset = run.dataset(given, "explain")
    cfg = run.config
    model = run.load_model(device)
    gate = run.gate()
    out = Path(out_dir) if out_dir is not None else run.path / "explain"
    records = []
    for i in range(len(dataset)):
        x = dataset.images[i].to(torch.float32).div(255.0)
        expl = explain(model, x, gate=gate, top=top, class_names=cfg.get("classes"), sigma=sigma)
        png = explanation_figure(expl, x, out / f"item-{i}.png", title=f"item {i} (label "
                                 f"{dataset.classes[int(dataset.labels[i])]}): predicted {expl.predicted_name} "
                                 f"({expl.probability:.2f})")
        record = {"image": f"item {i}", "label": int(dataset.labels[i]), **expl.to_dict(), "figure": str(png)}
        atomic_write_json(out / f"item-{i}.json", record)
        records.append(record)
    return records
