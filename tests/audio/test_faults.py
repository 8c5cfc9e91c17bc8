"""Bad input on the real daemon: an STT worker killed mid-utterance, a corrupt model."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from loomd.messages import Topic
from loomd.sdk import Client
from tests.audio.conftest import voice_state, voice_toml
from tests.audio.test_pipeline import loomctl
from tests.conftest import LoomdProcess

pytestmark = pytest.mark.models


def test_stt_worker_killed_mid_utterance(
    loomd_proc: LoomdProcess, models: Path, command_clip: Path
) -> None:
    loomd_proc.write_config(voice_toml(models, reply_timeout_s="1.0"))
    loomd_proc.start(timeout=60)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], int, dict[str, Any]]:
        async with Client(loomd_proc.endpoint, name="t", timeout=10) as bus:

            async def voice() -> dict[str, Any]:
                st: dict[str, Any] = (await bus.status())["status"]["components"]["voice"]
                return st["status"]  # type: ignore[no-any-return]

            pid = (await voice())["stt_pid"]
            assert pid > 0
            async with bus.subscribe(Topic.VOICE_STATE) as states:
                await states.ready()
                run = asyncio.create_task(
                    bus.call("voice.test", args=[str(command_clip)], timeout=120)
                )
                await voice_state(states, "thinking", 60)
                os.kill(pid, signal.SIGKILL)  # whisper is transcribing now
                first = await run
            second = await bus.call("voice.test", args=[str(command_clip)], timeout=120)
            return first, second, pid, await voice()

    first, second, pid, status = asyncio.run(scenario())
    (turn,) = first["turns"]
    assert turn["outcome"] == "failed", turn
    assert "STT worker died" in turn["error"], turn
    # A fresh worker took over; the next utterance is transcribed.
    (again,) = second["turns"]
    assert "kitchen lights" in again["transcript"].lower(), again
    assert status["stt_restarts"] == 1 and status["stt_pid"] not in (0, pid), status
    p = loomctl(loomd_proc, "voice", "last", "2")
    assert "failed (STT failed: WorkerDied: the STT worker died" in p.stdout, p.stdout


def test_corrupt_model_is_named(loomd_proc: LoomdProcess, models: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    for sub in ("openwakeword", "piper"):
        (root / sub).mkdir(parents=True)
        for f in (models / sub).iterdir():
            (root / sub / f.name).symlink_to(f)
    (root / "whisper").mkdir()
    (root / "whisper" / "ggml-tiny.en.bin").write_bytes(os.urandom(2_000_000))
    loomd_proc.write_config(voice_toml(root))
    loomd_proc.start(timeout=60)
    p = loomctl(loomd_proc, "status")
    assert "ggml-tiny.en.bin is not a ggml model (corrupt or truncated?)" in p.stdout, p.stdout
    assert "huggingface.co/ggerganov/whisper.cpp" in p.stdout
