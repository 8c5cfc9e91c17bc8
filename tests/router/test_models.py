"""SmolLM2 through the router: JSON-schema output, measured confidence, the real daemon and
`loomctl ask`. Structure is asserted, never facts (the model is tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loomd.messages import ChatMessage, ChatRequest, Policy
from loomd.router.cli import ask
from tests.conftest import LoomdProcess

from .conftest import HostFactory, run
from .test_chat import llm_of

pytestmark = pytest.mark.models

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def test_json_schema_output_and_measured_confidence(llm_host: HostFactory, smol: Path) -> None:
    async def body() -> None:
        async with llm_host(model=smol, threads=1) as host:
            llm = llm_of(host)
            r = ChatRequest(
                (ChatMessage("user", "Invent a person. Give a name and an age."),),
                json_schema=SCHEMA,
                max_tokens=48,
                temperature=0.2,
            )
            done = await ask(llm.ctx.bus, r, timeout=60)
            assert done.error == ""
            value = json.loads(done.text)
            assert isinstance(value["name"], str) and isinstance(value["age"], int)
            facts = llm.facts()
            assert 0.0 < facts.local_confidence <= 1.0
            assert facts.local_tps > 0 and facts.local_ttft_ms > 0

    run(body(), timeout=120)


def _loomctl(proc: LoomdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loomd.ctl", "--socket", str(proc.socket), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )


def test_daemon_answers_loomctl_ask_and_explains(tmp_path: Path, smol: Path) -> None:
    proc = LoomdProcess(tmp_path, f'[llm]\nenabled = true\nmodel = "{smol}"\nthreads = 1\n')
    try:
        proc.start(timeout=60)
        r = _loomctl(proc, "ask", "--max-tokens", "24", "Say hello.")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip(), "no answer streamed"
        assert "[ran local," in r.stderr
        did = r.stderr.rsplit("explain ", 1)[1].strip(" ]\n")
        ex = _loomctl(proc, "route", "explain", did)
        assert ex.returncode == 0, ex.stderr
        assert f"decision {did}: local (rule no-cloud)" in ex.stdout
        assert '"local_loaded": true' in ex.stdout
        dry = _loomctl(proc, "route", "test", "--privacy", "private", "hello")
        assert dry.returncode == 0 and "dry run: local (rule privacy)" in dry.stdout
        st = _loomctl(proc, "status")
        assert "SmolLM2-135M-Instruct.gguf (loaded)" in st.stdout
        # the decision ring survives a restart
        proc.restart()
        again = _loomctl(proc, "route", "explain", did)
        assert again.returncode == 0 and did in again.stdout
    finally:
        proc.close()


def test_private_turn_over_the_sdk_stays_local(tmp_path: Path, smol: Path) -> None:
    from loomd.sdk import Client

    proc = LoomdProcess(tmp_path, f'[llm]\nenabled = true\nmodel = "{smol}"\nthreads = 1\n')
    try:
        proc.start(timeout=60)

        async def body() -> None:
            async with Client(proc.endpoint, name="agent") as bus:
                req = ChatRequest(
                    (ChatMessage("user", "hello"),),
                    policy=Policy(privacy="private", allow_cloud=True),
                    max_tokens=8,
                )
                done = await ask(bus, req, timeout=60)
                assert done.route == "local" and done.error == ""

        run(body(), timeout=90)
    finally:
        proc.close()
