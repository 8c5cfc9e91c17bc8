"""The voice and route sections with the real pipeline: `loomctl voice test` on speech
made at test time (whisper.cpp, openWakeWord, SmolLM2, Piper), then the page's JSON and,
in chromium, the waterfalls."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audio.conftest import join_wavs, say_wav, voice_toml
from tests.conftest import loomctl
from tests.testmodels import MODELS
from tests.web.conftest import PageDaemon, check_screenshot, get_json, wait_js

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def voice_daemon() -> Iterator[PageDaemon]:
    models = Path(MODELS)
    root = Path(tempfile.mkdtemp(prefix="ldv-", dir="/tmp"))
    llm = models / "llm" / "SmolLM2-135M-Instruct.gguf"
    d = PageDaemon(root)
    # Voice and the router on, with the small models.
    d.write_config(
        f'[metrics]\nport = {d.port}\npage = "local"\n'
        + voice_toml(models)
        + f'[llm]\nenabled = true\nmodel = "{llm}"\nthreads = 1\n'
    )
    try:
        d.start(timeout=90)
        wake = say_wav("hey jarvis", root / "wake.wav", pad=(0.5, 0.6))
        cmd = say_wav("turn on the kitchen lights", root / "cmd.wav", pad=(0.0, 0.8))
        clip = join_wavs([wake, cmd], root / "command.wav")
        p = loomctl(d, "voice", "test", str(clip), "--out", str(root / "r.wav"), timeout=240)
        assert p.returncode == 0, p.stdout + p.stderr
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


def test_voice_and_routes_json(voice_daemon: PageDaemon) -> None:
    v = get_json(voice_daemon.port, "/api/voice")
    assert v["state"] == "running" and v["reason"] == ""
    stages = [key for key, _ in v["stages"]]
    turn = v["turns"][0]
    assert {"utterance_id", "started", "wake", "transcript", "reply", "outcome", "timings"} <= set(
        turn
    )
    assert turn["outcome"] == "ok" and "kitchen" in turn["transcript"].lower()
    assert turn["wake"].startswith("hey_jarvis")
    t = turn["timings"]
    assert {"vad_end", "stt_end", "first_token", "first_audio", "spoken"} <= set(t) <= set(stages)
    ordered = [t[k] for k in stages if k in t]
    assert ordered == sorted(ordered)  # stages happen in the listed order
    routes = get_json(voice_daemon.port, "/api/routes")
    d = routes["decisions"][0]
    assert d["route"] == "local" and d["reason"] and d["agent"]


@pytest.mark.browser
def test_waterfalls_in_chromium(voice_daemon: PageDaemon, browser: Any, tmp_path: Path) -> None:
    browser.get(voice_daemon.base + "/")
    bars = wait_js(
        browser,
        "const r = document.querySelectorAll('#voice .turn svg.waterfall rect');"
        "return r.length && [...r].map(b => [b.dataset.stage, +b.getAttribute('width')])",
        what="the voice waterfall",
    )
    t = get_json(voice_daemon.port, "/api/voice")["turns"][0]["timings"]
    assert [stage for stage, _ in bars] == [s for s in [k for k, _ in _stages()] if s in t]
    assert all(width >= 2 for _, width in bars)
    heard = browser.execute_script(
        "return document.querySelector('#voice .turn p:nth-child(3)').textContent"
    )
    assert "kitchen" in heard.lower()
    wait_js(browser, "return document.querySelector('#routes tbody tr')", what="a route row")
    check_screenshot(browser, tmp_path / "statuspage-voice.png")


def _stages() -> list[tuple[str, str]]:
    from loomd.web.page import STAGES

    return list(STAGES)
