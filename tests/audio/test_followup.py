"""Follow-up: after the board asks a question, the next words need no wake word."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import read_wav, split_frames
from loomd.messages import Topic, Transcript
from loomd.sdk import Client
from tests.audio.conftest import say_wav, voice_state, voice_toml
from tests.conftest import LoomdProcess, subscribed

pytestmark = pytest.mark.models


def test_a_question_opens_listening_without_the_wake_word(
    loomd_proc: LoomdProcess, models: Path, speech_dir: Path
) -> None:
    answer = read_wav(say_wav("in the kitchen please", speech_dir / "kitchen.wav", pad=(0.2, 1.0)))
    loomd_proc.write_config(
        voice_toml(models, source='"bus"', sink='"buffer"', reply_timeout_s="1.0")
    )
    loomd_proc.start(timeout=60)

    async def scenario() -> tuple[Transcript, dict[str, Any]]:
        async with Client(loomd_proc.endpoint, name="mic", timeout=10) as bus:
            speech: collections.deque[bytes] = collections.deque()
            stop = asyncio.Event()

            async def mic() -> None:  # a quiet room, at real-time pace
                began, n = time.monotonic(), 0
                while not stop.is_set():
                    n += 1
                    await asyncio.sleep(max(0.0, began + n * 0.02 - time.monotonic()))
                    frame = speech.popleft() if speech else b"\0" * 640
                    await bus.publish("audio.in.local", frame, qos="realtime")

            runner = asyncio.create_task(mic())
            subs = subscribed(bus, Topic.VOICE_STATE, Topic.VOICE_TRANSCRIPT)
            async with subs as (states, transcripts):
                await bus.call("voice.say", args=["Which room do you mean?"], timeout=60)
                await voice_state(states, "listening", 10)
                speech.extend(split_frames(answer))
                tr = Transcript.from_payload((await transcripts.get(timeout=30)).payload)
                # the turn ends (no router here) and is recorded
                await voice_state(states, "idle", 30)
            stop.set()
            await runner
            last = await bus.call("voice.last", args=[1])
            return tr, last["turns"][-1]

    tr, turn = asyncio.run(scenario())
    assert "kitchen" in tr.text.lower(), tr
    assert turn["wake"] == "(follow-up)" and turn["transcript"] == tr.text, turn
