"""torchrun data parallelism on the CPU (gloo): same result as one process, identical ranks, clean failure.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m csg train`` on
64 images of the tiny Fashion-MNIST-format set (conftest.py) with resnet20, 2 steps per epoch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from csg.training.checkpoint import read_checkpoint
from csg.training.config import resolve_config
from csg.runs.train import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

# --batch-size is the GLOBAL batch: one process takes 32 images per step, each of two ranks 16.
FLAGS = ["--data", "fashion-mnist", "--subset", "64", "--test-subset", "40", "--arch", "resnet20",
         "--method", "csg", "--schedule", "alternate", "--warmup", "0", "--period", "2", "--batch-size", "32", "--lr", "0.05", "--lr-schedule", "constant",
         "--no-progress", "--device", "cpu", "--seed", "0", "--channels-last", "false"]

# Tolerance of "the same result": the float32 rounding of a 2-rank run (sums split over ranks, batch-norm
# statistics from all-reduced sums) is amplified by 4 steps of SGD/Adam. Laying the same single-process run
# out channels-last instead moves the weights by ||dw||/||w|| ~ 6e-4 and the gate by ~5e-4 on this set;
# the bounds are ten times that. Forgetting to average (summing) the gradients, per-rank batch-norm statistics
# or a per-rank batch of 32 each move the weights by more than 1e-2.
WEIGHT_RTOL = 5e-3
GATE_ATOL = 5e-3


def _torchrun(args: list[str], timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "csg",
           "train", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, **popen)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CSG_DIST_TIMEOUT="30")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(run / "checkpoint.safetensors")
    return {k: v.double() for k, v in tensors.items()
            if k.startswith("model/") and v.is_floating_point() and "running_" not in k}


def _relative_distance(a: dict, b: dict) -> float:
    x = torch.cat([a[k].reshape(-1) for k in sorted(a)])
    y = torch.cat([b[k].reshape(-1) for k in sorted(a)])
    return float((x - y).norm() / x.norm())


def _single(tiny_idx_dir, out: Path, epochs: int):
    values = dict(data="fashion-mnist", data_dir=str(tiny_idx_dir), subset=64, test_subset=40, arch="resnet20",
                  method="csg", schedule="alternate", warmup=0, period=2, batch_size=32, lr=0.05, lr_schedule="constant", device="cpu",
                  seed=0, channels_last=False, epochs=epochs, out=str(out), evaluate=False, threads=1)
    return train(resolve_config(values), progress=False)


@pytest.fixture(scope="module")
def two_rank_run(tiny_idx_dir, tmp_path_factory):
    """2 epochs (STD, then CSG) in two processes, evaluated by rank 0."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    proc = _torchrun([*FLAGS, "--data-dir", str(tiny_idx_dir), "--epochs", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_two_ranks_match_one_process_with_the_same_global_batch(two_rank_run, tiny_idx_dir, tmp_path):
    out, _ = two_rank_run
    single = _single(tiny_idx_dir, tmp_path / "single", epochs=2)
    log2, log1 = [r for r in (out / "log.jsonl").read_text().splitlines()], single.log()
    import json

    log2 = [json.loads(r) for r in log2]
    assert [r["phase"] for r in log2] == [r["phase"] for r in log1] == ["std", "csg"]
    for r2, r1 in zip(log2, log1):
        # every rank holds rank 0's weights and gate bit for bit after each epoch
        assert r2["rank_weight_spread"] == 0.0 and r2["rank_gate_spread"] == 0.0
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-3)
        # the quick evaluation is gathered from both ranks' halves of the test split
        assert abs(r2["test_accuracy"] - r1["test_accuracy"]) <= 1 / 40 + 1e-9
    w2, w1 = _weights(out), _weights(single.path)
    assert _relative_distance(w1, w2) < WEIGHT_RTOL
    gate_diff = (w2["model/gate.weight"] - w1["model/gate.weight"]).abs().max()
    assert float(gate_diff) < GATE_ATOL
    # the gate is a projected gate: every column's max is 1
    assert torch.allclose(w2["model/gate.weight"].max(0).values, torch.ones(64, dtype=torch.float64))


def test_only_rank_zero_writes_and_evaluation_covers_the_whole_test_split(two_rank_run):
    out, proc = two_rank_run
    import numpy as np

    features = np.load(out / "features.npz")
    assert features["pooled"].shape == (40, 64) and len(features["labels"]) == 40
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        [".lock", "config.json", "checkpoint.safetensors", "log.jsonl", "gate.npy", "features.npz",
         "mi_matrix.npy", "metrics.json"])
    assert proc.stderr.count("epoch   2/2") == 1  # one epoch line, from rank 0


def test_resume_under_torchrun_continues_the_run(two_rank_run, tiny_idx_dir, tmp_path):
    """Resuming the 2-epoch run to 3 epochs (constant lr) equals 3 epochs in one process."""
    import shutil

    src, _ = two_rank_run
    out = tmp_path / "resumed"
    shutil.copytree(src, out)
    proc = _torchrun([*FLAGS, "--data-dir", str(tiny_idx_dir), "--epochs", "3", "--no-evaluate", "--resume",
                      "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = _single(tiny_idx_dir, tmp_path / "single3", epochs=3)
    import json

    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert _relative_distance(_weights(single.path), _weights(out)) < WEIGHT_RTOL


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started (read from their environment)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(entry.name)
    return ranks


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_rank_ends_the_job_with_a_clear_message(tiny_idx_dir, tmp_path):
    out = tmp_path / "killed"
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "csg",
           "train", *FLAGS, "--data-dir", str(tiny_idx_dir), "--epochs", "200", "--eval-every", "0",
           "--out", str(out)]
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "epoch   1/200" not in err_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, err_path.read_text()[-2000:]
            time.sleep(0.2)
        ranks = _rank_pids(proc.pid)
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        start = time.monotonic()
        code = proc.wait(timeout=60)  # no hang: torchrun stops rank 0, which names the failure
        assert time.monotonic() - start < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err_path.read_text()
    assert code != 0
    # the one line csg prints on rank 0: who stopped, where the checkpoint is, how to resume
    # (torchrun's SIGTERM after the death, or the broken collective if rank 0 notices first)
    lines = [line for line in text.splitlines() if line.startswith("csg: error: rank")]
    assert lines and all("--resume" in line and str(out) in line for line in lines), text[-3000:]
    assert "another rank failed" in lines[0] or "rank 1 of 2 stopped" in lines[0]
    assert (out / "checkpoint.safetensors").is_file()  # the last good checkpoint survives
