"""The board as Home Assistant's voice satellite, end to end with a real HA: HA's Assist
pipeline uses loomd's own Wyoming STT/TTS (so nothing leaves the machine), a WAV fed to
the board's microphone goes wake -> HA -> TTS back to the board's sink, and
`assist_satellite.announce` makes the board speak. The microphone and speaker are the
voice component's bus source and sink (`audio.in.local`, `audio.out.local`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import read_wav
from loomd.audio.wer import wer
from loomd.bus.local import LocalBus
from loomd.host import Host
from tests.audio.conftest import feed_mic, join_wavs, say_wav
from tests.audio.test_pipeline import transcribe
from tests.homeassistant.conftest import (
    HaApi,
    HaTestbed,
    adopt,
    board,
    component,
    free_port,
    ha_section,
    voice_section,
)

# wyoming.audio imports the stdlib's audioop (deprecated in 3.11, fine on the 3.11 we target).
# The first test to ask for `ha` pays a cold testbed build (~4 min) when none is cached.
pytestmark = [
    pytest.mark.homeassistant,
    pytest.mark.timeout(900),
    pytest.mark.models,
    pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning"),
]
NAMES = ("state", "bus", "voice", "homeassistant")


@dataclass
class Rig:
    host: Host
    api: HaApi
    bus: LocalBus
    sat: Any  # the satellite (the homeassistant component's)
    satellite_entity: str
    heard: bytearray  # what the board's speaker played
    adoption_ms: float = 0.0  # HA's ESPHome config flow until the satellite entity is idle

    async def mic(self, pcm: bytes, silence_s: float = 0.0) -> float:
        return await feed_mic(self.bus, pcm, silence_s)


async def _speaker(bus: LocalBus, heard: bytearray) -> None:
    async with bus.subscribe("audio.out.local", "realtime") as sub:
        async for ev in sub:
            if isinstance(ev.payload, bytes):
                heard += ev.payload


@contextlib.asynccontextmanager
async def rig(
    ha: HaTestbed, root: Path, models: Path, device: str, *, names: tuple[str, ...] = NAMES,
    voice: dict[str, str] | None = None, extra: str = "", **ha_opts: str,
) -> AsyncIterator[Rig]:  # fmt: skip
    """A board adopted by HA as its satellite; `names`, `voice` ([voice] keys) and `extra`
    (more TOML) make it more than the satellite (the assist, the home)."""
    port, wy_port = free_port(), free_port()
    body = voice_section(models, wy_port, **(voice or {})) + ha_section(port, **ha_opts) + extra
    async with board(root, body, device, names) as host, HaApi(ha) as api:
        bus = LocalBus(host.services.broker, "test")  # type: ignore[arg-type]
        heard = bytearray()
        speaker = asyncio.create_task(_speaker(bus, heard))
        entries: list[str] = []
        try:
            wy = await api.flow("wyoming", {"host": "127.0.0.1", "port": wy_port})
            assert wy["type"] == "create_entry", wy
            entries.append(wy["result"]["entry_id"])
            stt, tts = await _wyoming_entities(api, wy["result"]["entry_id"])
            pipeline = await api.call({
                "type": "assist_pipeline/pipeline/create", "name": f"loomd {device}",
                "language": "en", "conversation_engine": "conversation.home_assistant",
                "conversation_language": "en", "stt_engine": stt, "stt_language": "en",
                "tts_engine": tts, "tts_language": "en", "tts_voice": "en_US-joe-medium",
                "wake_word_entity": None, "wake_word_id": None})  # fmt: skip
            await api.call({"type": "assist_pipeline/pipeline/set_preferred",
                            "pipeline_id": pipeline["id"]})  # fmt: skip
            t_adopt = time.monotonic()
            res = await adopt(api, port)
            entries.append(res["result"]["entry_id"])
            comp = component(host, "homeassistant")
            _, ents = await api.device_entities(comp.device.name)
            sat = next(e for e in ents if e.startswith("assist_satellite."))
            await api.wait_state(
                lambda s: any(x["entity_id"] == sat and x["state"] == "idle" for x in s),
                "assist_satellite",
            )
            adoption_ms = (time.monotonic() - t_adopt) * 1000
            yield Rig(host, api, bus, comp.satellite, sat, heard, adoption_ms)
        finally:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker
            for entry in entries:
                await api.delete(f"/api/config/config_entries/entry/{entry}")


async def _wyoming_entities(api: HaApi, entry_id: str) -> tuple[str, str]:
    end = time.monotonic() + 30
    while True:
        ents = await api.call({"type": "config/entity_registry/list"})
        mine = [e["entity_id"] for e in ents if e.get("config_entry_id") == entry_id]
        stt = [e for e in mine if e.startswith("stt.")]
        tts = [e for e in mine if e.startswith("tts.")]
        if stt and tts:
            return stt[0], tts[0]
        assert time.monotonic() < end, f"HA's wyoming entry made {mine}"
        await asyncio.sleep(0.2)


async def _quiet(heard: bytearray, quiet_s: float = 0.6, timeout: float = 60.0) -> None:
    """Until the speaker has played something and then stayed silent for `quiet_s`."""
    end = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < end:
        if len(heard) != last:
            last, since = len(heard), time.monotonic()
        elif heard and time.monotonic() - since > quiet_s:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the speaker played {len(heard)} bytes and did not go quiet")


def test_announce_makes_the_board_speak(ha: HaTestbed, tmp_path: Path, models: Path) -> None:
    async def scenario() -> bytes:
        async with rig(ha, tmp_path, models, "sat-announce") as r:
            await r.api.post("/api/services/assist_satellite/announce", {
                "entity_id": r.satellite_entity, "message": "The laundry is done.",
                "preannounce": False})  # fmt: skip
            # the service returns once the board said it has played it
            assert r.sat.counts.get("announcements") == 1
            await _quiet(r.heard)
            return bytes(r.heard)

    audio = asyncio.run(scenario())
    assert len(audio) > 16000, len(audio)  # more than half a second of speech
    heard = transcribe(models, audio)
    # Piper samples its voice and whisper tiny.en now and then joins two words ("Belaundry
    # is done."): half the words must come back; silence or another sentence scores 1.0.
    assert wer("the laundry is done", heard) <= 0.5, heard


def test_a_spoken_command_through_has_pipeline(
    ha: HaTestbed, tmp_path: Path, models: Path, speech_dir: Path, command_clip: Path
) -> None:
    """wake word on the board -> mic streamed to HA -> loomd's Wyoming STT -> HA's intent
    switches its kitchen light -> loomd's Wyoming TTS -> the answer on the board's speaker."""

    async def scenario() -> tuple[dict[str, Any], bytes, str]:
        async with rig(ha, tmp_path, models, "sat-pipeline") as r:
            await r.api.post("/api/services/light/turn_off", {"entity_id": ha.light})
            await r.mic(read_wav(command_clip), silence_s=2.5)
            await r.api.wait_state(
                lambda s: any(x["entity_id"] == ha.light and x["state"] == "on" for x in s),
                "light",
            )
            await _quiet(r.heard)
            await _until_history(r.sat)
            # HA's end of speech gave the microphone back: the board hears wake words again
            assert component(r.host, "voice").handoff.streaming == ""
            return r.sat.history[-1], bytes(r.heard), r.sat.run

    run, audio, left = asyncio.run(scenario())
    assert left is None
    assert not run["error"], run
    assert wer("turn on the kitchen lights", run["stt"]) <= 0.25, run
    assert run["speech"], run  # what HA answered
    for stage in ("start_ack", "vad_end", "stt_end", "intent_end", "tts_end", "first_audio"):
        assert stage in run["timings"], run
    heard = transcribe(models, audio)
    # Piper samples its voice (noise_scale), and whisper tiny.en reads a four-word answer
    # one or two words wrong now and then ("Purned on the white."): half the words must come
    # back; silence or another sentence scores 1.0.
    assert wer(run["speech"], heard) <= 0.5, (run["speech"], heard)


async def _until_history(sat: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not sat.history:  # noqa: ASYNC110 - the satellite's record, with a deadline
            await asyncio.sleep(0.05)


def test_ask_question_then_listens_without_a_wake_word(
    ha: HaTestbed, tmp_path: Path, models: Path, speech_dir: Path
) -> None:
    """`assist_satellite.ask_question`: the board says HA's question, then streams the
    microphone with no wake word (the START_CONVERSATION path); HA matches the answer.
    (start_conversation itself needs an LLM conversation agent in HA; the built-in one
    refuses it, so its device side, the same listen-after-announce, is tested here.)"""
    answer = say_wav("turn on the kitchen lights", speech_dir / "answer.wav", pad=(0.3, 0.8))
    clip = read_wav(answer)

    async def scenario() -> dict[str, Any]:
        async with rig(ha, tmp_path, models, "sat-ask") as r:
            ask = asyncio.create_task(r.api.post(
                "/api/services/assist_satellite/ask_question?return_response", {
                    "entity_id": r.satellite_entity, "question": "Which lights should I turn on?",
                    "preannounce": False, "answers": [
                        {"id": "kitchen", "sentences": ["[turn on] [the] kitchen light[s]"]},
                        {"id": "garden", "sentences": ["[turn on] [the] garden light[s]"]},
                    ]}))  # fmt: skip
            quiet = asyncio.create_task(r.mic(b"\0" * 32000 * 30))  # the room, before we answer
            try:
                async with asyncio.timeout(30):
                    while not (r.sat.run is not None and r.sat.run.frames > 0):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                quiet.cancel()
            assert r.sat.run.wake == "", r.sat.run  # no wake word opened it
            asked = bytes(r.heard)
            await r.mic(clip, silence_s=2.5)
            answer = await asyncio.wait_for(ask, 30)
            await _until_history(r.sat)
            return {"asked": asked, "answer": answer, "run": r.sat.history[-1]}

    got = asyncio.run(scenario())
    assert wer("which lights should i turn on", transcribe(models, got["asked"])) <= 0.34
    result = got["answer"]["service_response"]  # {"id", "sentence", "slots"} of the match
    assert result is not None and result["id"] == "kitchen", (got["answer"], got["run"])


def test_ha_timer_rings_on_the_board(
    ha: HaTestbed, tmp_path: Path, models: Path, speech_dir: Path
) -> None:
    """A timer set by voice runs in HA (its timer intents); HA's timer events reach the
    board, and the finished timer is spoken on the board's speaker."""
    wake = say_wav("hey jarvis", speech_dir / "wake2.wav", pad=(0.5, 0.6))
    ask = say_wav("set a timer for five seconds", speech_dir / "timer.wav", pad=(0.0, 0.8))
    clip = read_wav(join_wavs([wake, ask], speech_dir / "timer-cmd.wav"))

    async def scenario() -> tuple[dict[str, Any], dict[str, int], bytes]:
        async with rig(ha, tmp_path, models, "sat-timer") as r:
            await r.mic(clip, silence_s=2.5)
            await _until_history(r.sat)
            run = r.sat.history[-1]
            await _quiet(r.heard)
            r.heard.clear()  # HA's "timer started" answer; what follows is the timer
            async with asyncio.timeout(30):
                while not r.sat.counts.get("timer_events", 0) >= 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # started, then finished
            await _quiet(r.heard)
            return run, dict(r.sat.counts), bytes(r.heard)

    run, counts, rang = asyncio.run(scenario())
    assert wer("set a timer for five seconds", run["stt"]) <= 0.34, run
    assert counts["timer_events"] >= 2, counts
    assert wer("your timer is done", transcribe(models, rang)) <= 0.25


def test_media_player_plays_what_ha_sends(ha: HaTestbed, tmp_path: Path, models: Path) -> None:
    """`media_player.play_media` on the board's media player entity: HA resolves the media
    (here a TTS media source), converts it to the board's WAV through its ffmpeg proxy,
    the board fetches and plays it, and its state goes playing -> idle in HA."""

    async def scenario() -> bytes:
        async with rig(ha, tmp_path, models, "sat-media") as r:
            ents = await r.api.call({"type": "config/entity_registry/list"})
            tts = next(e["entity_id"] for e in ents if e["entity_id"].startswith("tts.")
                       and e["platform"] == "wyoming")  # fmt: skip
            player = r.satellite_entity.replace("assist_satellite.", "media_player.").replace(
                "_assist_satellite", "_media_player"
            )
            media = f"media-source://tts/{tts}?message=The+garage+door+is+open"
            await r.api.post("/api/services/media_player/play_media", {
                "entity_id": player, "media_content_type": "music",
                "media_content_id": media})  # fmt: skip
            # the board's own count first (it counts once the speaker has played it all): a
            # quiet gap alone can come before the media on a busy box
            async with asyncio.timeout(60):
                while not r.sat.counts.get("played"):  # noqa: ASYNC110 - with a deadline
                    await asyncio.sleep(0.05)
            await _quiet(r.heard)
            await r.api.wait_state(
                lambda s: any(x["entity_id"] == player and x["state"] == "idle" for x in s),
                "media_player",
            )
            assert r.sat.counts.get("played") == 1, r.sat.counts
            return bytes(r.heard)

    heard = transcribe(models, asyncio.run(scenario()))
    assert wer("the garage door is open", heard) <= 0.4, heard  # Piper samples: see above


def test_a_wake_with_nothing_said_is_an_error_turn_and_the_mic_comes_back(
    ha: HaTestbed, tmp_path: Path, models: Path, speech_dir: Path
) -> None:
    """The wake word, then silence: HA's pipeline ends with an error; the board records it,
    reports it (`loomd.error`), gets its microphone back and wakes again afterwards."""
    wake = read_wav(say_wav("hey jarvis", speech_dir / "wake-only.wav", pad=(0.5, 0.6)))

    async def scenario() -> tuple[dict[str, Any], int]:
        async with rig(ha, tmp_path, models, "sat-silence", max_stream_s="3.0") as r:
            await r.mic(wake, silence_s=4.0)
            await _until_history(r.sat, timeout=30)
            async with asyncio.timeout(10):
                while component(r.host, "voice").handoff.streaming:
                    await r.mic(b"", silence_s=0.2)
            runs = r.sat.counts.get("runs", 0)
            await r.mic(wake, silence_s=1.0)  # wakes again: a new turn goes to HA
            return r.sat.history[-1], r.sat.counts.get("runs", 0) - runs

    run, again = asyncio.run(scenario())
    assert run["error"].startswith("no end of speech within 3 s"), run
    assert not run["stt"], run
    assert again == 1
