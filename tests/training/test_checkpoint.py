"""Checkpoints: atomic, complete, and never unpickled."""
import os
import pickle

import pytest
import torch
import torch.nn as nn

from csg.core.errors import CsgError
from csg.training.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint


def _model_and_opt(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sgd = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad(); sgd.zero_grad()
        loss.backward()
        opt.step(); sgd.step()
    return model, {"model": opt, "gate": sgd}


def test_round_trip_restores_weights_optimisers_and_rng(tmp_path):
    model, opts = _model_and_opt(0)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opts, meta={"epoch": 3})
    expected_next = torch.rand(3)

    other, other_opts = _model_and_opt(1)
    meta = restore_checkpoint(path, other, other_opts)
    assert meta == {"epoch": 3}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    for name in opts:
        sa, sb = opts[name].state_dict(), other_opts[name].state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for pid in sa["state"]:
            for key, value in sa["state"][pid].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][pid][key]))
    assert torch.equal(torch.rand(3), expected_next)  # RNG state restored
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary left behind


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CsgError, match="pickle"):
        read_checkpoint(path)
    model, _ = _model_and_opt(0)
    with pytest.raises(CsgError):
        restore_checkpoint(path, model)
    assert not marker.exists()


def test_truncated_or_foreign_files_are_refused(tmp_path):
    model, opts = _model_and_opt(0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, opts)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CsgError, match="not a valid csg checkpoint"):
        read_checkpoint(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CsgError, match="not a csg checkpoint"):
        read_checkpoint(path)
    with pytest.raises(CsgError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    model, opts = _model_and_opt(0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, opts)
    with pytest.raises(CsgError, match="does not fit this model"):
        restore_checkpoint(path, nn.Linear(4, 3))
