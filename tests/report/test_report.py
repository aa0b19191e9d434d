"""The per-run HTML report and the comparison page: files, images, numbers, and a real browser."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from csg.metrics import indicator_entropy, mis_ceiling
from csg.report import build_run_report, compare_runs
from csg.runs.rundir import RunDir
from fakes import make_fake_run


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.remote: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            v = a.get(key)
            if v and (v.startswith(("http:", "https:", "//")) or "://" in v):
                self.remote.append(v)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag in ("a", "link") and a.get("href"):
            self.links.append(a["href"])


def refs(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def assert_images_resolve(page: Path) -> int:
    r = refs(page)
    assert not r.remote, f"remote resources in {page}: {r.remote}"
    for src in r.imgs + [h for h in r.links if not h.startswith("#")]:
        assert (page.parent / unquote(src)).is_file(), f"{page.name} links {src}, which does not exist"
    return len(r.imgs)


CLASS_NAMES = [f"class{c}" for c in range(10)]
LOC_FIGURES = ("localization_gradmap.png", "localization_activmap.png", "localization_cam.png")
ADV_FIGURES = ("adversarial_examples.png", "adversarial_detection.png")


def write_localization_and_adversarial(run: RunDir, shift: float, seed: int) -> None:
    """localization.json and adversarial.json in the layout ``csg localize`` / ``csg attack`` write, built by
    the same scoring functions (on random IoUs and features, so fast), with their figures."""
    from csg.adversarial.detector import detection_experiment
    from csg.localization.scoring import filter_tables, score_filters, score_images

    rng = np.random.default_rng(seed)
    C, K, N = 10, 16, 60
    labels = np.arange(N) % C
    loc = {"schema": "csg.localization/2", "num_images": N, "data": "fashion-mnist-clutter", "split": "test"}
    arrays = {"image_index": np.arange(N), "labels": labels}
    for name, per_filter in (("gradmap", True), ("activmap", True), ("cam", False),
                             ("captum:GuidedBackprop", False)):
        if per_filter:
            ious = np.clip(rng.uniform(0, 0.6, (N, K)) + shift, 0, 1)
            res = score_filters(filter_tables(ious, labels, C), select_ap=20 if name == "gradmap" else 30,
                                class_names=CLASS_NAMES)
            res["num_images"] = N
        else:
            ious = np.clip(rng.uniform(0, 0.6, N) + shift, 0, 1)
            res = score_images(ious, labels, C, CLASS_NAMES)
        res["settings"] = {"method": name, "sigma": 5.0}
        loc[name] = res
        arrays[f"{name}_ious"] = ious.astype(np.float32)
    run.write_npz("localization.npz", **arrays)
    loc["figures"] = [{"path": f"figures/{f}", "caption": f"overlay {f}"} for f in LOC_FIGURES]
    src = run.path / "figures" / "analysis_r_s.png"
    for f in LOC_FIGURES + ADV_FIGURES:
        shutil.copy(src, run.figures_dir / f)
    run.write_json("localization.json", loc)

    def pool(n, gap):
        clean = rng.normal(0, 1, (n * 2, 4)).astype(np.float32)
        return {"clean": clean, "adv": clean + gap, "labels": np.arange(n * 2) % 2}

    det = {a: detection_experiment(pool(12, g), pool(6, g), [4, 8], 3, repeats=3, seed=seed, n_estimators=5)
           for a, g in (("fgsm", 0.3), ("pgd", 0.5))}
    run.write_json("adversarial.json", {
        "schema": "csg.adversarial/2", "clean_accuracy": 0.8 + shift, "detection": det,
        "attack_success": {a: {"success_rate": 0.9, "train_pairs": 16, "test_pairs": 6} for a in det},
        "blackbox": {"one-pixel": {"success_rate": 0.15 - shift, "attempted": 20, "succeeded": 3 - 2 * int(shift > 0),
                                   "mean_queries": 400.0},
                     "local-search": {"success_rate": 0.25 - shift, "attempted": 20, "succeeded": 5}},
        "settings": {"repeats": 3, "targeted": True}, "notes": ["a note from csg attack"],
        "figures": [{"path": f"figures/{f}", "caption": f"adversarial {f}"} for f in ADV_FIGURES]})


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    """Three synthetic runs (CSG seeds 0 and 1, STD seed 0); two analysed; one with localization and
    adversarial results written the way the other commands write them."""
    from csg.analysis import run_analyses

    base = tmp_path_factory.mktemp("fake-runs")
    runs = {name: RunDir(make_fake_run(base / name, method, seed))
            for name, method, seed in (("csg-s0", "csg", 0), ("csg-s1", "csg", 1), ("std-s0", "std", 0))}
    for name in ("csg-s0", "std-s0"):
        run_analyses(runs[name], classes=[0, 1])
    write_localization_and_adversarial(runs["csg-s0"], shift=0.1, seed=0)
    write_localization_and_adversarial(runs["std-s0"], shift=0.0, seed=1)
    return runs


def test_run_report_has_every_figure_and_the_numbers(fake_runs):
    run = fake_runs["csg-s0"]
    page = build_run_report(run)
    assert page == run.path / "report" / "index.html"
    n = assert_images_resolve(page)
    text = page.read_text(encoding="utf-8")
    analysis = json.loads((run.path / "analysis.json").read_text())
    # gate, MI, overlap, curves + every analysis, localization and adversarial figure
    assert n >= 4 + len(analysis["figures"]) + len(LOC_FIGURES) + len(ADV_FIGURES)
    for fig in analysis["figures"]:
        assert f"../{fig['path']}" in text
    for f in LOC_FIGURES + ADV_FIGURES:
        assert f"../figures/{f}" in text
    assert "localization.json" in text and "adversarial.json" in text
    m = run.metrics()
    for key in ("accuracy", "mis", "l1_density"):
        assert f"{m[key]:.4f}" in text
    for word in ("fashion-mnist", "resnet20", "Metrics (metrics.json)", "Training"):
        assert word in text
    for fig in ("report_gate.png", "report_mi.png", "report_overlap.png", "report_curves.png"):
        assert (run.path / "figures" / fig).is_file()


def test_report_of_a_run_without_gate_or_analysis(fake_runs):
    run = fake_runs["csg-s1"]
    page = build_run_report(run)
    assert_images_resolve(page)
    assert "csg analyze" in page.read_text()
    std = build_run_report(fake_runs["std-s0"])
    text = std.read_text()
    assert "no gate" in text and "report_gate.png" not in text


def test_a_missing_figure_is_a_visible_note_not_a_broken_image(fake_runs, tmp_path):
    run = RunDir(make_fake_run(tmp_path / "run", "std"))
    run.write_json("extra.json", {"figures": [{"path": "figures/not-there.png", "caption": "gone"}]})
    page = build_run_report(run)
    assert_images_resolve(page)
    assert "figure missing: not-there.png" in page.read_text()


def test_compare_table_aggregates_seeds_and_closes_the_gap(fake_runs, tmp_path):
    runs = [fake_runs[n].path for n in ("csg-s0", "csg-s1", "std-s0")]
    page = compare_runs(runs, tmp_path / "cmp")
    assert page == tmp_path / "cmp" / "index.html"
    assert_images_resolve(page)
    text = page.read_text(encoding="utf-8")
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"csg", "std"} and rows["csg"]["runs"] == ["csg-s0", "csg-s1"]
    m0, m1, ms = (fake_runs[n].metrics() for n in ("csg-s0", "csg-s1", "std-s0"))
    acc = [m0["accuracy"], m1["accuracy"]]
    assert rows["csg"]["values"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert rows["csg"]["values"]["accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1))
    assert f"{np.mean(acc):.4f} ± {np.std(acc, ddof=1):.4f}" in text
    gaps = [(m["mis"] - ms["mis"]) / (m["mis_ceiling"] - ms["mis"]) for m in (m0, m1)]
    assert rows["csg"]["values"]["gap_closed"]["mean"] == pytest.approx(np.mean(gaps))
    assert f"{ms['mis']:.4f}" in text
    # the localization totals of the one run that has them, and the detection table
    loc = json.loads((fake_runs["csg-s0"].path / "localization.json").read_text())
    assert rows["csg"]["values"]["loc.gradmap.avg_iou"]["mean"] == pytest.approx(loc["gradmap"]["avg_iou"])
    assert "GradMap Avg-IoU" in _section(text, "localization") and "Adversarial detection" in text
    # a Captum attribution scored by csg localize is a column of the same table, after csg's maps
    key = "loc.captum:GuidedBackprop.avg_iou"
    assert rows["csg"]["values"][key]["mean"] == pytest.approx(loc["captum:GuidedBackprop"]["avg_iou"])
    sec = _section(text, "localization")
    assert sec.index("CAM AP30") < sec.index("GuidedBackprop (Captum) Avg-IoU") < sec.index("GuidedBackprop (Captum) AP20")
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "GuidedBackprop (Captum) Avg-IoU" in md
    assert "GradMap" not in _section(text, "table")  # the totals are not repeated in Table 1
    # the published CIFAR-10 rows, with the paper's 23% of the gap closed
    assert "0.9192" in text and "0.1603" in text
    assert data["reference"][0]["gap_closed"] == pytest.approx(0.23, abs=0.005)
    # paired figures: two gates, three MI matrices, correlation and removal copied for the analysed runs
    figs = {Path(f["path"]).name for f in data["figures"]}
    assert {"csg-s0_gate.png", "csg-s1_gate.png", "std-s0_mi.png", "csg-s0_analysis_correlation.png",
            "std-s0_analysis_removal.png"} <= figs
    assert "csg analyze" in text  # csg-s1 was not analysed


def test_recorded_runs_of_an_earlier_comparison_join_a_new_one(fake_runs, tmp_path):
    # seed 0 compared (and its run directories gone), seed 1 trained later: the second comparison takes the
    # first one's comparison.json for seed 0 and pairs the seeds as if every run directory were there
    import shutil

    from csg.cli import main
    from csg.report.comparison import compare

    first = tmp_path / "first"
    copies = {n: tmp_path / "gone" / n for n in ("csg-s0", "std-s0")}
    for n, dst in copies.items():
        shutil.copytree(fake_runs[n].path, dst)
    compare_runs([copies["csg-s0"], copies["std-s0"]], first)
    shutil.rmtree(tmp_path / "gone")
    std1 = RunDir(make_fake_run(tmp_path / "std-s1", "std", 1))
    metrics = json.loads((std1.path / "metrics.json").read_text())   # seed 1's differences unlike seed 0's
    metrics.update(accuracy=metrics["accuracy"] - 0.01, mis=metrics["mis"] - 0.003)
    (std1.path / "metrics.json").write_text(json.dumps(metrics))
    direct, _ = compare([fake_runs["csg-s0"].path, fake_runs["std-s0"].path, fake_runs["csg-s1"].path, std1.path])
    merged, _ = compare([first / "comparison.json", fake_runs["csg-s1"].path, std1.path])
    assert [r["label"] for r in merged["runs"]] == ["csg-s0", "std-s0", "csg-s1", "std-s1"]
    assert merged["runs"][0]["recorded_in"] == str(first / "comparison.json")
    d_direct = {(d["method"], d["metric"]): d for d in direct["differences"]}
    d_merged = {(d["method"], d["metric"]): d for d in merged["differences"]}
    for key in (("csg", "accuracy"), ("csg", "mis"), ("csg", "gap_closed")):
        assert d_merged[key]["kind"] == "t" and d_merged[key]["seeds"] == [0, 1]
        for field in ("mean", "low", "high"):
            assert d_merged[key][field] == pytest.approx(d_direct[key][field], rel=1e-12)
    # the page and its tables are written for the mixture too; a file that is not a comparison is refused
    assert main(["compare", str(first / "comparison.json"), str(std1.path), "--out", str(tmp_path / "m")]) == 0
    # recorded again (the mixture's comparison.json as input): each run keeps the file it was first recorded in
    again, _ = compare([tmp_path / "m" / "comparison.json"])
    assert [r.get("recorded_in") for r in again["runs"]] == [str(first / "comparison.json")] * 2 + \
        [str(tmp_path / "m" / "comparison.json")]
    assert_images_resolve(tmp_path / "m" / "index.html")
    (tmp_path / "other.json").write_text('{"schema": "csg.localization/2"}')
    assert main(["compare", str(tmp_path / "other.json"), "--out", str(tmp_path / "x")]) == 2
    assert main(["compare", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2


def test_compare_cli_prints_the_page(fake_runs, tmp_path, capsys):
    from csg.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", str(fake_runs["csg-s0"].path), str(fake_runs["std-s0"].path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "index.html"))


def _section(text: str, anchor: str) -> str:
    """The HTML of ``<section id=anchor>``."""
    start = text.index(f'<section id="{anchor}">')
    return text[start:text.index("</section>", start)]


def test_run_report_has_localization_and_adversarial_sections(fake_runs):
    run = fake_runs["csg-s0"]
    page = build_run_report(run)
    text = page.read_text(encoding="utf-8")
    loc = json.loads((run.path / "localization.json").read_text())
    adv = json.loads((run.path / "adversarial.json").read_text())
    sec = _section(text, "localization")
    for m in ("gradmap", "activmap", "cam"):  # totals: Avg-IoU, AP20, AP30 of every method
        for key in ("avg_iou", "ap20", "ap30"):
            assert f">{loc[m]['total'][key]:.4f}<" in sec, (m, key)
    # per class: a CAM row and a GradMap class mean over its filters
    assert f">{loc['cam']['per_class']['class3']['avg_iou']:.4f}<" in sec
    picked = next(n for n, r in loc["gradmap"]["per_class"].items() if r["num_filters"])
    assert picked in sec and f">{loc['gradmap']['per_class'][picked]['ap20']:.4f}<" in sec
    assert "0.3035" in sec and "0.2606" in sec  # the paper's VOC GradMap totals beside
    imgs = refs(page).imgs
    for f in LOC_FIGURES:
        assert f"../figures/{f}" in imgs and f"../figures/{f}" in sec
    sec = _section(text, "adversarial")
    assert "80.00" in sec or "90.00" in sec
    assert f"{100 * adv['clean_accuracy']:.2f} %" in sec
    for attack, per_size in adv["detection"].items():  # mean ± spread over repeats, in percent, per size
        for n, e in per_size.items():
            assert f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}" in sec, (attack, n)
            assert f"error % at {n}/class" in sec
    assert re.search(r"one-pixel</td><td[^>]*>5\.0</td>", sec)  # 0.15 - 0.1 as percent
    assert re.search(r"local-search</td><td[^>]*>15\.0</td>", sec)
    assert "4.76" in sec and "a note from csg attack" in sec
    for f in ADV_FIGURES:
        assert f"../figures/{f}" in imgs and f"../figures/{f}" in sec
    assert_images_resolve(page)
    # once each: not repeated by the generic per-JSON sections
    assert text.count('<section id="localization">') == 1 and text.count('<section id="adversarial">') == 1


def test_run_without_results_has_no_such_sections(fake_runs):
    text = build_run_report(fake_runs["csg-s1"]).read_text()
    assert 'id="localization"' not in text and 'id="adversarial"' not in text


def test_result_files_of_another_schema_get_a_note_not_a_guess(tmp_path):
    run = RunDir(make_fake_run(tmp_path / "run", "std"))
    run.write_json("localization.json", {"cam": {"avg_iou": 0.5, "ap30": 0.25}})   # no schema: an older layout
    run.write_json("adversarial.json", {"schema": "csg.adversarial/1", "detection": {}})
    text = build_run_report(run).read_text()
    loc, adv = _section(text, "localization"), _section(text, "adversarial")
    assert "this csg reads csg.localization/2" in loc and "csg localize" in loc and "0.5000" not in loc
    assert "csg.adversarial/1" in adv and "csg attack" in adv
    (run.path / "adversarial.json").write_text("[1, 2]")
    text = build_run_report(run).read_text()
    assert "adversarial.json could not be read" in _section(text, "adversarial")


def test_compare_puts_localization_and_adversarial_side_by_side(fake_runs, tmp_path):
    out = tmp_path / "cmp"
    page = compare_runs([fake_runs[n].path for n in ("csg-s0", "csg-s1", "std-s0")], out)
    assert_images_resolve(page)
    text = page.read_text(encoding="utf-8")
    data = json.loads((out / "comparison.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    loc = {m: json.loads((fake_runs[n].path / "localization.json").read_text()) for m, n in (("csg", "csg-s0"),
                                                                                             ("std", "std-s0"))}
    adv = {m: json.loads((fake_runs[n].path / "adversarial.json").read_text()) for m, n in (("csg", "csg-s0"),
                                                                                           ("std", "std-s0"))}
    sec = _section(text, "localization")
    for m in ("csg", "std"):
        for meth in ("gradmap", "activmap", "cam"):
            for key in ("avg_iou", "ap20", "ap30"):
                want = loc[m][meth]["total"][key]
                assert rows[m]["values"][f"loc.{meth}.{key}"]["mean"] == pytest.approx(want)
                assert f">{want:.3f}<" in sec
        assert rows[m]["values"]["blackbox.one-pixel"]["mean"] == pytest.approx(
            adv[m]["blackbox"]["one-pixel"]["success_rate"])
    assert "0.4289" in sec and "0.3602" in sec
    # one seed each: the differences from STD come from a paired bootstrap over the same canvases
    diff = next(d for d in data["differences"] if d["metric"] == "loc.gradmap.avg_iou" and d["method"] == "csg")
    assert diff["kind"] == "bootstrap" and diff["seeds"] == [0]
    assert diff["mean"] == pytest.approx(loc["csg"]["gradmap"]["total"]["avg_iou"] - loc["std"]["gradmap"]["total"]["avg_iou"])
    assert diff["low"] <= diff["mean"] <= diff["high"]
    asec = _section(text, "adversarial")
    e = adv["std"]["detection"]["pgd"]["8"]
    assert f">{100 * e['mean']:.2f}<" in asec
    assert "pgd detector error @8/class %" in asec and "one-pixel success %" in asec
    assert "88.85" in asec  # the paper's rows (its errors show where the training sizes match)
    # the figures, copied and paired: the same figure of the two runs in one row, a hint for the run without
    figs = {Path(f["path"]).name for f in data["figures"]}
    for f in LOC_FIGURES + ADV_FIGURES:
        assert {f"csg-s0_{f}", f"std-s0_{f}"} <= figs
        assert (out / "figures" / f"csg-s0_{f}").is_file()
        pairs = [chunk.split("</section>")[0] for chunk in text.split('<div class="pair">')[1:]]
        pair = next(p for p in pairs if f"csg-s0_{f}" in p)
        assert f"std-s0_{f}" in pair and "csg-s1" not in pair  # another seed of csg has it: no empty panel
    assert re.search(r"<td>csg</td>(<td[^>]*>[^<]*</td>){1}<td[^>]*>1</td>", sec)  # one of two csg runs localized
    # a method none of whose runs has the results: one note with the command to run
    page2 = compare_runs([fake_runs[n].path for n in ("csg-s1", "std-s0")], tmp_path / "cmp2")
    text2 = page2.read_text(encoding="utf-8")
    assert "csg localize" in _section(text2, "localization") and "csg attack" in _section(text2, "adversarial")


def test_indicator_entropy_is_the_mis_ceiling():
    p = 0.1
    assert mis_ceiling(num_classes=10) == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p))
    assert mis_ceiling(num_classes=10) == pytest.approx(0.325, abs=5e-4)  # METHOD.md: 0.325 nats for C = 10
    assert indicator_entropy(0.5) == pytest.approx(math.log(2))


# ---------------------------------------------------------------------------------------------
# a real browser: every image decodes, no console error, the page is not blank
# ---------------------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars"]


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)


def check_in_browser(page: Path, tmp: Path) -> None:
    # the page's own script marks <body> once loaded: data-broken-images counts images with naturalWidth 0
    dom = _chromium(page, tmp / "profile-dom", "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0",
                    "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-loaded="yes"' in dom.stdout, "the page's load handler did not run"
    assert 'data-broken-images="0"' in dom.stdout, f"{page}: some images did not load"
    assert f'data-images="{len(refs(page).imgs)}"' in dom.stdout
    bad = [line for line in dom.stderr.splitlines()
           if "CONSOLE" in line or "Failed to load resource" in line or "Uncaught" in line]
    assert not bad, f"browser console: {bad[:3]}"
    shot = tmp / f"{page.parent.name}.png"
    res = _chromium(page, tmp / "profile-shot", f"--screenshot={shot}", "--window-size=1200,2000")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install -y chromium)")
def test_report_and_comparison_render_in_chromium(fake_runs, tmp_path):
    page = build_run_report(fake_runs["csg-s0"])
    check_in_browser(page, tmp_path)
    cmp_page = compare_runs([r.path for r in fake_runs.values()], tmp_path / "cmp")
    check_in_browser(cmp_page, tmp_path)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install -y chromium)")
def test_browser_check_catches_a_missing_image(fake_runs, tmp_path):
    page = build_run_report(fake_runs["std-s0"])
    broken = page.parent / "broken.html"
    broken.write_text(page.read_text().replace("report_mi.png", "no-such-file.png"))
    try:
        with pytest.raises(AssertionError, match="did not load"):
            check_in_browser(broken, tmp_path)
    finally:
        broken.unlink()


# ---------------------------------------------------------------------------------------------
# end to end on the lead's tiny trained runs (conftest fixtures)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_analyze_report_compare_on_tiny_trained_runs(tiny_csg_run, tiny_std_run, tmp_path, capsys):
    from csg.cli import main

    for run in (tiny_csg_run, tiny_std_run):
        if not (Path(run) / "analysis.json").is_file():
            assert main(["analyze", str(run), "--classes", "0,1"]) == 0
        assert main(["report", str(run)]) == 0
        page = Path(run) / "report" / "index.html"
        assert page.is_file() and assert_images_resolve(page) >= 6
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny_csg_run), str(tiny_std_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("index.html")
    text = (out / "index.html").read_text()
    acc = RunDir(tiny_csg_run).metrics()["accuracy"]
    assert f"{acc:.4f}" in text
    if CHROMIUM:
        check_in_browser(out / "index.html", tmp_path)
