"""The streaming image folder yields exactly the in-memory image-folder's batches (order, shards, augmentation)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from csg.data import Augment, load_dataset
from csg.data.streaming import StreamingImageFolder, load_streaming_image_folder


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """3 classes, 9 train and 4 test RGB images of 10 x 12 (W x H) each, random pixels."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 9), ("test", 4)):
        for c in ("cat", "dog", "owl"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _epoch(ds, **kwargs):
    return [(x.clone(), y.clone()) for x, y in ds.batches(**kwargs)]


def _same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_metadata_matches_the_in_memory_folder(png_folder):
    mem = load_dataset("image-folder", "train", data_dir=png_folder)
    st = load_streaming_image_folder("train", png_folder, workers=0)
    assert st.classes == mem.classes == ["cat", "dog", "owl"]
    assert (st.in_channels, st.image_size) == (mem.in_channels, mem.image_size) == (3, (12, 10))
    assert torch.equal(st.labels, mem.labels)
    np.testing.assert_allclose(st.mean, mem.mean, rtol=1e-12)  # 27 images < the stats sample: exact
    np.testing.assert_allclose(st.std, mem.std, rtol=1e-12)
    assert torch.equal(st.load().images, mem.images)


@pytest.mark.parametrize("workers", [0, 2])
def test_shuffled_augmented_epoch_is_the_in_memory_epoch(png_folder, workers):
    mem = load_dataset("image-folder", "train", data_dir=png_folder)
    st = load_streaming_image_folder("train", png_folder, workers=workers)
    aug = Augment(crop_padding=2, hflip=True)
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        kw = dict(batch_size=4, shuffle=True, augment=aug, rank=rank, world_size=world)
        _same(_epoch(st, generator=torch.Generator().manual_seed(7), **kw),
              _epoch(mem, generator=torch.Generator().manual_seed(7), **kw))


def test_two_shards_with_half_batches_cover_the_single_epoch(png_folder):
    """World size 2 and batch 3 per rank = world size 1 and batch 6: same images, same crops and flips."""
    st = load_streaming_image_folder("train", png_folder, workers=0).subset(24, seed=1)
    aug = Augment(crop_padding=1, hflip=True)
    one = _epoch(st, batch_size=6, shuffle=True, augment=aug, generator=torch.Generator().manual_seed(3))
    shards = [_epoch(st, batch_size=3, shuffle=True, augment=aug, generator=torch.Generator().manual_seed(3),
                     rank=r, world_size=2) for r in range(2)]
    for b, (x, y) in enumerate(one):
        # global batch b: rank r holds its rows r, r + 2, ...
        x2 = torch.empty_like(x)
        y2 = torch.empty_like(y)
        for r in range(2):
            x2[r::2], y2[r::2] = shards[r][b]
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_start_batch_and_registry(png_folder):
    st = load_dataset("image-folder-stream", "train", data_dir=png_folder)
    assert isinstance(st, StreamingImageFolder)
    st.workers = 0
    aug = Augment(crop_padding=1, hflip=True)
    full = _epoch(st, batch_size=4, shuffle=True, augment=aug, generator=torch.Generator().manual_seed(5))
    tail = _epoch(st, batch_size=4, shuffle=True, augment=aug, generator=torch.Generator().manual_seed(5),
                  start_batch=2)
    _same(full[2:], tail)
    test = load_dataset("image-folder-stream", "test", data_dir=png_folder, subset=6, seed=0)
    mem_test = load_dataset("image-folder", "test", data_dir=png_folder, subset=6, seed=0)
    assert len(test) == 6 and torch.equal(test.labels, mem_test.labels)
    _same(_epoch(test, batch_size=4), _epoch(mem_test, batch_size=4))


def test_csg_train_streams_an_image_folder_with_workers(png_folder, tmp_path):
    """`csg train --data image-folder-stream --workers 1 --image-size 8` trains, evaluates and records both."""
    from csg.cli import main
    from csg.runs.rundir import RunDir

    out = tmp_path / "run"
    code = main(["train", "--data", "image-folder-stream", "--data-dir", str(png_folder), "--workers", "1",
                 "--image-size", "8", "--arch", "resnet20", "--epochs", "1", "--batch-size", "9",
                 "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)])
    assert code == 0
    run = RunDir(out)
    assert run.config["resize"] == 8 and run.config["workers"] == 1 and run.config["image_size"] == [8, 8]
    test = run.load_dataset("test")
    assert isinstance(test, StreamingImageFolder) and test.image_size == (8, 8) and test.workers == 1
    assert run.features()["pooled"].shape == (12, 64)  # 3 classes x 4 test images, evaluated from disk
    assert [r["epoch"] for r in run.log()] == [1]
