"""The per-run HTML report and the comparison page: files, images, numbers, and a real browser."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from csg.metrics import indicator_entropy, mis_ceiling
from csg.report import build_run_report, compare_runs, localization_totals
from csg.rundir import RunDir
from test_analysis import make_fake_run


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
    run = runs["csg-s0"]
    shutil.copy(run.path / "figures" / "analysis_r_s.png", run.figures_dir / "loc_example.png")
    run.write_json("localization.json", {
        "gradmap": {"total": {"avg_iou": 0.30, "ap20": 0.81}},
        "activmap": {"total": {"avg_iou": 0.42, "ap30": 0.82}},
        "cam": {"total": {"avg_iou": 0.37, "ap30": 0.73}},
        "figures": [{"path": "figures/loc_example.png", "caption": "a localization figure"}]})
    run.write_json("adversarial.json", {"detection": {"fgsm": {"500": 0.045, "1000": 0.039}}, "figures": []})
    return runs


def test_run_report_has_every_figure_and_the_numbers(fake_runs):
    run = fake_runs["csg-s0"]
    page = build_run_report(run)
    assert page == run.path / "report" / "index.html"
    n = assert_images_resolve(page)
    text = page.read_text(encoding="utf-8")
    analysis = json.loads((run.path / "analysis.json").read_text())
    # gate, MI, overlap, curves + every analysis figure + the localization figure
    assert n >= 4 + len(analysis["figures"]) + 1
    for fig in analysis["figures"]:
        assert f"../{fig['path']}" in text
    assert "../figures/loc_example.png" in text and "localization.json" in text
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
    assert rows["csg"]["values"]["gradmap.avg_iou"]["mean"] == pytest.approx(0.30)
    assert "GradMap IoU" in text and "Adversarial detection error" in text
    # the published CIFAR-10 rows, with the paper's 23% of the gap closed
    assert "0.9192" in text and "0.1603" in text
    assert data["reference"][0]["gap_closed"] == pytest.approx(0.23, abs=0.005)
    # paired figures: two gates, three MI matrices, correlation and removal copied for the analysed runs
    figs = {Path(f["path"]).name for f in data["figures"]}
    assert {"csg-s0_gate.png", "csg-s1_gate.png", "std-s0_mi.png", "csg-s0_analysis_correlation.png",
            "std-s0_analysis_removal.png"} <= figs
    assert "csg analyze" in text  # csg-s1 was not analysed


def test_compare_cli_prints_the_page(fake_runs, tmp_path, capsys):
    from csg.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", str(fake_runs["csg-s0"].path), str(fake_runs["std-s0"].path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "index.html"))


def test_localization_totals_read_defensively():
    assert localization_totals(None) == {}
    got = localization_totals({"gradmap": {"overall": {"mean_iou": 0.2, "AP20": 0.5}}, "cam": {"avg_iou": 0.1},
                               "activmap": "not a dict"})
    assert got == {"gradmap.avg_iou": 0.2, "gradmap.ap20": 0.5, "cam.avg_iou": 0.1}


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
