"""``csg train --tensorboard``: the event file holds one value per epoch for each log key, equal to log.jsonl."""
from __future__ import annotations

import builtins

import pytest

from csg.cli import main
from csg.runs.rundir import RunDir

pytest.importorskip("tensorboard")


def test_tensorboard_scalars_match_the_log(tiny_idx_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    rc = main(["train", "--data", "fashion-mnist", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
               "--method", "csg", "--schedule", "joint", "--warmup", "0", "--epochs", "2", "--batch-size", "64",
               "--subset", "100", "--test-subset", "40", "--no-evaluate", "--no-progress", "--tensorboard",
               "--out", str(out)])
    assert rc == 0
    log = RunDir(out).log()
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"loss/total", "loss/ce_std", "loss/ce_csg", "loss/penalty", "accuracy/train_std",
            "accuracy/train_csg", "accuracy/test_std", "accuracy/test_csg", "gate/l1_density", "lr/model",
            "lr/gate", "speed/images_per_second"}
    assert want <= tags, want - tags
    for tag in want:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2]
    # TensorBoard stores float32: compare at that precision
    assert acc.Scalars("loss/total")[1].value == pytest.approx(log[1]["loss"], rel=1e-6)
    assert acc.Scalars("accuracy/test_csg")[0].value == pytest.approx(log[0]["test_csg_accuracy"], rel=1e-6)
    assert set(acc.Tags()["images"]) == {"gate", "mutual_information"}
    assert len(acc.Images("gate")) == 2


def test_missing_tensorboard_is_one_line(tiny_idx_dir, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    rc = main(["train", "--data", "fashion-mnist", "--data-dir", str(tiny_idx_dir), "--epochs", "1",
               "--no-progress", "--tensorboard", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert 'pip install "csg[tensorboard]"' in err[0]


def test_resume_keeps_one_value_per_epoch(tiny_idx_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    base = ["train", "--data", "fashion-mnist", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
            "--method", "std", "--batch-size", "64", "--subset", "64", "--test-subset", "20", "--no-evaluate",
            "--no-progress", "--tensorboard", "--out", str(out)]
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2]
    assert acc.Scalars("loss/total")[1].value == pytest.approx(RunDir(out).log()[1]["loss"], rel=1e-6)
