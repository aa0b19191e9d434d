"""Fixtures of the atlas tests: one tiny trained run on fashion-mnist-clutter (so it has object masks)
with its atlas built by the CLI, shared by the run, page and browser tests of this folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def atlas_run(tmp_path_factory, tiny_idx_dir) -> Path:
    """A CSG resnet20 run (1 epoch on 40 clutter images, evaluated on 16) and its ``RUN/atlas``."""
    import os

    from csg.cli import main

    root = tmp_path_factory.mktemp("atlas-run")
    old = os.environ.get("CSG_CACHE_DIR")
    os.environ["CSG_CACHE_DIR"] = str(root / "cache")
    try:
        run = root / "run"
        code = main(["train", "--data", "fashion-mnist-clutter", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                     "--method", "csg", "--epochs", "1", "--warmup", "0", "--final-csg-epochs", "1", "--subset", "40", "--test-subset", "16",
                     "--batch-size", "40", "--out", str(run), "--no-progress", "--seed", "0", "--device", "cpu",
                     "--eval-every", "0"])
        assert code == 0
        assert main(["analyze", str(run)]) == 0
        code = main(["atlas", str(run), "--top-k", "3", "--no-progress", "--device", "cpu"])
        assert code == 0
    finally:
        if old is None:
            os.environ.pop("CSG_CACHE_DIR", None)
        else:
            os.environ["CSG_CACHE_DIR"] = old
    return run


@pytest.fixture(scope="session")
def atlas_compare(atlas_run, tmp_path_factory) -> Path:
    """``csg compare`` of the run and a copy of it (both with an atlas): its output folder."""
    from csg.cli import main

    root = tmp_path_factory.mktemp("atlas-compare")
    twin = root / "twin"
    shutil.copytree(atlas_run, twin)
    out = root / "cmp"
    assert main(["compare", str(atlas_run), str(twin), "--out", str(out)]) == 0
    return out
