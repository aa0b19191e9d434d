"""Report sections for ``localization.json`` (``csg localize``, schema ``csg.localization/2``) and
``adversarial.json`` (``csg attack``, schema ``csg.adversarial/2``).

The files are read by their schema: a file of another version gets a note with the command that
rewrites it, never a guess at its keys. The paper's published figures (METHOD.md sections 5 and 6) sit
beside the measured ones as italic reference rows.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import html as H

#: (key in localization.json, label) in the paper's order
LOC_METHODS = (("gradmap", "GradMap"), ("activmap", "ActivMap"), ("cam", "CAM"))
LOC_METRICS = (("avg_iou", "Avg-IoU"), ("ap20", "AP20"), ("ap30", "AP30"))
SCHEMAS = {"localization.json": ("csg.localization/2", "localize"), "adversarial.json": ("csg.adversarial/2", "attack"),
           "graph.json": ("csg.graph/1", "graph")}

#: METHOD.md section 5: PASCAL VOC, ResNet-152, totals (CSG, STD); metrics the paper does not give are absent
PAPER_LOCALIZATION_VOC = {
    "csg": {"gradmap": {"avg_iou": 0.3035, "ap20": 0.8165}, "activmap": {"avg_iou": 0.4289, "ap30": 0.8251},
            "cam": {"avg_iou": 0.3694, "ap30": 0.7300}},
    "std": {"gradmap": {"avg_iou": 0.2606, "ap20": 0.7029}, "activmap": {"avg_iou": 0.3602, "ap30": 0.6759},
            "cam": {"avg_iou": 0.3483, "ap30": 0.6853}},
}
#: METHOD.md section 6: CIFAR-10, ResNet-20, detector error in % at 500 / 1000 / 2000 training images per class
PAPER_DETECTION_CIFAR10 = {
    "std": {"fgsm": (4.76, 4.60, 4.15), "pgd": (5.03, 6.20, 4.08), "cw": (7.33, 6.76, 6.46)},
    "csg": {"fgsm": (4.50, 3.94, 3.84), "pgd": (4.52, 3.95, 3.25), "cw": (7.03, 6.18, 5.87)},
}
PAPER_DETECTION_SIZES = ("500", "1000", "2000")
#: Table 4: black-box success rate (%) and clean accuracy (%)
PAPER_BLACKBOX_CIFAR10 = {"std": {"one-pixel": 14.0, "local-search": 15.0, "clean_accuracy": 88.03},
                          "csg": {"one-pixel": 2.0, "local-search": 2.0, "clean_accuracy": 88.85}}


def num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def loc_total(data: dict | None, method: str) -> dict[str, float | None]:
    """``{"avg_iou", "ap20", "ap30"}`` of one method's ``total`` in localization.json."""
    block = data.get(method) if isinstance(data, dict) else None
    total = block.get("total") if isinstance(block, dict) else None
    return {m: num(total.get(m)) for m, _ in LOC_METRICS} if isinstance(total, dict) else {}


def schema_note(name: str, data: dict, run_path) -> str | None:
    """A note when ``data`` (the content of ``name``) is not of the schema this csg reads, else None."""
    schema, command = SCHEMAS[name]
    if data.get("schema") == schema:
        return None
    return (f'<p class="note">{H.esc(name)} has schema {H.esc(repr(data.get("schema")))}, this csg reads '
            f"{H.esc(schema)}: run <code>csg {command} {H.esc(run_path)}</code> again.</p>")


def pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def pct_pm(mean: float | None, spread: float | None, digits: int = 2) -> str:
    if mean is None:
        return "–"
    return pct(mean, digits) + ("" if spread is None else f" ± {pct(spread, digits)}")


def figure_items(run_path: Path, page_dir: Path, data: dict) -> list[str]:
    items = []
    for fig in data.get("figures", []) or []:
        if isinstance(fig, str):
            fig = {"path": fig}
        if isinstance(fig, dict) and isinstance(fig.get("path"), str):
            items.append(H.figure(run_path / fig["path"], page_dir, str(fig.get("caption", fig["path"]))))
    return items


def _settings_text(settings: Any) -> str:
    if not isinstance(settings, dict):
        return "–"
    return ", ".join(f"{k}={H.fmt(v, 3)}" for k, v in settings.items() if not isinstance(v, (dict, list)))


