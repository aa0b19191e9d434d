"""The atlas in a real browser: Debian's chromium driven by chromium-driver through Selenium, from file://.

Checked: no console error and no image that failed to load; a click opens the detail view of that
filter; sorting by MI gives the order of atlas.json; a class filter shows as many cards as atlas.json has
filters of that class; search and keyboard navigation; the screenshot is not blank; a missing sprite sheet
is caught; the side-by-side page loads two atlases and links their sorting; the layer switch.
"""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="chromium and chromium-driver are not installed "
                                       "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
    except ImportError:  # chromium is there, so the browser test must run: the Python client is missing
        pytest.fail("selenium is not installed: pip install selenium (it is in the `test` extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900", "--hide-scrollbars",
                 "--force-device-scale-factor=1", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 20.0):
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    """Images not decoded yet are waited for; returns the sources of those that failed."""
    wait_for(driver, "return Array.from(document.images).every(i => i.complete)")
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")


def open_atlas(driver, page: Path, fragment: str = ""):
    driver.get(page.resolve().as_uri() + fragment)
    wait_for(driver, "return document.body.dataset.ready === 'yes'")


def cards(driver) -> list[int]:
    return driver.execute_script("return Array.from(document.querySelectorAll('#grid .card'))"
                                 ".map(c => parseInt(c.dataset.filter, 10))")


def select(driver, element_id: str, value):
    driver.execute_script("var s = document.getElementById(arguments[0]); s.value = arguments[1];"
                          "s.dispatchEvent(new Event('change'));", element_id, str(value))


def test_atlas_in_chromium(browser, atlas_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = atlas_run / "atlas" / "index.html"
    data = json.loads((page.parent / "atlas.json").read_text())
    units = data["layers"][0]["units"]
    k = data["layers"][0]["num_filters"]
    browser.get_log("browser")  # start from an empty log
    open_atlas(browser, page)
    assert 0 < len(cards(browser)) < k  # the first chunk at once, the rest as the page scrolls
    wait_for(browser, "window.scrollTo(0, document.body.scrollHeight);"
                      f"return document.querySelectorAll('#grid .card').length === {k}")
    browser.execute_script("window.scrollTo(0, 0)")
    assert cards(browser) == list(range(k))  # in filter order
    assert broken_images(browser) == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card img")) == k

    # a click opens the detail view of that filter: its images, GradMaps and numbers
    browser.find_element(By.CSS_SELECTOR, '#grid .card[data-filter="7"]').click()
    panel = browser.find_element(By.CSS_SELECTOR, "#detail .dpanel")
    assert panel.get_attribute("data-filter") == "7"
    assert "Filter #7" in browser.find_element(By.ID, "dtitle").text
    imgs = browser.find_elements(By.CSS_SELECTOR, "#detail .big img")
    assert len(imgs) == 2 * data["layers"][0]["top_k"]  # ActivMap and GradMap per top image
    assert f"image {units['top_images'][7][0]}" in panel.text
    assert broken_images(browser) == []
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)  # next filter in the view
    assert browser.find_element(By.CSS_SELECTOR, "#detail .dpanel").get_attribute("data-filter") == "8"
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert browser.execute_script("return document.getElementById('detail').hidden")

    # sort by MI: the order of atlas.json's mi_max, descending, ties by filter index
    select(browser, "sort", "mi_max")
    wait_for(browser, "window.scrollTo(0, document.body.scrollHeight);"
                      f"return document.querySelectorAll('#grid .card').length === {k}")
    expected = sorted(range(k), key=lambda f: (-units["mi_max"][f], f))
    assert cards(browser) == expected
    # filter by a class: as many cards as filters of that class
    counts = np.bincount([c for c in units["class"] if c is not None], minlength=len(data["classes"]))
    cls = int(counts.argmax())
    select(browser, "cls", cls)
    shown = cards(browser)
    assert len(shown) == counts[cls] and all(units["class"][f] == cls for f in shown)
    assert shown == [f for f in expected if units["class"][f] == cls]  # still sorted by MI
    assert browser.find_element(By.ID, "count").text == f"{counts[cls]} of {k} filters"
    select(browser, "crit", "class_mi")  # by another criterion
    assert len(cards(browser)) == units["class_mi"].count(cls)
    select(browser, "cls", -1)
    # search by filter index
    box = browser.find_element(By.ID, "q")
    box.send_keys("3-5, 9")
    wait_for(browser, "return document.querySelectorAll('#grid .card').length === 4")
    assert sorted(cards(browser)) == [3, 4, 5, 9]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)  # an emptied box shows every filter again
    wait_for(browser, "return document.body.dataset.shown === '64'")
    # keyboard: the first card, two steps right, Enter opens the third card of the view
    first = browser.find_element(By.CSS_SELECTOR, '#grid .card[data-pos="0"]')
    browser.execute_script("arguments[0].focus()", first)
    first.send_keys(Keys.ARROW_RIGHT)
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert browser.find_element(By.CSS_SELECTOR, "#detail .dpanel").get_attribute("data-filter") == str(expected[2])
    assert "open=" + str(expected[2]) in browser.current_url  # the view is in the URL
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert console_errors(browser) == []

    # a screenshot that is not blank
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"), dtype=np.float64)
    assert shot.shape[0] > 500 and shot.std() > 20, "the screenshot is (nearly) blank"


