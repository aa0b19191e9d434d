"""docs/tutorial.ipynb runs top to bottom on a tiny budget (and is kept without outputs in git)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
FASHION = Path(os.environ.get("CSG_DATA_DIR") or "/usr/share/datasets/fashion-mnist")


def test_the_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists() and
                    not (FASHION / "train-images-idx3-ubyte").exists(),
                    reason="Fashion-MNIST is not installed (bash scripts/install.sh installs dataset-fashion-mnist)")
def test_the_tutorial_runs_on_a_tiny_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("CSG_TUTORIAL_EPOCHS", "2")
    monkeypatch.setenv("CSG_TUTORIAL_SUBSET", "200")
    monkeypatch.setenv("CSG_TUTORIAL_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel is a new process: it must import this checkout's csg, with one thread as the tests do
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.perf_counter() - start < 60
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "CSG: accuracy" in printed and "L1-density" in printed and "CSG " in printed
    assert (tmp_path / "runs" / "csg" / "gate.npy").is_file()