# ------------------------------------------------------------------------------------------------
# localization
# ------------------------------------------------------------------------------------------------
def localization_section(run_path: Path, page_dir: Path, data: dict, method: str | None = None) -> str:
    """Totals (with the paper's VOC totals beside), per-class table and the overlay figures."""
    present = [(k, lab) for k, lab in LOC_METHODS if isinstance(data.get(k), dict)]
    parts = []
    what = [f"{data['num_images']} images" if num(data.get("num_images")) is not None else None,
            f"of {H.esc(data['data'])}" if isinstance(data.get("data"), str) else None,
            f"({H.esc(data['split'])} split)" if isinstance(data.get("split"), str) else None]
    what = " ".join(w for w in what if w)
    parts.append('<p class="note">Regions scored against object masks (METHOD.md section 5): IoU = |S ∩ S\'| / '
                 "|S ∪ S'|, APn = share of images with IoU ≥ n%. GradMap and ActivMap: per filter at its class "
                 "c* = argmax<sub>c</sub> APn, totals = mean over filters; CAM: per image. "
                 + (f"Scored on {what}. " if what else "")
                 + "Italic rows: the paper's PASCAL VOC / ResNet-152 totals (Liang et al. 2020), a different "
                 "data set and model, for scale only.</p>")
    rows, classes = [], []
    for key, label in present:
        block = data[key]
        t = loc_total(data, key)
        chosen = f"AP{block['select_ap']}" if num(block.get("select_ap")) is not None else (
            "per image" if key == "cam" else "–")
        rows.append([label, H.fmt(t.get("avg_iou")), H.fmt(t.get("ap20")), H.fmt(t.get("ap30")), H.esc(chosen),
                     H.esc(_settings_text(block.get("settings")))])
        classes.append("")
    for which in ("csg", "std"):
        ref = PAPER_LOCALIZATION_VOC[which]
        for key, label in present:
            r = ref[key]
            rows.append([f"{label} ({which.upper()}, paper VOC)", H.fmt(r.get("avg_iou")), H.fmt(r.get("ap20")),
                         H.fmt(r.get("ap30")), "–", "ResNet-152"])
            classes.append("ref")
    if rows:
        parts.append("<h3>Totals</h3>" + H.table(["method", "Avg-IoU", "AP20", "AP30", "filter class by",
                                                  "settings"], rows, row_classes=classes, raw=True))
    # per class: one row per class, three columns per method (+ the number of filters of per-filter methods)
    names: list[str] = []
    for key, _ in present:
        pc = data[key].get("per_class")
        if isinstance(pc, dict):
            names += [n for n in pc if n not in names]
    if names:
        headers = ["class"]
        for key, label in present:
            headers += [f"{label} {m}" for _, m in LOC_METRICS]
            if key != "cam":
                headers.append(f"{label} filters")
        prow = []
        for name in names:
            row = [H.esc(name)]
            for key, _ in present:
                cell = (data[key].get("per_class") or {}).get(name)
                cell = cell if isinstance(cell, dict) else {}
                row += [H.fmt(num(cell.get(m))) for m, _ in LOC_METRICS]
                if key != "cam":
                    row.append(H.fmt(cell.get("num_filters")) if isinstance(cell.get("num_filters"), int) else "–")
            prow.append(row)
        parts.append("<h3>Per class</h3>" + '<p class="note">GradMap / ActivMap: mean over the filters whose class '
                     "is that class (a class no filter picked shows –); CAM: mean over the class's images.</p>"
                     + H.table(headers, prow, raw=True))
    if not present:
        parts.append('<p class="note">localization.json has no gradmap / activmap / cam entry.</p>')
    parts.append(H.grid(figure_items(run_path, page_dir, data), wide=True))
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# adversarial
# ------------------------------------------------------------------------------------------------
def _size_key(s: str):
    try:
        return (0, int(s))
    except ValueError:
        return (1, s)


def detection_cells(data: dict | None) -> dict[str, dict[str, tuple[float, float | None]]]:
    """``{attack: {train size: (mean error, spread over repeats)}}`` from adversarial.json's ``detection``."""
    det = data.get("detection") if isinstance(data, dict) else None
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    if not isinstance(det, dict):
        return out
    for attack, per_size in det.items():
        if not isinstance(per_size, dict):
            continue
        cells = {}
        for size, entry in per_size.items():
            if isinstance(entry, dict) and num(entry.get("mean")) is not None:
                cells[str(size)] = (num(entry["mean"]), num(entry.get("std")))
        out[str(attack)] = dict(sorted(cells.items(), key=lambda kv: _size_key(kv[0])))
    return out


def blackbox_rates(data: dict | None) -> dict[str, float | None]:
    """``{attack: success rate}`` from adversarial.json's ``blackbox``."""
    bb = data.get("blackbox") if isinstance(data, dict) else None
    if not isinstance(bb, dict):
        return {}
    return {str(k): num(v.get("success_rate")) for k, v in bb.items() if isinstance(v, dict)}


def adversarial_section(run_path: Path, page_dir: Path, data: dict, method: str | None = None) -> str:
    """Clean accuracy, detector error per attack and training size (mean ± spread over repeats), black-box
    success rates, notes and figures; the paper's CIFAR-10 figures beside."""
    parts = []
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    cards = [("clean accuracy", pct(num(data.get("clean_accuracy"))) + " %")]
    if num(data.get("feature_dim")) is not None:
        cards.append(("detector features", data["feature_dim"]))
    if "targeted" in settings:
        cards.append(("white-box targets", "seeded random class" if settings["targeted"] else "untargeted"))
    if num(data.get("seconds")) is not None:
        cards.append(("seconds", round(float(data["seconds"]), 1)))
    parts.append(H.cards(cards))
    det = detection_cells(data)
    success = data.get("attack_success") if isinstance(data.get("attack_success"), dict) else {}
    if det:
        # the paper's sizes too, so its rows read beside ours even when we measured at other sizes
        paper_sizes = set(PAPER_DETECTION_SIZES) if any(a in PAPER_DETECTION_CIFAR10["std"] for a in det) else set()
        sizes = sorted({s for cells in det.values() for s in cells} | paper_sizes, key=_size_key)
        headers = (["attack", "attack success %", "pairs (train / test)"]
                   + [f"error % at {s}/class" for s in sizes])
        rows, classes = [], []
        for attack, cells in det.items():
            s = success.get(attack) if isinstance(success.get(attack), dict) else {}
            pairs = (f"{s.get('train_pairs', '–')} / {s.get('test_pairs', '–')}" if s else "–")
            rows.append([H.esc(attack), pct(num(s.get("success_rate")), 1), pairs]
                        + [pct_pm(*cells[z]) if z in cells else "–" for z in sizes])
            classes.append("")
        for which in ("std", "csg"):
            for attack in det:
                ref = PAPER_DETECTION_CIFAR10[which].get(attack)
                if ref is None:
                    continue
                by_size = dict(zip(PAPER_DETECTION_SIZES, ref))
                rows.append([f"{H.esc(attack)} ({which.upper()}, paper)", "–", "–"]
                            + [f"{by_size[z]:.2f}" if z in by_size else "–" for z in sizes])
                classes.append("ref")
        parts.append("<h3>Detector error (Table 3 style)</h3>"
                     '<p class="note">A random forest on globally pooled features after every convolution block, '
                     "clean vs adversarial; error % as mean ± sample std over "
                     f"{H.esc(settings.get('repeats', 'the'))} seeded repeats, per training images per class. "
                     "Italic rows: the paper's CIFAR-10 / ResNet-20 errors.</p>"
                     + H.table(headers, rows, row_classes=classes, raw=True))
    bb = data.get("blackbox") if isinstance(data.get("blackbox"), dict) else {}
    if bb:
        rows, classes = [], []
        for attack, entry in bb.items():
            if not isinstance(entry, dict):
                continue
            e = entry
            rows.append([H.esc(attack), pct(num(e.get("success_rate")), 1), H.fmt(e.get("attempted")),
                         H.fmt(e.get("succeeded")), H.fmt(num(e.get("mean_queries")), 1),
                         H.fmt(num(e.get("mean_l0_successful")), 2)])
            classes.append("")
        for which in ("std", "csg"):
            for attack in bb:
                ref = PAPER_BLACKBOX_CIFAR10[which].get(attack)
                if ref is not None:
                    rows.append([f"{H.esc(attack)} ({which.upper()}, paper)", f"{ref:.1f}", "–", "–", "–", "–"])
                    classes.append("ref")
        parts.append("<h3>Black-box attacks (Table 4 style)</h3>"
                     '<p class="note">Success rate over correctly classified test images, using predicted '
                     "probabilities only. The paper's clean accuracy: 88.03% (STD) and 88.85% (CSG).</p>"
                     + H.table(["attack", "success %", "attacked", "fooled", "mean queries", "mean L0 (fooled)"],
                               rows, row_classes=classes, raw=True))
    if not det and not bb:
        parts.append('<p class="note">adversarial.json has no detection or black-box results.</p>')
    notes = data.get("notes")
    if isinstance(notes, list) and notes:
        parts.append("<ul>" + "".join(f"<li class=\"note\">{H.esc(n)}</li>" for n in notes) + "</ul>")
    parts.append(H.grid(figure_items(run_path, page_dir, data), wide=True))
    return "".join(parts)


__all__ = ["localization_section", "adversarial_section", "detection_cells", "blackbox_rates", "loc_total",
           "PAPER_LOCALIZATION_VOC", "PAPER_DETECTION_CIFAR10", "PAPER_BLACKBOX_CIFAR10", "LOC_METHODS",
           "LOC_METRICS"]