def test_a_missing_sprite_sheet_is_caught(browser, atlas_run, tmp_path):
    copy = tmp_path / "atlas"
    shutil.copytree(atlas_run / "atlas", copy)
    data = json.loads((copy / "atlas.json").read_text())
    (copy / data["layers"][0]["sprites"]["sheets"]["activ"][0]).unlink()
    browser.get_log("browser")
    open_atlas(browser, copy / "index.html")
    assert broken_images(browser)
    assert any("did not load" in m or "ERR_FILE_NOT_FOUND" in m for m in console_errors(browser))


def test_side_by_side_page_links_two_atlases(browser, atlas_compare):
    from selenium.webdriver.common.by import By

    browser.get_log("browser")
    browser.get((atlas_compare / "atlas_pair.html").resolve().as_uri() + "?left=0&right=1")
    frames = browser.find_elements(By.TAG_NAME, "iframe")
    assert len(frames) == 2
    for frame in frames:
        browser.switch_to.frame(frame)
        wait_for(browser, "return document.body.dataset.ready === 'yes'")
        assert broken_images(browser) == []
        browser.switch_to.default_content()
    browser.switch_to.frame(frames[0])
    select(browser, "sort", "selectivity")  # a user's change on the left ...
    browser.switch_to.default_content()
    browser.switch_to.frame(frames[1])  # ... reaches the right
    wait_for(browser, "return document.getElementById('sort').value === 'selectivity'")
    browser.switch_to.default_content()
    assert console_errors(browser) == []


def test_layer_switch_and_incremental_rendering(browser, tmp_path):
    """A tiny-model atlas with an extra layer and K = 150 filters: the first chunk renders at once, the
    rest as the page scrolls, and the layer switch shows the other layer's cards."""
    import torch
    import torch.nn as nn

    from csg.atlas import atlas_from_parts
    from csg.atlas.inputs import RunInputs
    from csg.data.dataset import ImageDataset
    from csg.core.model import GatedClassifier
    from csg.report.atlas_page import write_atlas_page

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 150, 3, padding=1), nn.ReLU())
    model = GatedClassifier(net, "3", 2, num_filters=150).eval()
    images = (torch.rand(10, 1, 8, 8) * 255).to(torch.uint8)
    labels = torch.arange(10) % 2
    with torch.no_grad():
        pooled = model(images.float() / 255).pooled.numpy()
    inputs = RunInputs(pooled=pooled, labels=labels.numpy(), predictions=labels.numpy(), class_names=["a", "b"],
                       config={}, metrics={})
    atlas = atlas_from_parts(model, ImageDataset(name="x", images=images, labels=labels, classes=["a", "b"]), inputs,
                             layers=["1"], top_k=2, thumb=8, gradmap=False)
    page = write_atlas_page(atlas, tmp_path / "atlas")
    browser.get_log("browser")
    open_atlas(browser, page)
    first = len(cards(browser))
    assert 0 < first < 150 and int(browser.execute_script("return document.body.dataset.shown")) == 150
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    wait_for(browser, "window.scrollTo(0, document.body.scrollHeight);"
                      "return document.querySelectorAll('#grid .card').length === 150", timeout=30)
    select(browser, "layer", 1)
    wait_for(browser, "return document.querySelectorAll('#grid .card').length === 6")
    assert broken_images(browser) == []
    assert console_errors(browser) == []
