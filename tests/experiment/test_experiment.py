"""csg experiment: the plan's commands, a whole smoke-profile protocol end to end, and resuming it."""
from __future__ import annotations

import json
import os
import subprocess
import sys


from csg.experiment import build_plan, get_profile


def test_the_plan_of_the_quick_profile(tmp_path):
    tasks = build_plan(get_profile("quick"), tmp_path)
    ids = [t.id for t in tasks]
    assert len([i for i in ids if i.startswith("train fashion-mnist/")]) == 15       # 5 methods x 3 seeds
    assert len([i for i in ids if i.startswith("attack ")]) == 5                      # seed 0 of each method
    assert len([i for i in ids if i.startswith("localize clutter/")]) == 15
    order = {t.id: k for k, t in enumerate(tasks)}
    for t in tasks:                                                                   # dependencies come first
        assert all(order[n] < order[t.id] for n in t.needs)
    train = next(t for t in tasks if t.id == "train fashion-mnist/csg-plus-seed2")
    assert train.shell().startswith("csg train --data fashion-mnist --arch resnet20 --epochs 12 --subset 20000")
    assert "--resume" not in train.shell()
    (tmp_path / "fashion-mnist" / "csg-plus-seed2").mkdir(parents=True)
    (tmp_path / "fashion-mnist" / "csg-plus-seed2" / "checkpoint.safetensors").write_bytes(b"")
    assert train.shell().endswith("--resume")                                         # an interrupted run continues


def test_smoke_protocol_end_to_end_and_resume(tiny_idx_dir, tmp_path):
    out = tmp_path / "exp"
    env = dict(os.environ, CSG_DATA_DIR=str(tiny_idx_dir), CSG_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "csg", "experiment", "--profile", "smoke", "--out", str(out), "--jobs", "2"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    status = json.loads((out / "experiment.json").read_text())
    assert status["schema"] == "csg.experiment/1"
    assert all(t["state"] == "done" for t in status["tasks"].values()), status
    cmp = json.loads((out / "fashion-mnist" / "compare" / "comparison.json").read_text())
    acc = next(d for d in cmp["differences"] if d["method"] == "csg" and d["metric"] == "accuracy")
    assert acc["kind"] == "t" and acc["n"] == 2                                       # two seeds, paired
    assert (out / "clutter" / "compare" / "index.html").is_file()
    assert (out / "fashion-mnist" / "std-seed0" / "adversarial.json").is_file()
    assert (out / "clutter" / "csg-seed1" / "localization.json").is_file()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already done" in again.stdout
    assert ", 2 to run," in again.stdout                                              # only the two comparisons
