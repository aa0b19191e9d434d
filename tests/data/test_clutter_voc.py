"""Datasets with object masks: Fashion-MNIST in clutter, PASCAL VOC animal objects, `csg prepare voc`."""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from csg.data.clutter import load_clutter, make_clutter
from csg.data.voc import CLASSES, load_voc_objects, prepare_voc
from csg.core.errors import CsgError


def _objects(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.int64)
    x[:, :3] = 0  # a black frame, as Fashion-MNIST has, and zero pixels inside
    x[:, :, :3] = 0
    x[x < 40] = 0
    return x.to(torch.uint8)


def test_clutter_deterministic_and_seeded():
    obj = _objects()
    a, b = make_clutter(obj, seed=3), make_clutter(obj, seed=3)
    for k in a:
        assert torch.equal(a[k], b[k])
    c = make_clutter(obj, seed=4)
    assert not torch.equal(a["images"], c["images"])


def test_clutter_masks_are_exactly_the_pasted_object():
    obj = _objects()
    out = make_clutter(obj, seed=1, canvas=64, fragments=5, fragment_size=8, dim=(0.3, 0.5))
    images, masks = out["images"], out["masks"]
    assert images.shape == (40, 64, 64) and masks.dtype == torch.bool
    assert (out["src"] != torch.arange(40)[:, None]).all()  # fragments come from other images
    for i in range(obj.shape[0]):  # the reference, one image at a time
        s, y, x = int(out["size"][i]), int(out["y"][i]), int(out["x"][i])
        r = F.interpolate(obj[i][None, None].float(), size=(s, s), mode="bilinear", antialias=True,
                          align_corners=False)[0, 0].clamp(0, 255).round().to(torch.uint8)
        alone = torch.zeros(64, 64, dtype=torch.uint8)
        alone[y:y + s, x:x + s] = r
        assert torch.equal(masks[i], alone > 0)  # mask == the object's nonzero pixels
        assert torch.equal(images[i][masks[i]], alone[masks[i]])  # clutter never touches the mask
        clutter = images[i][~masks[i]]
        assert int(clutter.max()) <= round(0.5 * 255)  # fragments are dimmer than the object can be
    assert int(images[~masks].count_nonzero()) > 0  # there is clutter


def test_load_clutter_caches(tiny_idx_dir, tmp_path):
    t0 = time.perf_counter()
    a = load_clutter("test", data_dir=tiny_idx_dir, seed=0, cache=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = load_clutter("test", data_dir=tiny_idx_dir, seed=0, cache=tmp_path)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (100, 1, 64, 64) and a.masks.shape == (100, 64, 64) and len(a.classes) == 10
    assert a.name == "fashion-mnist-clutter" and a.mean == b.mean
    c = load_clutter("test", data_dir=tiny_idx_dir, seed=1, cache=tmp_path)
    assert not torch.equal(a.images, c.images) and len(list(tmp_path.glob("*.npz"))) == 2
    from csg.data import load_dataset

    d = load_dataset("fashion-mnist-clutter", "test", data_dir=tiny_idx_dir, cache=tmp_path)
    assert d.masks is not None
    assert time.perf_counter() - t0 < 30


# ---- VOC ----------------------------------------------------------------------------------------
def _palette_png(path, index: np.ndarray):
    im = Image.fromarray(index.astype(np.uint8), mode="P")
    pal = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)
    pal[255 * 3:255 * 3 + 3] = [224, 224, 192]
    im.putpalette(pal)
    im.save(path)


def _xml(path, objects):
    root = ET.Element("annotation")
    for name, (x0, y0, x1, y1) in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = name
        b = ET.SubElement(o, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1)):
            ET.SubElement(b, tag).text = str(v)
    ET.ElementTree(root).write(path)


