"""A sentence no template covers reaches the model through the assist: with the router on
main (which does not constrain tool calls yet) its plain answer is the reply, the turn says
it came from the model, and nothing acted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.assist.conftest import home_config
from tests.bridges.conftest import Mosquitto
from tests.conftest import LoomdProcess, loomctl

pytestmark = pytest.mark.models


def test_no_sentence_reaches_the_model(short_tmp: Path, broker: Mosquitto, models: Path) -> None:
    pytest.importorskip("llama_cpp")
    root = short_tmp / "d"
    root.mkdir()
    llm = models / "llm" / "SmolLM2-135M-Instruct.gguf"
    extra = f'[llm]\nenabled = true\nmodel = "{llm}"\nthreads = 1\n'
    d = LoomdProcess(root, home_config(broker, extra).replace("llm = false", "llm = true"))
    try:
        d.start(timeout=90)
        r = loomctl(d, "assist", "tell me a joke about robots", "--json", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        turn = json.loads(r.stdout)
        assert turn["intent"]["via"] == "llm", turn
        assert turn["route"] == "local" and turn["reply"] and turn["actions"] == []
        assert "llm_first" in turn["timings"]
        # no command and no known device: the model's, not a local "no device called ..."
        r = loomctl(d, "assist", "the office needs some light", "--json", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        turn = json.loads(r.stdout)
        assert turn["intent"]["via"] == "llm" and "llm_first" in turn["timings"], turn
    finally:
        d.close()


def test_tool_calls_are_valid_and_confirm_is_honoured(
    short_tmp: Path, broker: Mosquitto, models: Path
) -> None:
    """With the home's capabilities as tools, whatever the small model chooses is a real
    capability with valid arguments (the router's grammar), run through the broker; an
    unlock it asks for is asked back, not run."""
    import shutil

    from tests.assist.conftest import EXAMPLE

    pytest.importorskip("llama_cpp")
    root = short_tmp / "d"
    (root / "home.d").mkdir(parents=True)
    shutil.copy(EXAMPLE, root / "home.d" / "home.toml")
    llm = models / "llm" / "SmolLM2-135M-Instruct.gguf"
    extra = f'[llm]\nenabled = true\nmodel = "{llm}"\nthreads = 1\n'
    d = LoomdProcess(root, home_config(broker, extra).replace("llm = false", "llm = true"))
    try:
        d.start(timeout=90)
        seen = []
        for text in ("it is too dark to read on the sofa", "let my guest in at the door"):
            r = loomctl(d, "assist", text, "--json", "--conversation", "t", timeout=180)
            assert r.returncode == 0, r.stdout + r.stderr
            turn = json.loads(r.stdout)
            assert turn["intent"]["via"] == "llm" and turn["reply"], turn
            for a in turn["actions"]:
                assert a["code"] in ("ok", "confirm", "capability_error"), a
                if a["capability"].startswith("home.unlock"):
                    assert a["code"] == "confirm", a
            seen += turn["actions"]
        print("model's calls:", [(a["capability"], a["params"], a["code"]) for a in seen])
    finally:
        d.close()
