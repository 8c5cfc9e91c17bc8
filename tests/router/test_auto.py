"""`[llm] enabled = "auto"` on the real daemon: off without its model, on after the model
is installed under the models directory and the daemon reloads, with no config edit."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import LoomdProcess, loomctl

pytestmark = pytest.mark.models


def llm_slot(d: LoomdProcess) -> dict:  # type: ignore[type-arg]
    r = loomctl(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["components"]["llm"]  # type: ignore[no-any-return]


def test_llm_comes_up_when_its_model_arrives(short_tmp: Path, smol: Path) -> None:
    d = LoomdProcess(short_tmp, "[voice]\nenabled = false\n[llm]\nthreads = 1\n")
    try:
        d.start(timeout=60)
        models = short_tmp / "state" / "models"
        slot = llm_slot(d)
        assert slot["state"] == "disabled"
        assert slot["reason"].startswith(f"auto: no model at {models}/llm/SmolLM2-135M-Instruct")
        refused = loomctl(d, "ask", "Say hello.")
        assert refused.returncode != 0

        (models / "llm").mkdir(parents=True)
        (models / "llm" / "SmolLM2-135M-Instruct.gguf").symlink_to(smol)
        assert d.notify is not None
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING=1", 10)
        d.notify.wait_for("READY=1", 60)
        assert llm_slot(d)["state"] == "running"
        r = loomctl(d, "ask", "--max-tokens", "16", "Say hello.", timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() and "[ran local," in r.stderr
    finally:
        d.close()
