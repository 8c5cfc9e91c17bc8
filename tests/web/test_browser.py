"""The status page in a real headless browser (Debian's chromium + chromedriver, driven by
selenium): it renders, follows the live tail, plots, shows markup in payloads as text,
and a screenshot of it is a real, non-blank PNG of the window's size."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import loomctl
from tests.web.conftest import PageDaemon

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 1400
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}",
)  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing in CI: scripts/setup --dev installs them")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'profile'}")  # fresh every run
    # The given driver path: selenium never looks for, or downloads, a driver of its own.
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, js: str, timeout: float = 20.0, what: str = "") -> Any:
    """Wait (with a deadline) until the script `return ...` gives a truthy value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(js), message=what or js
    )


def test_status_page_in_chromium(make_daemon: Any, browser: Any, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    d: PageDaemon = make_daemon()
    assert loomctl(d, "ask", "is anyone there?", timeout=30).stdout is not None  # one decision
    browser.get(d.base + "/")

    # Components render.
    _wait(browser, "return document.body.dataset.ready === '1'", what="components to render")
    names = browser.execute_script(
        "return [...document.querySelectorAll('#components tbody tr')].map(r => r.dataset.name)"
    )
    assert {"state", "bus", "metrics", "agents", "llm", "voice"} <= set(names)
    bus_state = browser.execute_script(
        "return document.querySelector('#components tr[data-name=bus] td:nth-child(2)').textContent"
    )
    assert bus_state == "running"
    _wait(browser, "return document.getElementById('voice-note').textContent"
                   ".startsWith('voice is disabled')", what="the voice section's note")  # fmt: skip

    # The route decision with its reason.
    reason = _wait(
        browser,
        "const r = document.querySelector('#routes tbody tr td.detail');return r && r.textContent",
        what="a route decision",
    )
    assert "no local model" in reason

    # The live tail: a published event appears, newest first, its markup as plain text.
    _wait(browser, "return document.getElementById('tail-state').textContent"
                   ".startsWith('following')", what="the live tail to connect")  # fmt: skip
    hostile = "<img src=x onerror=window.__pwned=1>"
    for i in range(2):
        r = loomctl(d, "pub", "demo.browser", json.dumps({"html": hostile, "n": i}))
        assert r.returncode == 0, r.stderr
    text = _wait(
        browser,
        "const li = document.querySelectorAll('#tail li[data-topic=\"demo.browser\"]');"
        "return li.length === 2 && li[0].querySelector('.payload').textContent",
        what="the published events in the live tail",
    )
    assert hostile in text and '"n":1' in text  # newest first
    assert browser.execute_script("return document.querySelectorAll('#tail img').length") == 0
    assert browser.execute_script("return window.__pwned === undefined")

    # The plot has points (the sampler runs once a second; the page polls every 2 s).
    points = _wait(
        browser,
        "const p = document.querySelector('#plot-events polyline:not(.out)');"
        "const pts = p ? p.getAttribute('points').trim().split(' ') : [];"
        "return pts.length >= 3 && pts",
        timeout=20,
        what="the events plot to have points",
    )
    ys = {float(p.split(",")[1]) for p in points}
    assert all(0 <= y <= 80 for y in ys) and len(ys) >= 2  # the published events show

    # A screenshot: a real PNG of the window's size, not blank.
    shot = tmp_path / "statuspage.png"
    assert browser.save_screenshot(str(shot))
    w, h, dpr = browser.execute_script(
        "return [window.innerWidth, window.innerHeight, window.devicePixelRatio]"
    )
    with Image.open(shot) as img:
        assert img.format == "PNG"
        assert img.size == (round(w * dpr), round(h * dpr))
        assert w >= WIDTH * 0.9
        grey = img.convert("L")
        assert ImageStat.Stat(grey).var[0] > 100  # text, tables and plots, not one colour
        assert len(img.convert("RGB").getcolors(1 << 20) or ()) > 32
    print(f"screenshot: {shot}")
    keep = os.environ.get("LOOMD_SCREENSHOT")  # for a human to look at; never committed
    if keep:
        shutil.copy(shot, keep)
