"""``csg atlas`` on a tiny trained run: the files, the schema, the top images against features.npz,
the reuse of ``csg analyze`` results, the comparison page's links, and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _atlas(run: Path) -> dict:
    return json.loads((run / "atlas" / "atlas.json").read_text())


def test_atlas_files_and_schema(atlas_run):
    folder = atlas_run / "atlas"
    data = _atlas(atlas_run)
    assert data["schema"] == "csg.atlas/1"
    js = (folder / "atlas.data.js").read_text()
    assert js.startswith("window.CSG_ATLAS = ") and json.loads(js[len("window.CSG_ATLAS = "):].rstrip().rstrip(";")) == data
    html = (folder / "index.html").read_text()
    for asset in ("atlas.css", "atlas.data.js", "atlas.js"):
        assert asset in html and (folder / asset).is_file()
    assert "http://" not in html and "https://" not in html  # offline: nothing remote
    assert [layer["name"] for layer in data["layers"]] == ["layer3"]
    assert data["has_masks"] and data["has_gradmap"] and data["num_images"] == 16
    layer = data["layers"][0]
    k, kk = layer["num_filters"], layer["top_k"]
    assert (k, kk) == (64, 3)
    units = layer["units"]
    for key in ("mi", "drop"):
        assert np.asarray(units[key], dtype=float).shape == (k, 10)
    for key in ("top_images", "top_iou_object", "top_iou_clutter"):
        assert np.asarray(units[key], dtype=float).shape == (k, kk)
    assert all(0 <= v <= 1 for v in units["iou_object"] + units["iou_clutter"])
    # every sheet exists and has the size the layout says
    for lay in data["layers"]:
        sp = lay["sprites"]
        h, w = sp["tile"]
        bc, br = sp["block"]
        for kind, paths in sp["sheets"].items():
            assert len(paths) == -(-lay["num_filters"] // sp["per_sheet"])
            first = Image.open(folder / paths[0])
            cols = min(sp["columns"], lay["num_filters"])
            assert first.size[0] == cols * bc * (w + sp["gap"])


def test_top_images_are_the_largest_pooled_activations_of_features_npz(atlas_run):
    with np.load(atlas_run / "features.npz") as z:
        pooled, labels = z["pooled"], z["labels"]
    units = _atlas(atlas_run)["layers"][0]["units"]
    top = np.asarray(units["top_images"])
    for j in range(pooled.shape[1]):
        col = pooled[:, j]
        np.testing.assert_allclose(col[top[j]], np.sort(col)[::-1][:3])
        assert np.delete(col, top[j]).max() <= col[top[j]].min()
    np.testing.assert_array_equal(np.asarray(units["top_labels"]), labels[top])
    np.testing.assert_allclose(units["top_activations"], col_values(pooled, top), rtol=1e-3)


def col_values(pooled, top):
    return np.take_along_axis(pooled.T, top, axis=1)


def test_analysis_results_are_read_not_recomputed(atlas_run):
    data = _atlas(atlas_run)
    assert data["sources"]["ablation_drop"] == "analysis.npz" and data["sources"]["gate"] == "gate.npy"
    assert data["sources"]["mi"] == "mi_matrix.npy"
    units = data["layers"][0]["units"]
    with np.load(atlas_run / "analysis.npz") as z:
        np.testing.assert_allclose(np.asarray(units["drop"], dtype=float), z["ablation_drop"], rtol=1e-3, atol=1e-12)
        np.testing.assert_allclose(units["selectivity"], z["selectivity"], rtol=1e-3, atol=1e-6)
    gate = np.load(atlas_run / "gate.npy")
    mi = np.load(atlas_run / "mi_matrix.npy")
    spread = gate.max(0) - gate.min(0)
    expected_gate = [int(c) if s > 1e-6 else None for c, s in zip(gate.argmax(0), spread)]
    assert units["class_gate"] == expected_gate
    assert units["class_mi"] == mi.argmax(1).tolist()
    assert units["mi_max"] == pytest.approx(mi.max(1).tolist(), rel=1e-3)


def test_compare_links_each_atlas_and_the_side_by_side_page(atlas_compare):
    page = (atlas_compare / "index.html").read_text()
    assert 'id="atlases"' in page and "atlas_pair.html" in page
    assert page.count("atlas/index.html") >= 2
    pair = (atlas_compare / "atlas_pair.html").read_text()
    listed = json.loads(pair.split("var ATLASES = ", 1)[1].split(";\n", 1)[0])
    assert [a["label"] for a in listed] == ["run", "twin"]
    for entry in listed:
        assert (atlas_compare / entry["href"]).resolve().is_file()


@pytest.mark.parametrize("flags, named", [(["--top-k", "0"], "--top-k"), (["--quantile", "1.5"], "--quantile"),
                                          (["--layers", "nope"], "nope"), (["--thumb", "2"], "--thumb")])
def test_bad_options_fail_in_one_line(atlas_run, tmp_path, capsys, flags, named):
    from csg.cli import main

    assert main(["atlas", str(atlas_run), "--out", str(tmp_path / "x"), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("csg: error:") and named in err[0]


def test_not_a_run_fails_in_one_line(tmp_path, capsys):
    from csg.cli import main

    assert main(["atlas", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
