"""Figures of the adversarial experiment: example perturbations and detector error curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.plotting import pyplot, save_figure


def _to_hwc(image) -> np.ndarray:
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    arr = np.transpose(arr, (1, 2, 0))
    return arr[..., 0] if arr.shape[2] == 1 else arr


def plot_examples(examples: dict[str, dict], path: str | Path, *, classes: list[str] | None = None) -> Path:
    """One row per attack: clean image, adversarial image, and ``delta`` amplified to the full range.

    The difference is shown as ``0.5 + delta / (2 max|delta|)`` (grey = unchanged),
    averaged over colour channels with a diverging colour map.
    """
    plt = pyplot()

    names = list(examples)
    fig, axes = plt.subplots(len(names), 3, figsize=(7.5, 2.6 * len(names)), squeeze=False)

    def cname(i):
        return classes[i] if classes and 0 <= i < len(classes) else str(i)

    for row, name in enumerate(names):
        ex = examples[name]
        clean, adv = _to_hwc(ex["clean"]), _to_hwc(ex["adversarial"])
        delta = adv - clean
        if delta.ndim == 3:
            delta = delta.mean(axis=2)
        amp = float(np.abs(delta).max())
        grey = dict(cmap="gray", vmin=0, vmax=1) if clean.ndim == 2 else {}
        axes[row, 0].imshow(np.clip(clean, 0, 1), **grey)
        axes[row, 0].set_title(f"{name}: clean ({cname(ex['label'])})", fontsize=9)
        axes[row, 1].imshow(np.clip(adv, 0, 1), **grey)
        target = f", target {cname(ex['target'])}" if ex.get("target") is not None else ""
        failed = "" if ex.get("success", True) else " (failed)"
        axes[row, 1].set_title(f"adversarial -> {cname(ex['prediction'])}{target}{failed}", fontsize=9)
        im = axes[row, 2].imshow(delta / (amp if amp > 0 else 1.0), cmap="seismic", vmin=-1, vmax=1)
        axes[row, 2].set_title(f"difference x{(1 / amp if amp > 0 else 1):.0f} (max |d| {amp:.3f})", fontsize=9)
        fig.colorbar(im, ax=axes[row, 2], fraction=0.046, pad=0.04)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Adversarial examples per attack", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def plot_detection(detection: dict[str, dict], path: str | Path, *, title: str = "Detector error") -> Path:
    """Error rate (%) of the random-forest detector against training images per class, one line per attack."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, per_size in detection.items():
        if not per_size:
            continue
        sizes = sorted(per_size, key=lambda k: int(k))
        xs = [int(s) for s in sizes]
        mean = np.array([per_size[s]["mean"] for s in sizes]) * 100
        std = np.array([per_size[s]["std"] for s in sizes]) * 100
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=name.upper())
    all_sizes = sorted({int(k) for per_size in detection.values() for k in per_size})
    if all_sizes:
        ax.set_xticks(all_sizes)
        if len(all_sizes) == 1:
            ax.set_xlim(all_sizes[0] * 0.5, all_sizes[0] * 1.5)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("detector error rate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, Path(path))



def render_figures(result, folder: str | Path, *, title: str = "") -> list[dict]:
    """Draw the figures of an :class:`AdversarialResult` into ``folder``; returns ``[{path, caption}]``.

    Paths are relative to the run directory (``figures/...``) when ``folder``
    is the run's figures folder, as the report expects.
    """
    folder = Path(folder)
    out = []
    if result.examples:
        plot_examples(result.examples, folder / "adversarial_examples.png", classes=result.classes)
        out.append({"path": f"{folder.name}/adversarial_examples.png",
                    "caption": "Example per attack: clean image, adversarial image and the difference amplified "
                               "to the full colour range."})
    detection = result.summary.get("detection", {})
    if any(detection.values()):
        plot_detection(detection, folder / "adversarial_detection.png",
                       title=f"Detector error ({title})" if title else "Detector error")
        out.append({"path": f"{folder.name}/adversarial_detection.png",
                    "caption": "Random-forest detector error rate against training images per class, mean and "
                               "std over repeats, per attack."})
    return out


__all__ = ["plot_examples", "plot_detection", "render_figures"]
