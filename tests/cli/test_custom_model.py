"""``csg train --model package.module:factory``: a user's network, built by import, reopened by every command.

The network is ``tests/custom_model.py``'s ``make_net`` (keyword arguments through ``--model-kwargs``); each
command runs as ``python -m csg`` in a subprocess with src/ and tests/ on PYTHONPATH, on a tiny budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["--model", "custom_model:make_net", "--model-kwargs", '{"width": 6}', "--feature-layer", "features.3",
         "--head", "classifier"]


def csg_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "csg", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _train_args(data_dir, out, *extra):
    return ["train", "--data", "fashion-mnist", "--data-dir", data_dir, "--subset", "40", "--test-subset", "20",
            "--epochs", "1", "--warmup", "0", "--batch-size", "10", "--device", "cpu", "--no-progress",
            "--out", out, *extra]


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory, tiny_idx_dir) -> Path:
    out = tmp_path_factory.mktemp("custom") / "run"
    done = csg_cli(*_train_args(tiny_idx_dir, out, *MODEL))
    assert done.returncode == 0, done.stderr
    return out


def test_config_records_the_model(custom_run):
    cfg = json.loads((custom_run / "config.json").read_text())
    assert cfg["model_builder"] == "custom_model:make_net" and cfg["model_kwargs"] == {"width": 6}
    assert cfg["feature_layer"] == "features.3" and cfg["head"] == "classifier" and cfg["num_filters"] == 6
    assert (custom_run / "metrics.json").is_file()  # train evaluated it: evaluate reopened the model


def test_every_command_reopens_the_custom_model(custom_run, tiny_idx_dir, tmp_path):
    from PIL import Image

    image = tmp_path / "one.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(image)
    r = str(custom_run)
    commands = [
        ["evaluate", r, "--device", "cpu", "--no-progress"],
        ["analyze", r, "--device", "cpu"],
        ["localize", r, "--data", "fashion-mnist-clutter", "--data-dir", tiny_idx_dir, "--max-images", "10",
         "--methods", "activmap", "--allow-unconverged", "--device", "cpu"],
        ["attack", r, "--attacks", "fgsm", "--train-sizes", "2", "--test-size", "2", "--repeats", "1",
         "--success-samples", "4", "--blackbox", "none", "--trees", "5", "--device", "cpu", "--no-progress"],
        ["explain", r, image, "--top", "2", "--device", "cpu"],
        ["graph", r, "--images", "10", "--iterations", "1", "--nodes-per-filter", "2", "--num-negatives", "4",
         "--repeats", "1", "--no-progress"],
        ["atlas", r, "--top-k", "2", "--level-images", "4"],
        ["report", r],
        ["compare", "--out", tmp_path / "cmp", r],
    ]
    for args in commands:
        done = csg_cli(*args)
        assert done.returncode == 0, (args[0], done.stderr[-2000:])
    for name in ("metrics.json", "analysis.json", "localization.json", "adversarial.json", "explain/one.json",
                 "graph.json", "atlas/index.html", "report/index.html"):
        assert (custom_run / name).exists(), name
    assert "custom_model:make_net" in (tmp_path / "cmp" / "index.html").read_text()


def test_resume_of_a_custom_run_and_of_an_arch_run(custom_run, tiny_idx_dir, tmp_path):
    done = csg_cli(*_train_args(tiny_idx_dir, custom_run, *MODEL, "--resume", "--epochs", "2", "--no-evaluate"))
    assert done.returncode == 0, done.stderr
    changed = csg_cli(*_train_args(tiny_idx_dir, custom_run, *MODEL[:-3], "features.1", "--resume",
                                   "--epochs", "3", "--no-evaluate"))
    assert changed.returncode == 2 and "feature_layer was 'features.3'" in changed.stderr
    # every run records its feature_layer: a registered --arch run resumes without --feature-layer
    arch = tmp_path / "arch"
    base = _train_args(tiny_idx_dir, arch, "--arch", "resnet20", "--no-evaluate")
    assert csg_cli(*base).returncode == 0
    assert json.loads((arch / "config.json").read_text())["feature_layer"]
    done = csg_cli(*base, "--resume", "--epochs", "2")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("flags,named", [
    (["--model", "no_such_module:make_net", "--feature-layer", "features.3"], "no_such_module:make_net"),
    (["--model", "custom_model:no_such_factory", "--feature-layer", "features.3"], "custom_model:no_such_factory"),
    (["--model", "custom_model:make_net", "--feature-layer", "features.9"], "'features.9'"),
    (["--model", "custom_model:make_net", "--feature-layer", "features.3", "--head", "nohead"], "'nohead'"),
    (["--model", "custom_model:make_net", "--feature-layer", "features.3", "--model-kwargs", "[8]"],
     "--model-kwargs"),
    (["--model", "custom_model:make_net", "--feature-layer", "features.3", "--model-kwargs", '{"depth": 2}'],
     "depth"),
    (["--model", "custom_model:make_net"], "--feature-layer"),
    (["--head", "classifier"], "--model"),
])
def test_bad_model_is_one_line(flags, named, tiny_idx_dir, tmp_path):
    done = csg_cli(*_train_args(tiny_idx_dir, tmp_path / "bad", *flags))
    err = done.stderr.strip()
    assert done.returncode == 2 and named in err
    assert err.startswith("csg: error:") and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_run_of_python_data_says_how_to_pass_it(tmp_path):
    import torch
    from torch.utils.data import TensorDataset

    import csg

    images = torch.randint(0, 256, (24, 1, 12, 12), dtype=torch.uint8)
    labels = torch.arange(24) % 3
    cfg = csg.TrainConfig(arch="resnet20", epochs=1, warmup=0, batch_size=12, out=str(tmp_path / "py"),
                          device="cpu", evaluate=False, eval_every=0)
    run = csg.train(cfg, progress=False, train_set=TensorDataset(images, labels),
                    test_set=TensorDataset(images, labels))
    for command in (["evaluate", run.path], ["localize", run.path], ["graph", run.path]):
        done = csg_cli(*command)
        err = done.stderr.strip()
        assert done.returncode == 2 and len(err.splitlines()) == 1, (command, err)
        assert "trained on your own data from Python" in err and "dataset=" in err


def test_a_run_of_a_python_network_object_says_how_to_make_it_reloadable(tiny_idx_dir, tmp_path):
    """``csg.train(cfg, model=GatedClassifier(net, ...))`` without ``model_builder``: the run records the
    network's class, and commands say in one line that they cannot rebuild it and how to make them able to,
    instead of loading the checkpoint into the registered ``arch`` (a shape-mismatch traceback)."""
    import csg
    from custom_model import make_net

    model = csg.GatedClassifier(make_net(width=6), "features.3", 10, head="classifier")
    cfg = csg.TrainConfig(arch="resnet20", data="fashion-mnist", data_dir=str(tiny_idx_dir), subset=40,
                          test_subset=20, epochs=1, warmup=0, batch_size=10, out=str(tmp_path / "obj"),
                          device="cpu", evaluate=False, eval_every=0)
    run = csg.train(cfg, model=model, progress=False)
    assert json.loads((Path(run.path) / "config.json").read_text())["model_object"] == "custom_model:TinyNet"
    done = csg_cli("evaluate", run.path)
    err = done.stderr.strip()
    assert done.returncode != 0 and len(err.splitlines()) == 1, err
    assert "network object passed from Python (custom_model:TinyNet)" in err and "model_builder" in err
