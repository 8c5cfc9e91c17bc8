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
    finally:
        d.close()
