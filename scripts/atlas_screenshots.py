"""Screenshots of a run's unit atlas for the README: the page, and the detail view of one filter.

    python3 scripts/atlas_screenshots.py RUN/atlas/index.html OUT_DIR [FILTER]

Needs Debian's chromium and chromium-driver and the selenium package (all installed by
``bash scripts/install.sh --test``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By


def main(argv: list[str]) -> None:
    page, out = Path(argv[0]).resolve(), Path(argv[1])
    filter_index = argv[2] if len(argv) > 2 else "0"
    out.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900", "--hide-scrollbars",
                 "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))
    try:
        driver.get(page.as_uri())
        time.sleep(3)  # the cards render incrementally; let the first screenful finish
        driver.save_screenshot(str(out / "atlas_page.png"))
        driver.find_element(By.CSS_SELECTOR, f'#grid .card[data-filter="{filter_index}"]').click()
        time.sleep(2)
        driver.save_screenshot(str(out / "atlas_detail.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    main(sys.argv[1:])
