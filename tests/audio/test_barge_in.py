"""Barge-in on the real daemon: the wake word heard while the board speaks cuts playback
and publishes `voice.stop`. Audio comes in on the bus (`audio.in.local`, as a satellite
sends it) at real-time pace; the sink is a buffer that plays at a speaker's pace."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from loomd.audio.io import read_wav, split_frames
from loomd.messages import SayRequest, Topic, VoiceStateEvent
from loomd.sdk import Client
from tests.audio.conftest import say_wav, voice_state, voice_toml
from tests.conftest import LoomdProcess, subscribed

pytestmark = pytest.mark.models


def test_wake_word_during_playback_stops_it(
    loomd_proc: LoomdProcess, models: Path, speech_dir: Path
) -> None:
    wake = read_wav(say_wav("hey jarvis", speech_dir / "barge.wav", pad=(0.3, 1.0)))
    loomd_proc.write_config(voice_toml(models, source='"bus"', sink='"buffer"'))
    loomd_proc.start(timeout=60)

    async def scenario() -> tuple[float, float, list[str], dict[str, int]]:
        async with Client(loomd_proc.endpoint, name="test", timeout=10) as bus:
            async with subscribed(bus, Topic.VOICE_STATE, Topic.VOICE_STOP) as (states, stops):
                long = " ".join(["This is a long announcement that keeps on going."] * 6)
                await bus.publish(Topic.VOICE_SAY, SayRequest(long).to_payload())
                await voice_state(states, "speaking", 60)
                began = time.monotonic()
                wake_end = 0.0
                stop_at: list[float] = []

                async def watch() -> None:
                    await stops.get(timeout=30)
                    stop_at.append(time.monotonic())

                watcher = asyncio.create_task(watch())
                for i, frame in enumerate(split_frames(wake)):
                    await asyncio.sleep(max(0.0, began + i * 0.02 - time.monotonic()))
                    await bus.publish("audio.in.local", frame, qos="realtime")
                    if i * 0.02 <= len(wake) / 32000 - 1.0:
                        wake_end = time.monotonic()
                await asyncio.wait_for(watcher, 10)
                after = []
                while True:
                    try:
                        ev = await states.get(timeout=2)
                    except TimeoutError:
                        break
                    after.append(str(VoiceStateEvent.from_payload(ev.payload).state))
                    if after[-1] == "listening":
                        break
                voice = (await bus.status())["status"]["components"]["voice"]["status"]
                return wake_end - began, stop_at[0] - began, after, voice

    wake_end, stop, after, voice = asyncio.run(scenario())
    # voice.stop came once the wake word had been said, not before, and not long after.
    assert wake_end - 0.5 < stop < wake_end + 1.5, (wake_end, stop)
    assert "listening" in after
    # The announcement was cut, not played to its end.
    assert voice["barge_ins"] == 1 and voice["said"] == 0 and voice["wakes"] == 1, voice
