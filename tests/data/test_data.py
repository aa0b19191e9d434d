"""Tests of csg.data: IDX and CIFAR parsing, image folders, subsets, batches, augmentation.

Every file is written here in its real format (IDX with numpy + gzip, CIFAR as
pickled dicts of numpy arrays, PNGs with Pillow), and expected values come from
the construction or from plain per-sample reference code, never from the
implementation's own output.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from csg.data import Augment, ImageDataset, available_datasets, load_dataset
from csg.data.augment import AugmentDraw
from csg.data.dataset import DATA_DIR_ENV
from csg.core.errors import CsgError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---- helpers -----------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, compress: bool = True,
              cut: int = 0) -> Path:
    """IDX: big-endian magic 0x000008NN, NN big-endian uint32 dimensions, raw uint8 values."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if cut:
        data = data[:-cut]
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def make_fmnist(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0, compress: bool = True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, compress=compress)
        arrays[prefix] = (x, y)
    return arrays


def index_dataset(n: int, num_classes: int = 4, size: int = 6, channels: int = 1) -> ImageDataset:
    """Image i is filled with the value i (n <= 256), so a batch tells which indices it holds."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, channels, size, size).clone()
    labels = torch.arange(n) % num_classes
    return ImageDataset(name="index", images=images, labels=labels, classes=[f"c{i}" for i in range(num_classes)],
                        mean=(0.5,) * channels, std=(0.25,) * channels)


def batch_indices(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0, 0, 0] * 255).round().long()


def random_dataset(n: int = 37, channels: int = 3, h: int = 7, w: int = 5, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, h, w), generator=g, dtype=torch.uint8)
    return ImageDataset(name="random", images=images, labels=torch.arange(n) % 3, classes=["a", "b", "c"])


def reference_augment(images: torch.Tensor, p: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Plain per-sample crop and flip, drawing in the documented order: offsets (n, 2), then flips (n,)."""
    n, c, h, w = images.shape
    offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator) if p > 0 else torch.zeros(n, 2, dtype=torch.long)
    flips = (torch.randint(0, 2, (n,), generator=generator) == 1) if hflip else torch.zeros(n, dtype=torch.bool)
    out = []
    for i in range(n):
        padded = np.zeros((c, h + 2 * p, w + 2 * p), dtype=images.numpy().dtype)
        padded[:, p:p + h, p:p + w] = images[i].numpy()
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[:, dy:dy + h, dx:dx + w]
        if flips[i]:
            crop = crop[:, :, ::-1]
        out.append(torch.from_numpy(crop.copy()))
    return torch.stack(out)


# ---- Fashion-MNIST / IDX -------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    arrays = make_fmnist(tmp_path, compress=compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("fashion-mnist", split, data_dir=tmp_path)
        x, y = arrays[prefix]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(x), 1, 28, 28)
        assert np.array_equal(ds.images[:, 0].numpy(), x)
        assert np.array_equal(ds.labels.numpy(), y.astype(np.int64)) and ds.labels.dtype == torch.int64
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
        assert ds.mean == (0.2860,) and ds.std == (0.3530,)
        assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (28, 28)


