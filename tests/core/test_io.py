"""Atomic writes, the strict JSON cleaner and the torn-line-tolerant log reader."""
import json
import math
import os

import numpy as np
import pytest

from csg.core.errors import CsgError
from csg.core.io import (append_jsonl, atomic_save_npz, atomic_write_bytes, atomic_write_json, jsonable, read_json,
                         read_jsonl)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"accuracy": 0.9})

    def broken(fh):
        fh.write(b'{"accura')
        raise OSError(28, "No space left on device")

    from csg.core.io import atomic_write_with

    with pytest.raises(OSError):
        atomic_write_with(target, broken)
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_jsonable_is_strict_json():
    data = jsonable({"a": np.float32(0.5), "b": np.array([1, 2]), "c": float("nan"), "d": (1, math.inf), 3: None})
    assert data == {"a": 0.5, "b": [1, 2], "c": None, "d": [1, None], "3": None}
    json.dumps(data, allow_nan=False)
    with pytest.raises(TypeError):
        jsonable({"x": object()})


def test_read_json_names_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(CsgError, match=r"x.json is not valid JSON .* re-run"):
        read_json(bad)
    with pytest.raises(CsgError, match="missing"):
        read_json(tmp_path / "none.json")


def test_log_survives_a_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"epoch": 1, "loss": float("nan")})
    append_jsonl(log, {"epoch": 2})
    with open(log, "a") as fh:
        fh.write('{"epoch": 3, "lo')  # a crash in the middle of the third line
    assert read_jsonl(log) == [{"epoch": 1, "loss": None}, {"epoch": 2}]


def test_npz_and_bytes_roundtrip(tmp_path):
    atomic_save_npz(tmp_path / "a.npz", x=np.arange(5))
    with np.load(tmp_path / "a.npz") as z:
        assert z["x"].tolist() == [0, 1, 2, 3, 4]
    atomic_write_bytes(tmp_path / "b.bin", b"abc")
    assert (tmp_path / "b.bin").read_bytes() == b"abc"
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tmp_path / "b.bin").st_mode & 0o777 == 0o666 & ~mask     # not mkstemp's 0600
