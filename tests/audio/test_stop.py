"""The stop word in a fake room on the real daemon: said by a person while the board
speaks, it cuts playback with no wake word and opens no turn; said by the board itself, it
never stops it. No pinned wheel ships a "stop" model (docs/design/voice-stop.md), so these
tests arm openWakeWord's "alexa" model as the stop word: the same code path, a real
model, a different word."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import read_wav
from loomd.messages import Topic, VoiceStateEvent, VoiceStop
from loomd.sdk import Client
from tests.audio.conftest import say_wav, voice_state, voice_toml
from tests.audio.room import FakeRoom
from tests.audio.test_room import voice_status
from tests.conftest import LoomdProcess, first_event, subscribed

pytestmark = pytest.mark.models

STOP_MODEL = "openwakeword/alexa_v0.1.onnx"


def config(models: Path, extra: str = "") -> str:
    return (
        voice_toml(models, source='"bus"', sink='"bus"')
        + f'[voice.stop]\nmodel = "{STOP_MODEL}"\n'
        + extra
    )


def run_room(d: LoomdProcess, text: str, person: bytes | None = None) -> dict[str, Any]:
    """The board says `text` in the room; two seconds in, a person says `person` (again,
    up to three times, until the board stops)."""

    async def scenario() -> dict[str, Any]:
        async with Client(d.endpoint, name="room", timeout=10) as bus:
            room = FakeRoom(bus)
            done = asyncio.Event()
            runner = asyncio.create_task(room.run(done))
            stops: list[VoiceStop] = []
            states: list[str] = []
            subs = subscribed(bus, Topic.VOICE_STOP, Topic.VOICE_STATE)
            async with subs as (stop_sub, state_sub):
                said = asyncio.create_task(bus.call("voice.say", args=[text], timeout=120))
                await voice_state(state_sub, "speaking", 30)
                if person is not None:
                    await asyncio.sleep(2.0)  # two seconds into the playback
                    for _ in range(3):
                        room.speak(person)
                        try:
                            ev = await stop_sub.get(timeout=len(person) / 32000 + 1.5)
                            stops.append(VoiceStop.from_event(ev))
                            break
                        except TimeoutError:
                            continue
                result = await said
                # speaking ends: idle, not listening
                spoke = await first_event(
                    state_sub, VoiceStateEvent, lambda ev: ev.state != "speaking", 10
                )
                states.append(spoke.state)
                # The echo tail and the stop model's last chunks.
                try:
                    stops.append(VoiceStop.from_event(await stop_sub.get(timeout=1.5)))
                except TimeoutError:
                    pass
                status = await voice_status(bus)
            done.set()
            await runner
            # the room fed the board's voice back (0.2 s at least: a board that stops itself
            # on its first word, as the control below does, plays about 25 frames)
            assert room.echo_frames > 10, "the room fed the board's voice back"
            return {"status": status, "said": result, "stops": stops, "states": states}

    return asyncio.run(scenario())


def test_the_stop_word_cuts_playback_without_the_wake_word(
    loomd_proc: LoomdProcess, models: Path, speech_dir: Path
) -> None:
    person = read_wav(say_wav("alexa", speech_dir / "stop-word.wav", pad=(0.0, 0.3)))
    loomd_proc.write_config(config(models))
    loomd_proc.start(timeout=60)
    long = " ".join(["The weather tomorrow will be mild with a light breeze."] * 4)
    got = run_room(loomd_proc, long, person)
    log = [ln for ln in loomd_proc.log.read_text().splitlines() if "voice" in ln][-12:]
    assert got["said"]["spoken"] is False, (got, log)
    st = got["status"]
    assert st["stops"] == 1 and st["wakes"] == 0 and st["barge_ins"] == 0, (st, log)
    assert [s.reason for s in got["stops"]] == ["stop word"], got["stops"]
    assert got["states"] == ["idle"], got["states"]  # no turn was opened


def test_the_board_never_stops_itself(loomd_proc: LoomdProcess, models: Path) -> None:
    loomd_proc.write_config(config(models))
    loomd_proc.start(timeout=60)
    got = run_room(loomd_proc, "Alexa. I said Alexa, turn on the lights. Alexa!")
    log = [ln for ln in loomd_proc.log.read_text().splitlines() if "voice" in ln][-12:]
    assert got["said"]["spoken"] is True, (got, log)
    assert got["status"]["stops"] == 0 and got["stops"] == [], (got, log)


def test_control_without_echo_cancellation_it_stops_itself(
    loomd_proc: LoomdProcess, models: Path
) -> None:
    """The same room with echo cancellation, gating and the self-wake guard off: the board
    hears itself say the stop word (what makes the test above able to fail)."""
    loomd_proc.write_config(
        config(models, "[voice.aec]\nenabled = false\ngate = false\nself_wake_guard = false\n")
    )
    loomd_proc.start(timeout=60)
    got = run_room(loomd_proc, "Alexa. I said Alexa, turn on the lights. Alexa!")
    assert got["status"]["stops"] >= 1, got
