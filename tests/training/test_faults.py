"""Faults end in one clear line, a non-zero exit and nothing lost: bad options, a file as --out, a typed
TOML value, a full disk, a second writer, and a run killed before its first checkpoint."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csg.cli import main
from csg.training.checkpoint import read_checkpoint

TINY = ["--data", "fashion-mnist", "--arch", "resnet20", "--method", "csg", "--epochs", "3", "--warmup", "1",
        "--subset", "60", "--test-subset", "20", "--batch-size", "30", "--no-progress", "--seed", "0",
        "--no-evaluate", "--eval-every", "0", "--device", "cpu"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("csg: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("flags, words", [
    (["--lambda2", "-1"], "--lambda2 must lie in [0, inf]"),
    (["--suppression-weight", "-0.5"], "--suppression-weight"),
    (["--momentum", "1.5"], "--momentum must lie in [0, 1)"),
    (["--epochs", "0"], "--epochs must lie in [1, inf]"),
    (["--gate-init", "0"], "--gate-init"),
])
def test_bad_numbers_are_refused_before_training(tiny_idx_dir, tmp_path, capsys, flags, words):
    code = main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path / "run"), *flags])
    assert code == 2 and words in _one_line_error(capsys)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_out_that_is_a_file(tiny_idx_dir, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a run")
    assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(target)]) == 2
    assert "is a file, not a run directory" in _one_line_error(capsys)
    assert target.read_text() == "not a run"


def test_toml_value_of_the_wrong_type_names_the_key(tiny_idx_dir, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('epochs = "many"\n')
    code = main(["train", "--data-dir", str(tiny_idx_dir), "--config", str(cfg), "--out", str(tmp_path / "run2")])
    line = _one_line_error(capsys)
    assert code == 2 and "epochs = 'many' is not a whole number" in line and str(cfg) in line


def test_a_full_disk_keeps_the_last_good_checkpoint_and_resumes(tiny_idx_dir, tmp_path, capsys, monkeypatch):
    import csg.training.trainer as trainer

    out = tmp_path / "run"
    real = trainer.save_checkpoint
    calls = {"n": 0}

    def full_disk_on_second_save(path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(trainer, "save_checkpoint", full_disk_on_second_save)
    assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(out)]) == 2
    line = _one_line_error(capsys)
    assert "no space left" in line and "checkpoint.safetensors, 1 epochs" in line and "--resume" in line
    _, meta = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["meta"]["epoch"] == 1                      # the last good checkpoint, intact
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(out), "--resume"]) == 0
    assert read_checkpoint(out / "checkpoint.safetensors")[1]["meta"]["epoch"] == 3


def test_a_second_writer_is_refused_while_the_first_lives(tiny_idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2] / 'src')!r})
from csg.core.lock import RunLock
with RunLock({str(out)!r}):
    print("locked", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(out)]) == 2
        line = _one_line_error(capsys)
        assert f"pid {holder.pid}" in line and "being written" in line
    finally:
        holder.kill()                                   # a dead holder: the kernel drops its lock
        holder.wait()
    assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(out)]) == 0


def test_resume_before_the_first_checkpoint_starts_again_and_ends_bit_identical(tiny_idx_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    import csg.training.trainer as trainer

    whole = tmp_path / "whole"
    assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(whole)]) == 0
    killed = tmp_path / "killed"

    def killed_before_the_first_checkpoint(*a, **k):
        raise KeyboardInterrupt  # stands in for SIGKILL: config.json written, no checkpoint yet

    monkeypatch.setattr(trainer, "save_checkpoint", killed_before_the_first_checkpoint)
    assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(killed)]) == 130
    assert (killed / "config.json").is_file() and not (killed / "checkpoint.safetensors").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", *TINY, "--data-dir", str(tiny_idx_dir), "--out", str(killed), "--resume"]) == 0
    assert "no checkpoint yet" in capsys.readouterr().err
    a, _ = read_checkpoint(whole / "checkpoint.safetensors")
    b, _ = read_checkpoint(killed / "checkpoint.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model/"))


def test_train_says_when_its_gate_has_not_converged(tiny_idx_dir, tmp_path, capsys):
    # two joint epochs of two batches each leave the gate near its 0.5 start: far outside [0.1, 0.12]
    flags = [f for f in TINY if f != "--no-evaluate"]
    assert main(["train", *flags, "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if line.startswith("note: the gate has not converged")]
    assert len(note) == 1 and "outside [0.10, 0.12]" in note[0] and "--lambda2" in note[0]
    assert main(["train", *flags, "--method", "std", "--data-dir", str(tiny_idx_dir),
                 "--out", str(tmp_path / "std")]) == 0
    assert "has not converged" not in capsys.readouterr().err