def test_cached_load_is_not_aliased(tmp_path):
    make_fmnist(tmp_path)
    a = load_dataset("fashion-mnist", data_dir=tmp_path)
    expected = a.images.clone()
    a.images.zero_()
    b = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert torch.equal(b.images, expected)
    # a rewritten file (new mtime/size) is read again, not served from the cache
    x = np.full((5, 28, 28), 7, np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    c = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert len(c) == 5 and int(c.images.max()) == 7


def _expect_error(tmp_path, match_name: str, *parts: str):
    with pytest.raises(CsgError) as info:
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    message = str(info.value)
    assert match_name in message, message
    for part in parts:
        assert part in message, message
    return message


def test_truncated_idx(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((40, 28, 28), np.uint8), cut=100)
    _expect_error(tmp_path, "train-images-idx3-ubyte.gz", "truncated")


def test_trailing_bytes_idx(tmp_path):
    make_fmnist(tmp_path, compress=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00\x01")
    _expect_error(tmp_path, "train-labels-idx1-ubyte", "longer")


def test_bad_magic(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((40, 28, 28), np.uint8), magic=0x00000903)
    _expect_error(tmp_path, "train-images-idx3-ubyte.gz", "magic", "0x00000903")
    # a label file where an image file belongs has a valid IDX header but the wrong magic
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(40, np.uint8))
    _expect_error(tmp_path, "train-images-idx3-ubyte.gz", "0x00000801")


def test_corrupt_gzip(tmp_path):
    make_fmnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip data at all")
    _expect_error(tmp_path, "train-labels-idx1-ubyte.gz", "gzip")
    good = gzip.compress(b"\x00" * 200)
    path.write_bytes(good[: len(good) // 2])  # a gzip stream cut in the middle
    _expect_error(tmp_path, "train-labels-idx1-ubyte.gz", "gzip")


def test_label_out_of_range(tmp_path):
    make_fmnist(tmp_path)
    y = (np.arange(40) % 10).astype(np.uint8)
    y[17] = 12
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    _expect_error(tmp_path, "train-labels-idx1-ubyte.gz", "label 12", "index 17")


def test_count_mismatch(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(39, np.uint8))
    _expect_error(tmp_path, "train-labels-idx1-ubyte.gz", "39 labels", "40")


def test_missing_folder_and_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CsgError) as info:
        load_dataset("fashion-mnist", data_dir=missing)
    message = str(info.value)
    assert str(missing) in message and "train-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    make_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(CsgError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    with pytest.raises(CsgError, match="splits train and test"):
        load_dataset("fashion-mnist", "validation", data_dir=tmp_path)


def test_data_dir_and_env_precedence(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    make_fmnist(a, n_train=20)
    make_fmnist(b, n_train=30)
    monkeypatch.setenv(DATA_DIR_ENV, str(b))
    assert len(load_dataset("fashion-mnist")) == 30  # the environment variable beats the default
    assert len(load_dataset("fashion-mnist", data_dir=a)) == 20  # data_dir beats the environment variable
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "empty"))
    with pytest.raises(CsgError, match="empty"):
        load_dataset("fashion-mnist")
    # a parent folder holding fashion-mnist/ works too
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    make_fmnist(tmp_path / "fashion-mnist", n_train=10)
    assert len(load_dataset("fashion-mnist")) == 10


@pytest.mark.skipif(not (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file()
                    and not (REAL_FMNIST / "train-images-idx3-ubyte").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(train.class_counts(), torch.full((10,), 6000))
    assert torch.equal(test.class_counts(), torch.full((10,), 1000))
    # the fixed constants are the real training set's statistics
    # (from the histogram of the 256 pixel values: exact, and no float copy of 47M pixels)
    hist = torch.bincount(train.images.flatten(), minlength=256).double()
    v = torch.arange(256, dtype=torch.float64) / 255
    mean = float((hist * v).sum() / hist.sum())
    std = float(((hist * (v - mean) ** 2).sum() / hist.sum()).sqrt())
    assert abs(mean - train.mean[0]) < 5e-4 and abs(std - train.std[0]) < 5e-4
    sub = load_dataset("fashion-mnist", "train", subset=1000, seed=1)
    assert torch.equal(sub.class_counts(), torch.full((10,), 100))


# ---- registry ------------------------------------------------------------------
def test_registry_names_and_unknown():
    names = available_datasets()
    for name in ("fashion-mnist", "cifar10", "cifar100", "image-folder", "fashion-mnist-clutter", "voc-animals"):
        assert name in names
    with pytest.raises(CsgError) as info:
        load_dataset("mnist-fancy")
    assert "mnist-fancy" in str(info.value)
    for name in names:
        assert name in str(info.value)


def test_lazy_routes_call_their_modules(monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("csg.data.clutter")

    def load_clutter(split, data_dir, seed):
        calls.append((split, data_dir, seed))
        return index_dataset(20)

    fake.load_clutter = load_clutter
    monkeypatch.setitem(sys.modules, "csg.data.clutter", fake)
    ds = load_dataset("fashion-mnist-clutter", "test", data_dir="/x", subset=8, seed=3)
    assert calls == [("test", "/x", 3)] and len(ds) == 8


# ---- ImageDataset: validation, subset -------------------------------------------
def test_dataset_validation():
    images = torch.zeros(4, 1, 3, 3, dtype=torch.uint8)
    with pytest.raises(CsgError, match="label 5"):
        ImageDataset(name="bad", images=images, labels=torch.tensor([0, 1, 5, 0]), classes=["a", "b"])
    with pytest.raises(CsgError, match="label -1"):
        ImageDataset(name="bad", images=images, labels=torch.tensor([0, -1, 1, 0]), classes=["a", "b"])
    with pytest.raises(CsgError, match="uint8"):
        ImageDataset(name="bad", images=images.float(), labels=torch.zeros(4, dtype=torch.long), classes=["a"])
    with pytest.raises(CsgError, match="masks"):
        ImageDataset(name="bad", images=images, labels=torch.zeros(4, dtype=torch.long), classes=["a"],
                     masks=torch.zeros(4, 2, 3, dtype=torch.bool))
    # mean/std default to the images' statistics: values 0 and 255 in equal numbers -> 0.5, 0.5
    half = torch.cat([torch.zeros(2, 1, 3, 3), torch.full((2, 1, 3, 3), 255.0)]).to(torch.uint8)
    ds = ImageDataset(name="ok", images=half, labels=torch.tensor([0, 1, 0, 1], dtype=torch.int32), classes="ab")
    assert ds.mean == pytest.approx((0.5,)) and ds.std == pytest.approx((0.5,))
    assert ds.labels.dtype == torch.int64


def test_subset_is_stratified_and_seeded():
    n_per, classes = 100, 10
    labels = torch.arange(n_per * classes) % classes
    # pixel (0, 0) holds index % 256, pixel (0, 1) index // 256: each image names its index
    index = torch.arange(len(labels))
    images = torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = (index % 256).to(torch.uint8), (index // 256).to(torch.uint8)
    masks = torch.zeros(len(labels), 2, 2, dtype=torch.bool)
    masks[::3] = True
    ds = ImageDataset(name="s", images=images, labels=labels, classes=[str(i) for i in range(classes)],
                      masks=masks, mean=(0.1,), std=(0.2,))
    sub = ds.subset(50, seed=0)
    assert torch.equal(sub.class_counts(), torch.full((classes,), 5))
    assert sub.mean == (0.1,) and sub.std == (0.2,) and sub.classes == ds.classes
    # rows stay consistent: image value, label and mask follow the same index
    idx = sub.images[:, 0, 0, 0].long() + 256 * sub.images[:, 0, 0, 1].long()
    assert torch.equal(idx, torch.sort(idx).values)  # original order kept
    assert torch.equal(sub.labels, labels[idx]) and torch.equal(sub.masks, masks[idx])
    assert len(set(idx.tolist())) == 50
    assert torch.equal(ds.subset(50, seed=0).images, sub.images)  # deterministic
    assert not torch.equal(ds.subset(50, seed=1).images, sub.images)  # the seed picks the images
    assert ds.subset(1000) is ds and ds.subset(5000) is ds
    with pytest.raises(CsgError):
        ds.subset(0)


def test_subset_quotas_by_largest_remainder():
    # class counts 5, 3, 2 (N = 10), n = 5: exact shares 2.5, 1.5, 1.0 -> floors 2, 1, 1 (4);
    # the one left goes to the largest remainder, a tie 0.5/0.5 broken by class order -> 3, 1, 1
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    ds = ImageDataset(name="q", images=torch.zeros(10, 1, 1, 1, dtype=torch.uint8), labels=labels,
                      classes=["a", "b", "c"])
    assert ds.subset(5, seed=4).class_counts().tolist() == [3, 1, 1]
    # n = 7: exact 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6); largest remainder 0.5 -> class 0 -> 4, 2, 1
    assert ds.subset(7, seed=4).class_counts().tolist() == [4, 2, 1]


def test_load_dataset_subset(tmp_path):
    make_fmnist(tmp_path, n_train=100)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, subset=30, seed=2)
    assert torch.equal(ds.class_counts(), torch.full((10,), 3))


# ---- batches -------------------------------------------------------------------
def test_batches_cover_every_index_once():
    ds = index_dataset(53)
    g = torch.Generator().manual_seed(0)
    seen = []
    for x, y in ds.batches(8, shuffle=True, generator=g):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 6, 6)
        idx = batch_indices(x)
        assert torch.equal(y, idx % 4)  # labels travel with their images
        seen.append(idx)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(53))
    assert order.tolist() != list(range(53))  # shuffled
    assert [len(s) for s in seen] == [8] * 6 + [5]
    # without shuffle: in order; drop_last drops the short batch
    plain = torch.cat([batch_indices(x) for x, _ in ds.batches(8)])
    assert plain.tolist() == list(range(53))
    assert len(list(ds.batches(8, drop_last=True))) == 6
    assert len(ds.batches(8)) == 7
    # the order is one randperm of the generator
    expected = torch.randperm(53, generator=torch.Generator().manual_seed(0))
    assert torch.equal(order, expected)


def test_batches_scale_to_unit_interval():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    ds = ImageDataset(name="u", images=images, labels=torch.zeros(3, dtype=torch.long), classes=["a"])
    x, _ = next(iter(ds.batches(3)))
    assert torch.equal(x.flatten(), torch.tensor([0.0, 0.2, 1.0]))


def test_same_seed_same_epoch_with_augmentation():
    ds = random_dataset(41)
    aug = Augment(crop_padding=2, hflip=True)

    def epoch(seed):
        g = torch.Generator().manual_seed(seed)
        return [(x.clone(), y.clone()) for x, y in ds.batches(6, shuffle=True, generator=g, augment=aug)]

    a, b, c = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("k", [0, 1, 3, 6, 7, 20])
def test_start_batch_yields_the_tail(k):
    ds = random_dataset(41)
    aug = Augment(crop_padding=1, hflip=True)
    full = [(x, y) for x, y in ds.batches(6, shuffle=True, generator=torch.Generator().manual_seed(9), augment=aug)]
    tail_iter = ds.batches(6, shuffle=True, generator=torch.Generator().manual_seed(9), augment=aug, start_batch=k)
    tail = list(tail_iter)
    assert len(tail) == max(len(full) - k, 0)
    for (xa, ya), (xb, yb) in zip(full[k:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_with_augment_match_reference_epoch():
    ds = random_dataset(23, channels=2, h=5, w=6)
    p, bs = 2, 4
    got = list(ds.batches(bs, shuffle=True, generator=torch.Generator().manual_seed(3),
                          augment=Augment(crop_padding=p, hflip=True)))
    # reference: one randperm, then per batch the augmentation draws from the same generator
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(23, generator=g)
    for b, (x, y) in enumerate(got):
        idx = perm[b * bs:(b + 1) * bs]
        expected = reference_augment(ds.images[idx], p, True, g).float() / 255
        assert torch.equal(x, expected) and torch.equal(y, ds.labels[idx])


def test_sharded_batches_partition_the_epoch():
    ds = index_dataset(22)
    parts = []
    for rank in range(3):
        g = torch.Generator().manual_seed(1)
        parts.append(torch.cat([batch_indices(x) for x, _ in ds.batches(4, shuffle=True, generator=g,
                                                                         rank=rank, world_size=3)]))
    assert [len(p) for p in parts] == [8, 8, 8]  # ceil(22 / 3) each, padded by wrapping
    union = torch.cat(parts)
    assert set(union.tolist()) == set(range(22))
    assert len(union) - len(set(union.tolist())) == 2


# ---- augmentation --------------------------------------------------------------
@pytest.mark.parametrize("p,hflip", [(2, True), (3, False), (0, True), (1, True)])
def test_augment_matches_per_sample_reference(p, hflip):
    images = random_dataset(17, channels=3, h=8, w=6, seed=1).images
    aug = Augment(crop_padding=p, hflip=hflip)
    got = aug(images, torch.Generator().manual_seed(11))
    expected = reference_augment(images, p, hflip, torch.Generator().manual_seed(11))
    assert got.dtype == images.dtype and torch.equal(got, expected)
    # float images give the same result
    got_f = aug(images.float() / 255, torch.Generator().manual_seed(11))
    assert torch.equal(got_f, expected.float() / 255)


def test_crop_offset_known_answer():
    image = torch.arange(1, 13, dtype=torch.uint8).view(1, 1, 3, 4)
    aug = Augment(crop_padding=2)
    # offset (0, 0) in the padded image: the window starts 2 rows above and 2 columns left of the image
    out = aug.apply(image, AugmentDraw(offsets=torch.tensor([[0, 0]]), flips=None))
    expected = torch.zeros(1, 1, 3, 4, dtype=torch.uint8)
    expected[0, 0, 2, 2:] = torch.tensor([1, 2])
    assert torch.equal(out, expected)
    # offset (2, 2) is the identity; (3, 1): one row down, one column left
    assert torch.equal(aug.apply(image, AugmentDraw(torch.tensor([[2, 2]]), None)), image)
    shifted = aug.apply(image, AugmentDraw(torch.tensor([[3, 1]]), None))[0, 0]
    assert shifted.tolist() == [[0, 5, 6, 7], [0, 9, 10, 11], [0, 0, 0, 0]]


def test_hflip_flips():
    image = torch.arange(12, dtype=torch.uint8).view(1, 1, 3, 4).repeat(64, 1, 1, 1)
    out = Augment(hflip=True)(image, torch.Generator().manual_seed(0))
    flipped = (out == image.flip(3)).flatten(1).all(1)
    same = (out == image).flatten(1).all(1)
    assert bool((flipped ^ same).all())  # each sample is either mirrored or untouched
    assert 10 < int(flipped.sum()) < 54  # about half are mirrored
    forced = Augment(hflip=True).apply(image[:2], AugmentDraw(None, torch.tensor([True, False])))
    assert forced[0, 0, 0].tolist() == [3, 2, 1, 0] and forced[1, 0, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(CsgError):
        Augment(crop_padding=-1)
    assert Augment()(image, None) is image


# ---- CIFAR ---------------------------------------------------------------------
def _cifar_batch(n: int, labels, seed: int, key: bytes = b"labels") -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": b"training batch", key: list(labels), b"data": data,
            b"filenames": [b"img%d.png" % i for i in range(n)]}, data


def _dump(path: Path, obj, protocol: int = 2):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def write_cifar10(root: Path, n: int = 6) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    datas = []
    for i in range(1, 6):
        batch, data = _cifar_batch(n, [(j + i) % 10 for j in range(n)], seed=i)
        if i == 1:
            data[0, :] = 0
            data[0, 0] = 200                  # red plane, row 0, col 0
            data[0, 1024 + 5] = 100           # green plane, row 0, col 5
            data[0, 2048 + 32 * 3 + 7] = 50   # blue plane, row 3, col 7
        _dump(folder / f"data_batch_{i}", batch, protocol=2 if i % 2 else 5)
        datas.append(data)
    test, test_data = _cifar_batch(n, list(range(n)), seed=9)
    _dump(folder / "test_batch", test, protocol=4)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072})
    return {"train": np.concatenate(datas), "test": test_data}


def test_cifar10_pickle_folder(tmp_path):
    datas = write_cifar10(tmp_path)
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent or the extracted folder
        train = load_dataset("cifar10", "train", data_dir=where)
        assert train.images.shape == (30, 3, 32, 32) and train.in_channels == 3
        assert train.images[0, 0, 0, 0] == 200 and train.images[0, 1, 0, 5] == 100
        assert train.images[0, 2, 3, 7] == 50
        assert int(train.images[0].sum()) == 350
        # every image: R, G, B planes of 1024 row-major values
        assert np.array_equal(train.images.numpy().reshape(30, 3072), datas["train"])
        assert train.labels[:6].tolist() == [1, 2, 3, 4, 5, 6]
        assert train.classes[0] == "airplane" and train.classes[9] == "truck"
        assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2470, 0.2435, 0.2616)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert np.array_equal(test.images.numpy().reshape(6, 3072), datas["test"])


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batch, data = _cifar_batch(8, [99, 0, 5, 42, 7, 1, 2, 3], seed=1, key=b"fine_labels")
    batch[b"coarse_labels"] = [1] * 8
    _dump(folder / "train", batch)
    _dump(folder / "test", _cifar_batch(4, [1, 2, 3, 4], seed=2, key=b"fine_labels")[0])
    _dump(folder / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)],
                            b"coarse_label_names": [b"s%d" % i for i in range(20)]})
    ds = load_dataset("cifar100", "train", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.labels.tolist() == [99, 0, 5, 42, 7, 1, 2, 3]
    assert ds.classes[42] == "c42"
    assert np.array_equal(ds.images.numpy().reshape(8, 3072), data)


def test_cifar_label_out_of_range(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    batch, _ = _cifar_batch(6, [0, 1, 2, 10, 4, 5], seed=3)
    _dump(folder / "data_batch_3", batch)
    with pytest.raises(CsgError) as info:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert "data_batch_3" in str(info.value) and "label 10" in str(info.value)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_cifar_pickle_is_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "payload-ran"
    batch, _ = _cifar_batch(6, [0] * 6, seed=1)
    batch[b"filenames"] = [_Payload(marker)]
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_2", batch)
    with pytest.raises(CsgError) as info:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    message = str(info.value)
    assert "data_batch_2" in message and "system" in message
    assert not marker.exists()
    # a pickle that is cut short is an error naming the file, not a crash
    raw = (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(raw[:500])
    with pytest.raises(CsgError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_missing(tmp_path):
    with pytest.raises(CsgError) as info:
        load_dataset("cifar100", data_dir=tmp_path)
    assert str(tmp_path) in str(info.value) and "cifar-100-python" in str(info.value)


# ---- image folder ----------------------------------------------------------------
def _png(path: Path, array: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_rgb(tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("zebra", "ant"):  # classes are sorted: ant = 0, zebra = 1
            for i in range(n):
                a = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
                _png(tmp_path / split / cls / f"{i}.png", a)
                expected.setdefault(split, []).append((cls, a))
    train = load_dataset("image-folder", "train", data_dir=tmp_path)
    assert train.classes == ["ant", "zebra"] and train.images.shape == (6, 3, 5, 7)
    # files in sorted class then name order: ant/0..2, zebra/0..2
    order = [a for c, a in sorted(expected["train"], key=lambda t: t[0])]
    assert np.array_equal(train.images.numpy().transpose(0, 2, 3, 1), np.stack(order))
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    stack = np.stack(order).astype(np.float64) / 255
    assert train.mean == pytest.approx(tuple(stack.mean(axis=(0, 1, 2))), abs=1e-9)
    assert train.std == pytest.approx(tuple(stack.std(axis=(0, 1, 2))), abs=1e-9)
    test = load_dataset("image-folder", "test", data_dir=tmp_path)
    assert test.labels.tolist() == [0, 0, 1, 1] and test.mean == train.mean  # train statistics
    resized = load_dataset("image-folder", "train", data_dir=tmp_path, image_size=4)
    assert resized.images.shape == (6, 3, 4, 4)


def test_image_folder_gray_mixed_sizes_and_errors(tmp_path):
    _png(tmp_path / "train" / "b" / "x.png", np.full((10, 10), 9, np.uint8))
    _png(tmp_path / "train" / "a" / "y.png", np.full((12, 8), 200, np.uint8))
    _png(tmp_path / "val" / "a" / "z.png", np.full((12, 8), 100, np.uint8))
    ds = load_dataset("image-folder", "train", data_dir=tmp_path)
    assert ds.in_channels == 1 and ds.image_size == (32, 32)  # sizes differ -> 32 x 32
    assert ds.images[0].unique().tolist() == [200] and ds.images[1].unique().tolist() == [9]
    test = load_dataset("image-folder", "test", data_dir=tmp_path)  # "val" serves as test
    assert test.images.shape == (1, 1, 32, 32) and test.labels.tolist() == [0]
    (tmp_path / "val" / "c").mkdir()
    _png(tmp_path / "val" / "c" / "w.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(CsgError, match="'c'"):
        load_dataset("image-folder", "test", data_dir=tmp_path)
    (tmp_path / "train" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CsgError, match="broken.jpg"):
        load_dataset("image-folder", "train", data_dir=tmp_path)
    with pytest.raises(CsgError, match="no option"):
        load_dataset("fashion-mnist", image_size=3)
