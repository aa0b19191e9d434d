"""The training loop: every method learns, resume is exact, bad input gets one line."""
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from csg.cli import main
from csg.core.errors import CsgError
from csg.runs.rundir import RunDir
from csg.training.checkpoint import read_checkpoint
from csg.training.config import resolve_config
from csg.runs.train import train
from csg.training.trainer import Trainer

BASE = ["--data", "fashion-mnist", "--arch", "resnet20", "--batch-size", "32", "--no-progress", "--seed", "0"]


def cfg_for(tiny_idx_dir, out, **kw):
    values = dict(data="fashion-mnist", data_dir=str(tiny_idx_dir), arch="resnet20", batch_size=32, lr=0.05,
                  epochs=4, out=str(out), evaluate=False, eval_every=0, seed=0)
    values.update(kw)
    return resolve_config(values)


@pytest.mark.parametrize("method,extra", [
    ("std", {}),
    ("csg", {"schedule": "alternate", "warmup": 0, "period": 1, "csg_epochs": 1}),  # every epoch a CSG epoch
    ("csg", {"schedule": "joint", "warmup": 0}),
    ("csg-fixed", {"schedule": "alternate", "warmup": 0, "period": 1, "csg_epochs": 1}),
])
def test_each_method_lowers_the_loss_of_a_tiny_model(tiny_idx_dir, tmp_path, method, extra):
    run = train(cfg_for(tiny_idx_dir, tmp_path / "run", method=method, **extra), progress=False)
    log = run.log()
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    for r in log:
        assert {"phase", "loss", "lr", "seconds", "images_per_second"} <= set(r)
    if method != "std":
        gate = np.load(run.file("gate.npy"))
        assert gate.shape == (10, 64)
        assert np.allclose(gate.max(axis=0), 1.0) and gate.min() >= 0


@pytest.mark.parametrize("epochs,warned", [(2, True), (3, False)])
def test_a_schedule_without_csg_epochs_is_pointed_out(tiny_idx_dir, tmp_path, capsys, epochs, warned):
    # the default warm-up is 2 STD epochs: a 2-epoch CSG run would never train its gate
    train(cfg_for(tiny_idx_dir, tmp_path / "run", method="csg", epochs=epochs), progress=False)
    assert ("the gated path was never trained" in capsys.readouterr().err) == warned


def test_default_gate_settings_converge_into_the_interval():
    """With the default gate optimiser, lr, penalty and init, a CSG step on class-informative features
    drives the L1-density into [1/C, rho + 0.02] within the CSG steps of the README's run (4 epochs of
    156 steps, cosine-decayed). The features stand in for a warmed-up backbone: filter k responds to
    class k mod C, plus noise."""
    from csg.core.gate import ClassSpecificGate
    from csg.methods import build_method
    from csg.methods.schedule import CSG
    from csg.training.optim import lr_factor

    torch.manual_seed(0)
    cfg = resolve_config({"method": "csg"})
    C, K, n = 10, 64, 4000
    labels = torch.randint(0, C, (n,))
    feats = torch.relu(torch.randn(n, K) * 0.5 + 2.0 * (labels[:, None] == torch.arange(K) % C))
    class FeatureModel(torch.nn.Module):
        """The CSG path of a GatedClassifier on ready-made pooled features."""

        def __init__(self):
            super().__init__()
            self.gate, self.head, self.num_classes = ClassSpecificGate(C, K, init=cfg.gate_init), torch.nn.Linear(K, C), C

        def forward(self, x, y):
            return types.SimpleNamespace(csg_logits=self.head(x * self.gate.weight[y]), logits=self.head(x))

    model = FeatureModel()
    method = build_method(cfg, C)
    gate_opt = torch.optim.Adam([model.gate.weight], lr=cfg.gate_lr)
    head_opt = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)

    epochs, steps = 4, 156
    for epoch in range(epochs):
        for g in gate_opt.param_groups:
            g["lr"] = cfg.gate_lr * lr_factor(epoch, epochs, cfg.lr_schedule)
        for _ in range(steps):
            idx = torch.randint(0, n, (cfg.batch_size,))
            out = method.step(model, feats[idx], labels[idx], CSG)
            gate_opt.zero_grad(), head_opt.zero_grad()
            out.loss.backward()
            gate_opt.step(), head_opt.step()
            method.after_step(model, CSG)
    density = model.gate.l1_density()
    assert 1 / C - 1e-6 <= density <= method.rho + 0.02
    # and the gate found the structure: each filter's class is the one it responds to
    assert (model.gate.weight.argmax(0) == torch.arange(K) % C).float().mean() >= 0.9


