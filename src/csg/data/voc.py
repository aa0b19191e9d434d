"""PASCAL VOC 2010 animal objects with segmentation masks (METHOD.md section 5, reference code).

``prepare_voc`` turns a VOC folder into ``voc_animals.npz``: every annotated instance of bird, cat, dog,
cow, horse or sheep that has a segmentation, as a square crop of side ``max(w, h)`` centred on its box
(zero-padded outside the image), resized to ``size x size`` (image: Pillow bilinear, antialiased when
shrinking; mask: nearest). The instance's mask comes from ``SegmentationObject/<id>.png``, a palette
image whose pixel value is the instance index (1-based, in the order of the objects in the XML; 255 is
the "void" border, 0 background). Objects are split 70/30 by image id with a seeded permutation, so all
objects of one image land in the same split.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CsgError
from .clutter import atomic_savez

NAME = "voc-animals"
CLASSES = ("bird", "cat", "dog", "cow", "horse", "sheep")
FILE = "voc_animals.npz"
TRAIN_SHARE = 0.7
# the backbones fine-tuned on VOC start from ImageNet weights, so they expect ImageNet statistics
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _find_root(voc_root: Path) -> Path:
    """Accept the VOC2010 folder itself, or a parent holding ``VOCdevkit/VOC2010`` or ``VOC2010``."""
    for cand in (voc_root, voc_root / "VOC2010", voc_root / "VOCdevkit" / "VOC2010"):
        if (cand / "Annotations").is_dir() and (cand / "SegmentationObject").is_dir():
            return cand
    raise CsgError(f"{voc_root} is not a PASCAL VOC folder (no Annotations/ and SegmentationObject/); "
                   "pass the VOC2010 folder (or the VOCdevkit folder above it)")


def _image_ids(root: Path) -> list[str]:
    listing = root / "ImageSets" / "Segmentation" / "trainval.txt"
    if listing.is_file():
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    else:  # no listing: every image that has an instance segmentation
        ids = sorted(p.stem for p in (root / "SegmentationObject").glob("*.png"))
    return ids


def _objects(xml_path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, FileNotFoundError) as exc:
        raise CsgError(f"cannot read annotation {xml_path} ({type(exc).__name__}); is the VOC folder complete?") from None
    out = []
    for obj in tree.getroot().findall("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        coords = tuple(float(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")) if box is not None else None
        out.append((name, coords))
    return out


def split_by_image(image_ids: np.ndarray, seed: int = 0, train_share: float = TRAIN_SHARE) -> np.ndarray:
    """0 (train) or 1 (test) per object: a seeded permutation of the sorted unique image ids, the first
    ``round(train_share * n_ids)`` ids train."""
    unique = np.unique(image_ids)
    perm = np.random.default_rng(seed).permutation(unique.size)
    n_train = int(round(train_share * unique.size))
    train_ids = set(unique[perm[:n_train]].tolist())
    return np.array([0 if i in train_ids else 1 for i in image_ids.tolist()], dtype=np.uint8)


def crop_object(image, mask: np.ndarray, box, size: int):
    """Square crop of side ``max(w, h)`` centred on ``box`` (VOC 1-based pixel corners), zero-padded
    outside the image, resized to ``size``: ``(uint8 3 x size x size, bool size x size)``."""
    from PIL import Image

    xmin, ymin, xmax, ymax = box
    x0, y0 = xmin - 1.0, ymin - 1.0  # 0-based, inclusive corners
    w, h = xmax - xmin + 1.0, ymax - ymin + 1.0
    side = max(w, h)
    cx, cy = x0 + w / 2.0, y0 + h / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    side_px = int(round(side))
    rect = (left, top, left + side_px, top + side_px)
    # Image.crop fills the part outside the image with zeros
    img = image.convert("RGB").crop(rect).resize((size, size), Image.BILINEAR)
    m = Image.fromarray(mask.astype(np.uint8) * 255).crop(rect).resize((size, size), Image.NEAREST)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), np.asarray(m) > 127


def prepare_voc(voc_root, out_dir, seed: int = 0, size: int = 128, progress: bool = False) -> Path:
    """Write ``out_dir/voc_animals.npz`` (atomically): ``images`` uint8 N x 3 x size x size, ``masks`` bool
    N x size x size, ``labels`` int64 (index into ``classes``), ``split`` uint8 (0 train, 1 test),
    ``image_ids``, ``instance`` (1-based index in the image), ``boxes``, ``classes``, ``seed``."""
    from PIL import Image

    root = _find_root(Path(voc_root).expanduser())
    ids = _image_ids(root)
    images, masks, labels, image_ids, instances, boxes = [], [], [], [], [], []
    it = ids
    if progress:
        from tqdm import tqdm

        it = tqdm(ids, desc="VOC objects", leave=False)
    for image_id in it:  # one file per image: I/O bound, not a tensor hot path
        seg_path = root / "SegmentationObject" / f"{image_id}.png"
        if not seg_path.is_file():
            continue
        objects = _objects(root / "Annotations" / f"{image_id}.xml")
        wanted = [(i, name, box) for i, (name, box) in enumerate(objects) if name in CLASSES and box is not None]
        if not wanted:
            continue
        seg = np.asarray(Image.open(seg_path))  # palette image: the raw values are instance indices
        jpg = root / "JPEGImages" / f"{image_id}.jpg"
        try:
            photo = Image.open(jpg)
            photo.load()
        except FileNotFoundError:
            raise CsgError(f"{jpg} is missing; the VOC folder is incomplete") from None
        for i, name, box in wanted:
            inst = seg == (i + 1)
            if not inst.any():  # annotated but not segmented
                continue
            img, m = crop_object(photo, inst, box, size)
            images.append(img)
            masks.append(m)
            labels.append(CLASSES.index(name))
            image_ids.append(image_id)
            instances.append(i + 1)
            boxes.append(box)
    if not images:
        raise CsgError(f"no segmented {', '.join(CLASSES)} objects found under {root}")
    image_ids_arr = np.array(image_ids)
    out = Path(out_dir).expanduser() / FILE
    atomic_savez(out, images=np.stack(images), masks=np.stack(masks), labels=np.array(labels, dtype=np.int64),
                 split=split_by_image(image_ids_arr, seed), image_ids=image_ids_arr,
                 instance=np.array(instances, dtype=np.int64), boxes=np.array(boxes, dtype=np.float64),
                 classes=np.array(CLASSES), seed=np.array(seed))
    return out


def load_voc_objects(split: str, data_dir=None, seed: int = 0):
    """The prepared VOC animal objects of ``split`` (``train``/``test``) as an ``ImageDataset`` with masks.

    ``data_dir`` is the ``--out`` folder of ``csg prepare voc``. A ``seed`` other than the one used at
    preparation re-draws the 70/30 split by image id with that seed.
    """
    from .dataset import ImageDataset

    if split not in ("train", "test"):
        raise CsgError(f"unknown split {split!r}; choose train or test")
    hint = "run `csg prepare voc PATH --out DIR` first and pass --data-dir DIR"
    if data_dir is None:
        env = os.environ.get("CSG_DATA_DIR", "").strip()
        if not env:
            raise CsgError(f"no data folder for {NAME}; {hint}")
        data_dir = env
    path = Path(data_dir).expanduser() / FILE
    if not path.is_file():
        raise CsgError(f"{path} does not exist; {hint}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CsgError(f"{path} is corrupt ({type(exc).__name__}); {hint}") from None
    part = data["split"] if int(data["seed"]) == int(seed) else split_by_image(data["image_ids"], seed)
    keep = part == (0 if split == "train" else 1)
    return ImageDataset(name=NAME, images=torch.from_numpy(data["images"][keep]),
                        labels=torch.from_numpy(data["labels"][keep]), classes=[str(c) for c in data["classes"]],
                        masks=torch.from_numpy(data["masks"][keep]), mean=IMAGENET_MEAN, std=IMAGENET_STD)
