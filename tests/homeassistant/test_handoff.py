"""Who takes a wake word's turn, with no Home Assistant connected: the board answers by
itself (its own STT publishes the transcript), and a muted satellite drops the wake.
The real voice pipeline and models; the microphone is the bus source fed from a WAV."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loomd.audio.io import read_wav
from loomd.audio.wer import wer
from loomd.bus.local import LocalBus
from loomd.messages import Topic, Transcript
from tests.homeassistant.conftest import board, component, free_port, ha_section, voice_section
from tests.homeassistant.test_satellite import Rig

pytestmark = [
    pytest.mark.models,
    pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning"),
]
NAMES = ("state", "bus", "voice", "homeassistant")


def test_ha_away_the_board_answers_itself_and_mute_drops(
    tmp_path: Path, models: Path, command_clip: Path
) -> None:
    body = voice_section(models, free_port()) + ha_section(free_port())

    async def scenario() -> tuple[Transcript, dict[str, int], int]:
        async with board(tmp_path, body, "away", NAMES) as host:
            bus = LocalBus(host.services.broker, "test")  # type: ignore[arg-type]
            sat = component(host, "homeassistant").satellite
            voice = component(host, "voice")
            rig = Rig(host, None, bus, sat, "", bytearray())  # type: ignore[arg-type]
            clip = read_wav(command_clip)
            async with bus.subscribe(Topic.VOICE_TRANSCRIPT) as sub:
                await sub.ready()
                await rig.mic(clip, silence_s=1.5)
                ev = await sub.get(timeout=30)
                heard = Transcript.from_payload(ev.payload)
                sat.muted = True  # HA's mute switch, as the adoption test drives it
                streams = voice.handoff.streams
                await rig.mic(clip, silence_s=1.5)
                with pytest.raises(TimeoutError):
                    await sub.get(timeout=3)  # dropped: no turn, no transcript
            return heard, dict(sat.counts), voice.handoff.streams - streams

    heard, counts, streamed = asyncio.run(scenario())
    assert wer("turn on the kitchen lights", heard.text) <= 0.25, heard
    assert counts.get("wakes_local_ha_away") == 1, counts
    assert counts.get("wakes_dropped") == 1, counts
    assert counts.get("runs", 0) == 0 and streamed == 0