def _checkpoint_tensors(run_dir: Path):
    tensors, _ = read_checkpoint(run_dir / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model/") or k.startswith("optim/")}


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_idx_dir, tmp_path):
    args = ["train", *BASE, "--data-dir", str(tiny_idx_dir), "--method", "csg", "--epochs", "4", "--period", "2",
            "--threads", "1", "--no-evaluate", "--eval-every", "0", "--checkpoint-every", "4"]
    reference = tmp_path / "reference"
    assert main(args + ["--out", str(reference)]) == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "csg", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = killed / "log.jsonl"
    deadline = time.time() + 120
    # kill in the middle of epoch 2: after epoch 1 is logged and a mid-epoch checkpoint may exist
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert main(args + ["--out", str(killed), "--resume"]) == 0

    ref, got = _checkpoint_tensors(reference), _checkpoint_tensors(killed)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert [r["epoch"] for r in RunDir(killed).log()] == [1, 2, 3, 4]


def test_nan_loss_names_epoch_and_batch_and_keeps_the_last_checkpoint(tiny_idx_dir, tmp_path):
    trainer = Trainer(cfg_for(tiny_idx_dir, tmp_path / "run", method="std", epochs=3), progress=False)
    original = trainer.method.step
    calls = {"n": 0}
    per_epoch = trainer._num_batches()

    def poisoned(model, images, labels, phase):
        calls["n"] += 1
        out = original(model, images, labels, phase)
        if calls["n"] == per_epoch + 3:  # epoch 2, batch 3
            out.loss = out.loss * float("nan")
        return out

    trainer.method.step = poisoned
    with pytest.raises(CsgError, match="epoch 2, batch 3"):
        trainer.fit()
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["meta"]["epoch"] == 1


def test_existing_run_is_not_overwritten_without_resume(tiny_csg_run, capsys):
    code = main(["train", *BASE, "--out", str(tiny_csg_run), "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]


def test_resume_with_changed_settings_is_refused(tiny_idx_dir, tiny_csg_run, capsys):
    code = main(["train", *BASE, "--data-dir", str(tiny_idx_dir), "--out", str(tiny_csg_run), "--resume",
                 "--lr", "0.3", "--method", "csg", "--epochs", "3"])
    assert code == 2
    assert "lr" in capsys.readouterr().err


@pytest.mark.parametrize("flags,needle", [
    (["--arch", "resnet19"], "resnet18"),
    (["--rho", "0.05"], "below 1/C"),
    (["--freeze-below", "layer9"], "layer9"),
    (["--method", "csg", "--m1", "3", "--m2", "1", "--method", "csg-fixed"], "m1"),
])
def test_bad_input_gets_one_line_and_exit_2(tiny_idx_dir, tmp_path, capsys, flags, needle):
    code = main(["train", *BASE, "--data-dir", str(tiny_idx_dir), "--epochs", "1", "--out",
                 str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("csg: error:") and needle in err[0]


def test_missing_data_folder_gives_the_install_command(tmp_path, capsys):
    code = main(["train", *BASE, "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1", "--out",
                 str(tmp_path / "r")])
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_model_with_wrong_class_count_is_refused(tiny_idx_dir, tmp_path):
    from csg.backbones import build_model

    model = build_model("resnet20", 7, 1)
    with pytest.raises(CsgError, match="7 classes"):
        Trainer(cfg_for(tiny_idx_dir, tmp_path / "r", method="std"), model=model)


def test_run_directory_after_train_and_evaluate(tiny_csg_run):
    run = RunDir(tiny_csg_run)
    cfg = run.config
    assert cfg["method"] == "csg" and cfg["num_classes"] == 10 and "torch" in cfg["versions"]
    metrics = run.metrics()
    for key in ("accuracy", "num_classes", "num_filters", "num_samples", "csg_accuracy", "l1_density", "mis",
                "l1_interval", "gate_mi_agreement"):
        assert key in metrics, key
    feats = run.features()
    assert feats["pooled"].shape == (metrics["num_samples"], 64)
    assert (feats["pooled"] >= 0).all()
    assert np.array_equal(feats["predictions"], feats["logits"].argmax(1))
    assert metrics["accuracy"] == pytest.approx((feats["predictions"] == feats["labels"]).mean())
    assert run.gate().shape == (10, 64) and run.mi_matrix().shape == (64, 10)
    # the saved model reproduces the saved logits
    model = run.load_model()
    test_set = run.load_dataset("test")
    with torch.no_grad():
        logits = model.logits(test_set.images[:8].float() / 255)
    np.testing.assert_allclose(logits.numpy(), feats["logits"][:8], rtol=1e-4, atol=1e-4)


def test_python_m_csg_works_like_csg():
    out = subprocess.run([sys.executable, "-m", "csg", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout
