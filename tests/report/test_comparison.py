"""csg compare's paired differences from STD: hand-built runs with known numbers."""
import json

import numpy as np
import pytest
from scipy import stats

from csg.report import compare


def _run(path, method, seed, accuracy, mis):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"method": method, "data": "d", "arch": "a", "seed": seed,
                                                  "num_classes": 10}))
    (path / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "mis": mis, "mis_ceiling": 0.325,
                                                   "num_classes": 10}))
    return path


def test_differences_are_paired_by_seed_with_a_t_interval(tmp_path):
    std = {0: (0.910, 0.210), 1: (0.912, 0.220), 2: (0.908, 0.215)}
    new = {0: (0.913, 0.280), 1: (0.911, 0.290), 2: (0.912, 0.270)}
    paths = [_run(tmp_path / f"std-seed{s}", "std", s, *v) for s, v in std.items()]
    paths += [_run(tmp_path / f"new-seed{s}", "csg", s, *v) for s, v in new.items()]
    paths.append(_run(tmp_path / "new-seed7", "csg", 7, 0.5, 0.5))    # no STD run of seed 7: not paired
    result, _ = compare(paths)
    assert result["schema"] == "csg.comparison/2"
    diffs = {d["metric"]: d for d in result["differences"] if d["method"] == "csg"}
    d_acc = np.array([new[s][0] - std[s][0] for s in (0, 1, 2)])
    lo, hi = stats.t.interval(0.95, df=2, loc=d_acc.mean(), scale=stats.sem(d_acc))
    acc = diffs["accuracy"]
    assert acc["kind"] == "t" and acc["n"] == 3 and acc["seeds"] == [0, 1, 2]
    assert acc["mean"] == pytest.approx(d_acc.mean()) and acc["low"] == pytest.approx(lo) and acc["high"] == pytest.approx(hi)
    assert acc["excludes_zero"] == (lo > 0 or hi < 0)
    # gap closed, per seed against that seed's own STD run
    gaps = np.array([(new[s][1] - std[s][1]) / (0.325 - std[s][1]) for s in (0, 1, 2)])
    gap = diffs["gap_closed"]
    assert gap["per_seed"] == pytest.approx(list(gaps)) and gap["mean"] == pytest.approx(gaps.mean())
    assert gap["excludes_zero"]
    # Table 1's gap closed: each run against the STD runs' mean MIS
    row = next(r for r in result["rows"] if r["method"] == "csg")
    base = np.mean([v[1] for v in std.values()])
    want = [(new[s][1] - base) / (0.325 - base) for s in (0, 1, 2)] + [(0.5 - base) / (0.325 - base)]
    assert row["values"]["gap_closed"]["mean"] == pytest.approx(np.mean(want))


def test_equal_differences_over_seeds_claim_no_interval(tmp_path):
    # the clutter runs: CSG - STD accuracy was +0.011 in both seeds; sd 0 gave a zero-width "decided" interval
    paths = [_run(tmp_path / "std-seed0", "std", 0, 0.8175, 0.2), _run(tmp_path / "std-seed1", "std", 1, 0.8200, 0.2),
             _run(tmp_path / "csg-seed0", "csg", 0, 0.8285, 0.25), _run(tmp_path / "csg-seed1", "csg", 1, 0.8310, 0.27)]
    result, _ = compare(paths)
    acc = next(d for d in result["differences"] if d["metric"] == "accuracy")
    assert acc["per_seed"] == pytest.approx([0.011, 0.011]) and acc["n"] == 2
    assert acc["kind"] == "t, equal differences" and not acc["excludes_zero"]
    assert acc["low"] != acc["low"]                       # NaN: no bound
    mis = next(d for d in result["differences"] if d["metric"] == "mis")
    assert mis["kind"] == "t" and mis["high"] > mis["low"]   # unequal differences keep their t interval
    from csg.report.markdown import comparison_markdown
    assert "[no interval: 2 equal differences]" in comparison_markdown(result)


def test_two_runs_of_one_method_and_seed_are_named_and_can_be_left_out(tmp_path):
    # Two trainings of CSG seed 0 (say, from two comparison files) count as two seeds in the mean and std,
    # while only the later one is paired with STD seed 0: the comparison says so, naming both.
    from csg.core.errors import CsgError

    paths = [_run(tmp_path / "a" / "std-seed0", "std", 0, 0.91, 0.21), _run(tmp_path / "a" / "csg-seed0", "csg", 0,
                                                                          0.92, 0.25),
             _run(tmp_path / "b" / "csg-seed0", "csg", 0, 0.90, 0.30)]
    both, _ = compare(paths)
    note = next(n for n in both["notes"] if n.startswith("two csg runs of seed 0 on d / a"))
    assert "a/csg-seed0" in note and "b/csg-seed0" in note and "FILE.json:LABEL" in note
    first, _ = compare(paths[:2])
    assert not [n for n in first["notes"] if n.startswith("two ")]
    (tmp_path / "first.json").write_text(json.dumps(first))
    merged, _ = compare([tmp_path / "first.json", paths[2]])
    assert any("recorded in" in n and "first.json" in n for n in merged["notes"])
    # FILE.json:LABEL,... takes some of a file's runs: here STD alone, beside the other CSG seed 0
    picked, _ = compare([f"{tmp_path / 'first.json'}:std-seed0", paths[2]])
    assert [(r["method"], r["values"]["accuracy"]) for r in picked["runs"]] == [("std", 0.91), ("csg", 0.90)]
    assert not [n for n in picked["notes"] if n.startswith("two ")]
    diff = next(d for d in picked["differences"] if d["metric"] == "accuracy")
    assert diff["per_seed"] == pytest.approx([0.90 - 0.91])
    with pytest.raises(CsgError, match=r"first\.json records no run csg-seed9; it has std-seed0, csg-seed0"):
        compare([f"{tmp_path / 'first.json'}:csg-seed9"])


def test_one_seed_accuracy_difference_bootstraps_the_same_test_images(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 3000)
    paths = []
    for name, method, p in (("std", "std", 0.80), ("csg", "csg", 0.85)):
        path = _run(tmp_path / name, method, 0, p, 0.2)
        correct = rng.random(3000) < p
        pred = np.where(correct, labels, (labels + 1) % 10)
        np.savez(path / "features.npz", pooled=rng.random((3000, 4)), labels=labels, predictions=pred,
                 logits=np.zeros((3000, 10)))
        paths.append(path)
    result, _ = compare(paths, reps=400)
    acc = next(d for d in result["differences"] if d["metric"] == "accuracy")
    assert acc["kind"] == "bootstrap" and acc["n"] == 3000
    assert acc["low"] < acc["mean"] < acc["high"] and acc["excludes_zero"]


def test_one_seed_black_box_difference_pairs_the_images_both_models_were_attacked_on(tmp_path):
    # Both models attacked on 100 images, 96 of them the same (the first correctly classified of one seeded
    # order). Success is equal on the shared images and on the 4 own ones: the difference is 0, and with the
    # shared images paired its interval is [-4, +4] pt at most (the own images alone can move it), not the
    # +-8 pt of two independent samples.
    rng = np.random.default_rng(5)
    shared = rng.random(96) < 0.08
    paths = []
    for name, method, own_ids in (("std", "std", [200, 201, 202, 203]), ("csg", "csg", [300, 301, 302, 303])):
        path = _run(tmp_path / name, method, 0, 0.9, 0.2)
        ids = np.concatenate([np.arange(96), own_ids])
        success = np.concatenate([shared, [True, False, False, False]])
        order = rng.permutation(100)
        np.savez(path / "adversarial.npz", **{"one-pixel.ids": ids[order], "one-pixel.success": success[order]})
        (path / "adversarial.json").write_text(json.dumps({
            "schema": "csg.adversarial/2", "clean_accuracy": 0.9, "detection": {}, "attack_success": {},
            "blackbox": {"one-pixel": {"success_rate": float(success.mean()), "attempted": 100}},
            "arrays_file": "adversarial.npz"}))
        paths.append(path)
    result, _ = compare(paths, reps=1000)
    diff = next(d for d in result["differences"] if d["metric"] == "blackbox.one-pixel")
    assert diff["kind"] == "bootstrap (matched, 96 shared)" and diff["mean"] == 0
    assert -0.04 <= diff["low"] <= 0 <= diff["high"] <= 0.04


def test_arrays_from_another_call_than_their_summary_are_not_resampled(tmp_path):
    """json and npz are two atomic writes; a kill between them leaves a new npz beside the old json. The
    summary records its npz's sha256, and compare resamples only a matching file (and says so otherwise)."""
    from csg.core.io import file_sha256

    rng = np.random.default_rng(1)
    paths = []
    for name, method in (("std", "std"), ("csg", "csg")):
        path = _run(tmp_path / name, method, 0, 0.9, 0.2)
        success = rng.random(100) < 0.3
        np.savez(path / "adversarial.npz", **{"one-pixel.ids": np.arange(100), "one-pixel.success": success})
        (path / "adversarial.json").write_text(json.dumps({
            "schema": "csg.adversarial/2", "clean_accuracy": 0.9, "detection": {}, "attack_success": {},
            "blackbox": {"one-pixel": {"success_rate": float(success.mean()), "attempted": 100}},
            "arrays_file": "adversarial.npz", "arrays_sha256": file_sha256(path / "adversarial.npz")}))
        paths.append(path)

    def one_pixel(result):
        return [d for d in result["differences"] if d["metric"] == "blackbox.one-pixel"]

    result, _ = compare(paths, reps=200)
    assert one_pixel(result)[0]["kind"].startswith("bootstrap (matched") and not result["notes"]
    np.savez(paths[1] / "adversarial.npz", **{"one-pixel.ids": np.arange(100),        # another call's file
                                              "one-pixel.success": np.ones(100, bool)})
    result, _ = compare(paths, reps=200)
    assert not any(d["kind"].startswith("bootstrap") for d in one_pixel(result))
    assert [n for n in result["notes"] if "adversarial.npz is not the file" in n] and \
        result["notes"][0].startswith("csg:")
