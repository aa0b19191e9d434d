"""A user's torch data (a map-style Dataset or a DataLoader) as csg's in-memory dataset, and through the
Python entry points: training, evaluation, localization with masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import csg
from csg.core.errors import CsgError
from csg.data import ImageDataset, as_image_dataset


def _tensors(n=40, classes=4, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    images[torch.arange(n), 0, labels * 3] = 255  # class c: a bright row at 3c
    return images, labels


class Items(Dataset):
    """A map-style dataset whose item ``bad`` is replaced by ``value`` at tuple position ``slot``."""

    def __init__(self, images, labels, bad=None, slot=0, value=None, masks=None):
        self.images, self.labels, self.bad, self.slot, self.value, self.masks = images, labels, bad, slot, value, masks

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = [self.images[i], self.labels[i]] + ([self.masks[i]] if self.masks is not None else [])
        if i == self.bad:
            item[self.slot] = self.value
        return tuple(item)


def test_csg_dataset_is_returned_unchanged():
    images, labels = _tensors()
    ds = ImageDataset("mine", images, labels, [str(c) for c in range(4)])
    assert as_image_dataset(ds) is ds


def test_tensor_dataset_and_dataloader_match_builtin_tensors():
    images, labels = _tensors()
    builtin = ImageDataset("mine", images, labels, [str(c) for c in range(4)])
    from_ds = as_image_dataset(TensorDataset(images, labels))
    from_float = as_image_dataset(TensorDataset(images.float() / 255, labels))
    from_loader = as_image_dataset(DataLoader(TensorDataset(images, labels), batch_size=7, shuffle=False))
    from_numpy = as_image_dataset(Items(images.numpy(), labels.numpy()))
    for ds in (from_ds, from_float, from_loader, from_numpy):
        assert torch.equal(ds.images, builtin.images)
        assert torch.equal(ds.labels, builtin.labels)
        assert ds.num_classes == 4 and ds.mean == builtin.mean and ds.std == builtin.std
    hw = as_image_dataset(TensorDataset(images[:, 0], labels))  # (H, W) images: one channel
    assert torch.equal(hw.images, builtin.images)


def test_masks_are_read():
    images, labels = _tensors()
    masks = torch.zeros(40, 12, 12)
    masks[:, 2:5, 2:5] = 1
    ds = as_image_dataset(TensorDataset(images, labels, masks), with_masks=True)
    assert ds.masks.dtype == torch.bool and int(ds.masks[0].sum()) == 9


@pytest.mark.parametrize("slot,value,message", [
    (0, "a string", "item 5: the image is a str"),
    (0, np.array(["a", "b"]), "item 5: the image is a numpy array of dtype <U1"),
    (0, torch.zeros(1, 12, 12, dtype=torch.complex64), "item 5: the image has dtype torch.complex64"),
    (0, torch.zeros(1, 10, 12), "item 5: the image has shape (1, 10, 12) but the first one has (1, 12, 12)"),
    (0, torch.full((1, 12, 12), float("nan")), "item 5: the image has non-finite pixels"),
    (1, 2.5, "item 5: the label is float"),
    (1, torch.tensor(1.0), "item 5: the label has dtype torch.float32"),
    (1, 4, "item 5: label 4 is outside 0..3"),
    (1, -1, "item 5: label -1 is outside"),
    (1, "cat", "item 5: the label is str"),
])
def test_bad_item_names_its_index(slot, value, message):
    images, labels = _tensors()
    with pytest.raises(CsgError, match="^Items: " + message.replace("(", r"\(").replace(")", r"\)")):
        as_image_dataset(Items(images, list(labels.tolist()), bad=5, slot=slot, value=value), num_classes=4)


def test_bad_mask_names_its_index():
    images, labels = _tensors()
    masks = torch.ones(40, 12, 12)
    with pytest.raises(CsgError, match=r"item 7: the mask has shape \(11, 12\) but the image is \(12, 12\)"):
        as_image_dataset(Items(images, labels, bad=7, slot=2, value=torch.ones(11, 12), masks=masks),
                         with_masks=True)


def test_bad_batch_names_batch_and_position():
    images, labels = _tensors()
    bad = images.float() / 255
    bad[9, 0, 0, 0] = float("inf")
    with pytest.raises(CsgError, match="batch 2, position 1: the image has non-finite pixels"):
        as_image_dataset(DataLoader(TensorDataset(bad, labels), batch_size=4))


def test_not_a_dataset():
    with pytest.raises(CsgError, match="not a dataset csg can read"):
        as_image_dataset(object())
    with pytest.raises(CsgError, match="is empty"):
        as_image_dataset(TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)))


def _cfg(out, **kw):
    return csg.TrainConfig(arch="resnet20", method="csg", epochs=1, warmup=0, batch_size=16, lr=0.05,
                           out=str(out), device="cpu", evaluate=False, eval_every=0, **kw)


def test_train_on_user_dataset_equals_builtin_path(tmp_path):
    images, labels = _tensors(48)
    test_images, test_labels = _tensors(16, seed=1)
    classes = [str(c) for c in range(4)]
    builtin = csg.train(_cfg(tmp_path / "a"), progress=False,
                        train_set=ImageDataset("mine", images, labels, classes),
                        test_set=ImageDataset("mine", test_images, test_labels, classes))
    user = csg.train(_cfg(tmp_path / "b"), progress=False, train_set=TensorDataset(images, labels),
                     test_set=DataLoader(TensorDataset(test_images.float() / 255, test_labels), batch_size=5))
    assert user.config["data_source"] == "python" and user.config["train_size"] == 48
    assert builtin.log()[0]["loss"] == pytest.approx(user.log()[0]["loss"], rel=1e-6)
    ma, mb = builtin.load_model(), user.load_model()
    for (name, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-6), name
    # commands that reload data say how to pass it; the Python entry points take it
    with pytest.raises(CsgError, match="trained on your own data from Python .* dataset=my_test_set"):
        csg.evaluate_run(user)
    metrics = csg.evaluate_run(user, dataset=TensorDataset(test_images, test_labels), progress=False)
    assert metrics["num_samples"] == 16
    with pytest.raises(CsgError, match="the test dataset: item 3: label 9 is outside 0..3"):
        bad = test_labels.clone()
        bad[3] = 9
        csg.evaluate_run(user, dataset=TensorDataset(test_images, bad), progress=False)


def test_user_data_needs_both_splits(tmp_path):
    images, labels = _tensors()
    with pytest.raises(CsgError, match="test_set is missing"):
        csg.train(_cfg(tmp_path / "c"), progress=False, train_set=TensorDataset(images, labels))


def test_localize_takes_a_dataset_with_masks(tmp_path):
    images, labels = _tensors(48)
    run = csg.train(_cfg(tmp_path / "loc"), progress=False, train_set=TensorDataset(images, labels),
                    test_set=TensorDataset(images[:16], labels[:16]))
    masks = torch.zeros(16, 12, 12)
    for i, c in enumerate(labels[:16].tolist()):
        masks[i, c * 3] = 1
    result = csg.localize_run(run, methods=("activmap",), dataset=TensorDataset(images[:16], labels[:16], masks),
                              allow_unconverged=True)
    assert 0.0 <= result["activmap"]["avg_iou"] <= 1.0
    records = csg.explain_run(run, TensorDataset(images[:2], labels[:2]), top=2, out_dir=tmp_path / "explain")
    assert [r["image"] for r in records] == ["item 0", "item 1"] and (tmp_path / "explain" / "item-1.png").is_file()
    with pytest.raises(CsgError, match="item 0: the item is a tuple of 2, not \\(image, label, mask\\)"):
        csg.localize_run(run, methods=("activmap",), dataset=TensorDataset(images[:16], labels[:16]),
                         allow_unconverged=True)
