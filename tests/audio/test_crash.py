"""Crash-proof stages on the real daemon: the wake word and TTS workers killed by SIGSEGV
(a native crash in ONNX Runtime or Piper) mid-turn. The worker restarts, the running turn
is marked failed with a `loomd.error` event, the daemon and the bus run on, and the next
turn works. The mic is the bus source fed from a WAV at real-time pace."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from loomd.audio.io import read_wav
from loomd.messages import ErrorEvent, Topic, Transcript
from loomd.sdk import Client
from tests.audio.conftest import Responder, feed_mic, voice_state, voice_toml
from tests.conftest import LoomdProcess, first_event, subscribed

pytestmark = pytest.mark.models


async def voice_status(bus: Any) -> dict[str, Any]:
    st: dict[str, Any] = (await bus.status())["status"]["components"]["voice"]
    return st["status"]  # type: ignore[no-any-return]


async def error(errors: Any, code: str) -> ErrorEvent:
    return await first_event(errors, ErrorEvent, lambda ev: ev.code == code, 30)


def test_wake_worker_killed_mid_turn(
    loomd_proc: LoomdProcess, models: Path, command_clip: Path
) -> None:
    clip = read_wav(command_clip)
    tail = b"\0" * 32000 * 3
    loomd_proc.write_config(voice_toml(models, source='"bus"', sink='"buffer"', agent='"none"'))
    loomd_proc.start(timeout=60)

    step = ["start"]

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Client(loomd_proc.endpoint, name="test", timeout=10) as bus:
            out["pid"] = (await voice_status(bus))["wake_pid"]
            subs = subscribed(bus, Topic.VOICE_STATE, Topic.VOICE_TRANSCRIPT, Topic.ERROR)
            async with subs as (states, transcripts, errors):
                # The mic goes on while the turn runs (until the crash is seen: a starved
                # pipeline drops stale frames, and the wake word only runs on frames).
                feeder = asyncio.create_task(feed_mic(bus, clip + tail * 5))
                step.append("thinking")
                await voice_state(states, "thinking", 60)  # the turn runs; the wake word listens on
                os.kill(out["pid"], signal.SIGSEGV)
                step.append("error event")
                out["error"] = await error(errors, "wake_failed")
                step.append("first transcript")
                out["first"] = Transcript.from_event(await transcripts.get(timeout=30))
                feeder.cancel()
                step.append("idle")
                await voice_state(states, "idle", 60)
                step.append("restart")
                async with asyncio.timeout(60):  # a fresh worker (a few seconds on a busy box)
                    while (await voice_status(bus))["wake_restarts"] < 1:  # noqa: ASYNC110
                        await asyncio.sleep(0.2)
                # The fresh worker hears the next command.
                await feed_mic(bus, clip + tail)
                step.append("second transcript")
                out["second"] = Transcript.from_event(await transcripts.get(timeout=30))
                out["last"] = await bus.call("voice.last", args=[2])
                out["end"] = await voice_status(bus)
        return out

    try:
        got = asyncio.run(scenario())
    except TimeoutError:
        log = loomd_proc.log.read_text()[-3000:]
        raise AssertionError(f"timed out waiting for the {step[-1]}:\n{log}") from None
    assert "wake word worker died (exit code -11)" in got["error"].message, got["error"]
    assert got["error"].component == "voice"
    first, second = got["last"]["turns"]
    assert first["utterance_id"] == got["first"].utterance_id
    assert first["outcome"] == "failed" and "wake word worker died" in first["error"], first
    assert second["outcome"] == "ok" and "kitchen lights" in second["transcript"].lower()
    end = got["end"]
    assert end["wake_restarts"] == 1 and end["wake_pid"] not in (0, got["pid"]), end
    assert end["wakes"] == 2 and end["failed"] == 1, end


def test_tts_worker_killed_mid_turn(
    loomd_proc: LoomdProcess, models: Path, command_clip: Path, llm: Responder
) -> None:
    loomd_proc.write_config(voice_toml(models, sink='"buffer"'))
    loomd_proc.start(timeout=60)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Client(loomd_proc.endpoint, name="test", timeout=10) as bus:
            llm.ready = asyncio.Event()
            server = asyncio.create_task(llm.serve(bus))
            async with asyncio.timeout(30):
                await llm.ready.wait()
            pid = out["pid"] = (await voice_status(bus))["tts_pid"]
            worker = psutil.Process(pid)
            subs = subscribed(bus, Topic.ERROR, Topic.VOICE_TRANSCRIPT)
            async with subs as (errors, transcripts):
                run = asyncio.create_task(
                    bus.call("voice.test", args=[str(command_clip)], timeout=240)
                )
                # The TTS shares its process with the wake word, which scores the clip
                # until the utterance is cut: from the transcript on, only Piper works
                # there (the turn holds the clip's remaining frames back).
                await transcripts.get(timeout=120)
                idle = sum(worker.cpu_times()[:2])
                # Piper at work on the reply's first sentence: its CPU time moves.
                async with asyncio.timeout(120):
                    # (another process's CPU time: no event to wait on)
                    while sum(worker.cpu_times()[:2]) < idle + 0.03:  # noqa: ASYNC110
                        await asyncio.sleep(0.005)
                os.kill(pid, signal.SIGSEGV)
                killed_at = time.monotonic()
                out["error"] = await error(errors, "tts_failed")
                out["first"] = await run
                out["took"] = time.monotonic() - killed_at
            out["second"] = await bus.call("voice.test", args=[str(command_clip)], timeout=240)
            out["end"] = await voice_status(bus)
            server.cancel()
        return out

    got = asyncio.run(scenario())
    assert "TTS worker died (exit code -11)" in got["error"].message, got["error"]
    (turn,) = got["first"]["turns"]
    assert turn["outcome"] == "failed", turn
    assert turn["error"].startswith("TTS failed: WorkerDied: the TTS worker died"), turn
    assert "kitchen lights" in turn["transcript"].lower() and turn["reply"], turn
    (again,) = got["second"]["turns"]
    assert again["outcome"] == "ok" and "first_audio" in again["timings"], again
    assert got["second"]["reply_seconds"] > 0.5
    end = got["end"]
    assert end["tts_restarts"] == 1 and end["tts_pid"] not in (0, got["pid"]), end