def make_tiny_voc(root):
    """Three images: a cat and a person; a dog touching the border plus an unsegmented bird; a sheep."""
    for sub in ("Annotations", "JPEGImages", "SegmentationObject", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    specs = {
        "2010_000001": [("cat", (11, 21, 30, 40)), ("person", (41, 5, 50, 20))],  # 20 x 20 box
        "2010_000002": [("dog", (1, 1, 20, 10)), ("bird", (30, 30, 40, 40))],  # 20 x 10 at the corner
        "2010_000003": [("sheep", (5, 5, 44, 44))],
    }
    for image_id, objs in specs.items():
        h, w = 48, 64
        photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(photo).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        seg = np.zeros((h, w), dtype=np.uint8)
        for i, (name, (x0, y0, x1, y1)) in enumerate(objs):
            if name == "bird":
                continue  # annotated, not segmented
            seg[y0 - 1:y1, x0 - 1:x1] = i + 1
            seg[y0 - 1, x0 - 1:x1] = 255  # void border on the top edge
        _palette_png(root / "SegmentationObject" / f"{image_id}.png", seg)
        _xml(root / "Annotations" / f"{image_id}.xml", objs)
    (root / "ImageSets/Segmentation/trainval.txt").write_text("\n".join(specs) + "\n")
    return specs


def test_prepare_voc_tiny(tmp_path):
    make_tiny_voc(tmp_path / "VOC2010")
    out = prepare_voc(tmp_path, tmp_path / "prepared", seed=0, size=16)
    with np.load(out, allow_pickle=False) as z:
        labels, images, masks = z["labels"], z["images"], z["masks"]
        ids, split = z["image_ids"], z["split"]
    assert [CLASSES[i] for i in labels] == ["cat", "dog", "sheep"]  # no person, no unsegmented bird
    assert images.shape == (3, 3, 16, 16) and images.dtype == np.uint8 and masks.shape == (3, 16, 16)
    # the cat's box is square and inside the image: the crop is the box; the mask is the box minus its
    # void top row, i.e. rows 1..19 of 20 -> after nearest resize to 16, every row but the first is set
    cat = masks[0]
    assert cat[1:].all() and not cat[0].any()
    # the dog (20 x 10 at the top-left corner) is cropped to a 20 x 20 square centred on its box,
    # so the 5 rows above the image are zero padding: black pixels and no mask
    dog_img = images[1].astype(int)
    assert dog_img[:, :3].max() == 0 and not masks[1][:3].any()
    assert masks[1][6:10].all()
    # the split follows image ids: objects of one image share it, and both splits exist with seed 0 or 1
    for i in range(3):
        assert split[ids == ids[i]].min() == split[i]
    ds = load_voc_objects("train", tmp_path / "prepared", seed=0)
    ds_test = load_voc_objects("test", tmp_path / "prepared", seed=0)
    assert len(ds) + len(ds_test) == 3 and ds.classes == list(CLASSES)
    assert ds.masks.dtype == torch.bool and ds.images.shape[1:] == (3, 16, 16)
    other = load_voc_objects("train", tmp_path / "prepared", seed=5)
    assert len(other) + len(load_voc_objects("test", tmp_path / "prepared", seed=5)) == 3


def test_voc_missing_and_cli(tmp_path):
    from csg.cli import main

    with pytest.raises(CsgError, match="csg prepare voc"):
        load_voc_objects("train", tmp_path / "nothing")
    with pytest.raises(CsgError, match="not a PASCAL VOC folder"):
        prepare_voc(tmp_path / "nothing", tmp_path / "out")
    make_tiny_voc(tmp_path / "VOCdevkit" / "VOC2010")
    assert main(["prepare", "voc", str(tmp_path), "--out", str(tmp_path / "p"), "--size", "32",
                 "--no-progress"]) == 0
    with np.load(tmp_path / "p" / "voc_animals.npz") as z:
        assert z["images"].shape == (3, 3, 32, 32)
    assert main(["prepare", "voc", str(tmp_path / "nothing"), "--out", str(tmp_path / "q")]) == 2


def test_prepare_voc_without_out_writes_to_the_data_dir(tmp_path, monkeypatch, capsys):
    """`csg prepare voc PATH` (issue 5's form): the output goes to $CSG_DATA_DIR, where `--data voc-animals`
    finds it with no --data-dir."""
    from csg.cli import main

    make_tiny_voc(tmp_path / "VOC2010")
    monkeypatch.setenv("CSG_DATA_DIR", str(tmp_path / "data"))
    assert main(["prepare", "voc", str(tmp_path / "VOC2010"), "--size", "16", "--no-progress"]) == 0
    assert "csg train --data voc-animals\n" in capsys.readouterr().out
    ds = load_voc_objects("train", None, seed=0)
    assert len(ds) + len(load_voc_objects("test", None, seed=0)) == 3
