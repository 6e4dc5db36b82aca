"""`dvc plots show` renders every image plot of the committed results in a real browser.

The page DVC writes is opened in headless Chromium (the OS package; `.ci/run` installs it where it
is missing); every <img> must have loaded (no broken image) and show something (not one colour).
The curves drawn by Vega are not checked: DVC's page loads Vega from a CDN, which a machine without
network cannot reach. Skipped, saying why, where no Chromium and chromedriver are installed.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no Chromium with chromedriver installed (apt-get install chromium chromium-driver)",
)


def test_every_image_of_the_plots_page_loads_and_is_not_blank(tmp_path):
    from PIL import Image
    from selenium import webdriver

    dvc = Path(sys.executable).with_name("dvc")
    proc = subprocess.run([str(dvc), "plots", "show", "-o", str(tmp_path / "plots")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        driver.get((tmp_path / "plots" / "index.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight])"
        )
        sources = [src for src, *_ in images]
        assert any("figures" in s and s.endswith("masks.png") for s in sources), sources
        assert any("figures" in s and s.endswith("retrieval.png") for s in sources), sources
        broken = [src for src, complete, width, height in images if not (complete and width > 0 and height > 0)]
        assert not broken, f"images that did not load: {broken}"
        for element in driver.find_elements("tag name", "img"):
            driver.execute_script("arguments[0].scrollIntoView()", element)
            shot = Image.open(io.BytesIO(base64.b64decode(element.screenshot_as_base64))).convert("L")
            assert np.asarray(shot, dtype=np.float32).std() > 5, f"{element.get_attribute('src')} renders blank"
    finally:
        driver.quit()
