"""The status page in a real headless browser (Debian's chromium + chromedriver, driven by
selenium): it renders, follows the live tail, plots, shows markup in payloads as text,
and a screenshot of it is a real, non-blank PNG of the window's size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import loomctl
from tests.web.conftest import PageDaemon, check_screenshot, wait_js

pytestmark = pytest.mark.browser


def test_status_page_in_chromium(make_daemon: Any, browser: Any, tmp_path: Path) -> None:
    d: PageDaemon = make_daemon()
    assert loomctl(d, "ask", "is anyone there?", timeout=30).stdout is not None  # one decision
    browser.get(d.base + "/")

    # Components render.
    wait_js(browser, "return document.body.dataset.ready === '1'", what="components to render")
    names = browser.execute_script(
        "return [...document.querySelectorAll('#components tbody tr')].map(r => r.dataset.name)"
    )
    assert {"state", "bus", "metrics", "agents", "llm", "voice"} <= set(names)
    bus_state = browser.execute_script(
        "return document.querySelector('#components tr[data-name=bus] td:nth-child(2)').textContent"
    )
    assert bus_state == "running"
    wait_js(browser, "return document.getElementById('voice-note').textContent"
                   ".startsWith('voice is disabled')", what="the voice section's note")  # fmt: skip

    # The route decision with its reason.
    reason = wait_js(
        browser,
        "const r = document.querySelector('#routes tbody tr td.detail');return r && r.textContent",
        what="a route decision",
    )
    assert "no local model" in reason

    # The live tail: a published event appears, newest first, its markup as plain text.
    wait_js(browser, "return document.getElementById('tail-state').textContent"
                   ".startsWith('following')", what="the live tail to connect")  # fmt: skip
    hostile = "<img src=x onerror=window.__pwned=1>"
    for i in range(2):
        r = loomctl(d, "pub", "demo.browser", json.dumps({"html": hostile, "n": i}))
        assert r.returncode == 0, r.stderr
    text = wait_js(
        browser,
        "const li = document.querySelectorAll('#tail li[data-topic=\"demo.browser\"]');"
        "return li.length === 2 && li[0].querySelector('.payload').textContent",
        what="the published events in the live tail",
    )
    assert hostile in text and '"n":1' in text  # newest first
    assert browser.execute_script("return document.querySelectorAll('#tail img').length") == 0
    assert browser.execute_script("return window.__pwned === undefined")

    # The plot has points (the sampler runs once a second; the page polls every 2 s).
    points = wait_js(
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
    check_screenshot(browser, tmp_path / "statuspage.png")
