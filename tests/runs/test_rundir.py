"""The run directory: what is a run, corrupt files, merged metrics, one writer at a time."""
import numpy as np
import pytest

from csg.core.errors import CsgError
from csg.core.lock import RunLock
from csg.runs.rundir import RunDir


def test_a_folder_without_config_is_not_a_run(tmp_path):
    with pytest.raises(CsgError, match=r"is not a run directory .*csg train --out"):
        RunDir(tmp_path)


def test_metrics_merge_and_corrupt_features(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    run = RunDir(tmp_path)
    run.update_metrics({"accuracy": 0.9})
    assert run.update_metrics({"mis": 0.2}) == {"accuracy": 0.9, "mis": 0.2}
    with pytest.raises(CsgError, match="csg evaluate"):
        run.features()
    (tmp_path / "features.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CsgError, match="corrupt"):
        run.features()
    run.write_npz("features.npz", pooled=np.ones((2, 3)), labels=np.zeros(2))
    assert run.features()["pooled"].shape == (2, 3)


def test_one_writer_per_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    run = RunDir(tmp_path)
    with run.lock():
        with run.lock():       # re-entrant in one process (train, then evaluate)
            pass
    # another process: see tests/training/test_faults.py; a file where a folder is meant:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CsgError, match="is a file, not a run directory"):
        RunLock(tmp_path / "file").__enter__()
