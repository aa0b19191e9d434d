"""`csg graph RUN` end to end on a tiny clutter run: files, schema, report and compare sections, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from csg.cli import main


@pytest.fixture(scope="module")
def clutter_run(tiny_idx_dir, tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("clutter-cache")
    old = os.environ.get("CSG_CACHE_DIR")
    os.environ["CSG_CACHE_DIR"] = str(cache)
    out = tmp_path_factory.mktemp("graph-run") / "run"
    code = main(["train", "--data", "fashion-mnist-clutter", "--data-dir", str(tiny_idx_dir), "--arch", "resnet20",
                 "--method", "std", "--epochs", "1", "--subset", "20", "--batch-size", "20", "--out", str(out),
                 "--no-progress", "--seed", "0", "--eval-every", "0", "--no-evaluate"])  # the graph needs no training
    assert code == 0
    yield out
    if old is None:
        os.environ.pop("CSG_CACHE_DIR", None)
    else:
        os.environ["CSG_CACHE_DIR"] = old


def test_csg_graph_writes_graph_json_npz_figures_and_report(clutter_run, tmp_path, capsys):
    code = main(["graph", str(clutter_run), "--images", "40", "--iterations", "2", "--nodes-per-filter", "2",
                 "--num-negatives", "10", "--repeats", "2", "--chunk", "16", "--parent-candidates", "40",
                 "--parents", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "estimated" in printed and "1-shot part error" in printed
    data = json.loads((clutter_run / "graph.json").read_text())
    assert data["schema"] == "csg.graph/1" and data["num_images"] == 40
    assert [lay["name"] for lay in data["layers"]] == ["layer1", "layer2", "layer3"]
    assert [lay["num_nodes"] for lay in data["layers"]] == [32, 64, 128]
    assert data["layers"][0]["parents_per_node"] == 3 and data["layers"][2]["parents_per_node"] is None
    assert data["layers"][1]["map_size"] == [32, 32] and data["layers"][1]["stride"] == [2.0, 2.0]
    assert "without an object" in data["negatives"]
    ev = data["evaluation"]
    assert set(ev["instability"]["nodes"]["per_layer"]) == {"layer1", "layer2", "layer3"}
    for k in ("1", "3"):
        assert set(ev["few_shot"][k]) >= {"nodes", "raw_filters", "fixed", "predictions", "per_layer"}
        assert 0 <= ev["few_shot"][k]["nodes"] < 1.5 and ev["few_shot"][k]["predictions"] > 0
    assert ev["landmarks"] == ["top", "bottom-left", "bottom-right"]
    for fig in data["figures"]:
        assert (clutter_run / fig["path"]).is_file()
    assert {f["path"] for f in data["figures"]} == {"figures/graph_patches.png", "figures/graph_overlay.png",
                                                   "figures/graph_evaluation.png"}
    with np.load(clutter_run / "graph.npz") as z:
        assert z["L0_mu"].shape == (32, 2) and z["L0_parents"].shape == (32, 3) and "L2_parents" not in z.files
        assert z["L1_scores"].shape == (64, 40) and z["L1_positions"].shape == (64, 40, 2)
        assert z["raw_L2_scores"].shape == (64, 40) and z["landmarks"].shape == (40, 3, 2)
        assert abs(float(z["L2_scores"].mean()) - 1.0) < 1e-4
        assert int(z["L0_parents"].max()) < 64
    metrics = json.loads((clutter_run / "metrics.json").read_text())
    assert metrics["graph_instability_nodes"] == ev["instability"]["nodes"]["mean"]
    assert "graph_3shot_raw" in metrics
    # the report and the comparison show it
    assert main(["report", str(clutter_run)]) == 0
    page = (clutter_run / "report" / "index.html").read_text()
    assert "Explanatory graph (graph.json)" in page and "Location instability" in page
    assert main(["compare", str(clutter_run), "--out", str(tmp_path / "cmp")]) == 0
    cmp = (tmp_path / "cmp" / "index.html").read_text()
    assert "Explanatory graph (graph.json), run by run" in cmp and "1-shot nodes" in cmp


def test_csg_graph_bad_input_is_one_line(clutter_run, capsys):
    assert main(["graph", str(clutter_run), "--layers", "layer1,nolayer"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csg: error:") and "nolayer" in err and "Traceback" not in err
    assert main(["graph", str(clutter_run), "--images", "0"]) == 2
    assert main(["graph", str(clutter_run), "--rho", "0.1,-1"]) == 2
    assert main(["graph", str(clutter_run), "--negatives", "missing.npy"]) == 2
    assert main(["graph", str(clutter_run), "--max-minutes", "-1"]) == 2
    assert "--max-minutes" in capsys.readouterr().err  # an estimate over the limit: test_mine_graph_refuses_bad_input


def test_every_link_of_the_overlay_ends_at_a_drawn_node(tmp_path, monkeypatch):
    """Lines go from a layer's top nodes to their best parents; a parent outside the upper layer's top nodes
    is drawn too (a ring), so no line ends in empty space."""
    import torch

    import csg.graph.figures as figures

    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.setdefault("fig", fig) and path)
    g = torch.Generator().manual_seed(0)
    lower = {"name": "low", "positions": torch.rand(20, 2, generator=g) * 27, "scores": torch.rand(20, generator=g),
             "parents": torch.randint(0, 30, (20, 4), generator=g)}
    upper = {"name": "up", "positions": torch.rand(30, 2, generator=g) * 27,
             "scores": torch.rand(30, generator=g), "parents": None}
    figures.graph_overlay_figure(tmp_path / "o.png", torch.zeros(1, 28, 28), [lower, upper], per_layer=3, links=2)
    ax = drawn["fig"].axes[0]
    nodes = np.concatenate([c.get_offsets() for c in ax.collections])
    ends = np.array([[line.get_xdata()[i], line.get_ydata()[i]] for line in ax.lines for i in (0, 1)])
    assert len(ends) == 3 * 2 * 2  # 3 nodes x 2 links x 2 ends
    gap = np.abs(ends[:, None, :] - nodes[None, :, :]).max(axis=2).min(axis=1)
    assert gap.max() < 1e-6
