"""No self-wake, and barge-in, in a fake room on the real daemon: the board's own voice comes
back to its microphone (60 ms later, 6 dB down, over noise)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import read_wav
from loomd.messages import BargeIn, BargeInStep, Topic
from loomd.sdk import Client
from tests.audio.conftest import say_wav, voice_state, voice_toml
from tests.audio.room import FakeRoom
from tests.conftest import LoomdProcess, subscribed

pytestmark = pytest.mark.models

SELF_WAKE = "Hey Jarvis. I said hey Jarvis, turn on the lights. Hey Jarvis!"


async def voice_status(bus: Any) -> dict[str, int]:
    st: dict[str, int] = (await bus.status())["status"]["components"]["voice"]["status"]
    return st


async def barge_in(room: FakeRoom, states: Any, barges: Any, person: bytes, tries: int = 3) -> None:
    """The person says the wake word over the board's voice, and says it again (as people
    do) while the board talks on: the wake score over the echo's residue depends on where
    the word falls against the board's speech. Once the board has ducked (a candidate), the
    person waits for the wake check's verdict (its time depends on the machine's load)."""
    for _ in range(tries):
        room.speak(person)
        try:
            await barges.get(timeout=len(person) / 32000 + 1.5)  # ducked
        except TimeoutError:
            continue
        verdict = BargeIn.from_event(await barges.get(timeout=30))
        if verdict.step == BargeInStep.CONFIRMED:
            await voice_state(states, "listening", 5)
            return


def run_room(d: LoomdProcess, text: str, person: bytes | None = None) -> dict[str, Any]:
    """Say `text` in the room (and have a person speak `person` a second in); return the
    voice status and whether voice.stop was published."""

    async def scenario() -> dict[str, Any]:
        async with Client(d.endpoint, name="room", timeout=10) as bus:
            room = FakeRoom(bus)
            stop = asyncio.Event()
            runner = asyncio.create_task(room.run(stop))
            topics = (Topic.VOICE_STOP, Topic.VOICE_STATE, Topic.VOICE_BARGEIN)
            async with subscribed(bus, *topics) as (stops, states, barges):
                await asyncio.sleep(1.0)  # the room's noise floor before the board speaks
                said = asyncio.create_task(bus.call("voice.say", args=[text], timeout=120))
                if person is not None:
                    await voice_state(states, "speaking", 30)  # two seconds into the playback
                    await asyncio.sleep(2.0)
                    await barge_in(room, states, barges, person)
                result = await said
                await asyncio.sleep(1.0)  # the echo tail and the wake word's last chunks
                stopped = True
                try:
                    await stops.get(timeout=0.1)
                except TimeoutError:
                    stopped = False
                status = await voice_status(bus)
            stop.set()
            await runner
            assert room.echo_frames > 25, "the room fed the board's voice back"
            return {"status": status, "said": result, "stopped": stopped}

    return asyncio.run(scenario())


def test_the_board_never_wakes_itself(loomd_proc: LoomdProcess, models: Path) -> None:
    loomd_proc.write_config(voice_toml(models, source='"bus"', sink='"bus"'))
    loomd_proc.start(timeout=60)
    got = run_room(loomd_proc, SELF_WAKE)
    assert got["said"]["spoken"] is True, (got, loomd_proc.log.read_text()[-1500:])
    assert got["status"]["wakes"] == 0, (got, loomd_proc.log.read_text()[-1500:])
    # nor ducks itself (its own wake word is a candidate the self-wake guard drops first)
    assert got["status"]["bargein_ducks"] == 0, (got, loomd_proc.log.read_text()[-1500:])
    assert got["stopped"] is False


def test_control_without_echo_cancellation_it_does_wake(
    loomd_proc: LoomdProcess, models: Path
) -> None:
    """The same room with echo cancellation, gating and the self-wake guard off: the board
    hears itself. (This is
    what makes the test above able to fail.)"""
    loomd_proc.write_config(
        voice_toml(models, source='"bus"', sink='"bus"')
        + "[voice.aec]\nenabled = false\ngate = false\nself_wake_guard = false\n"
    )
    loomd_proc.start(timeout=60)
    got = run_room(loomd_proc, SELF_WAKE)
    assert got["status"]["wakes"] >= 1, got


def test_barge_in_over_the_echo(loomd_proc: LoomdProcess, models: Path, speech_dir: Path) -> None:
    person = read_wav(say_wav("hey jarvis", speech_dir / "person.wav", pad=(0.0, 0.3)))
    loomd_proc.write_config(voice_toml(models, source='"bus"', sink='"bus"'))
    loomd_proc.start(timeout=60)
    long = " ".join(["The weather tomorrow will be mild with a light breeze."] * 4)
    got = run_room(loomd_proc, long, person=person)
    voice_log = [ln for ln in loomd_proc.log.read_text().splitlines() if "voice" in ln]
    assert got["said"]["spoken"] is False, (got["status"], voice_log[-12:])
    assert got["status"]["barge_ins"] == 1 and got["status"]["wakes"] == 1, (got, voice_log[-12:])
