"""The microphone's mute on the real daemon: `voice.mute` (what the MQTT bridge publishes
for Home Assistant's "Mute" switch) and `loomctl voice mute on|off`. Muted: no wake, no
turn, nothing on `audio.frames`; the state shows in status, on `voice.state` and on the
status page's voice line; unmuted, the same audio wakes it and streams again. The mic is
the bus source fed from a WAV at real-time pace."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import read_wav
from loomd.messages import Topic, VoiceMute, VoiceStateEvent, WakeAction, WakeClaim
from loomd.sdk import Client
from tests.audio.conftest import feed_mic, voice_toml
from tests.audio.test_pipeline import loomctl
from tests.conftest import LoomdProcess, first_event, free_port
from tests.web.conftest import get_json

pytestmark = pytest.mark.models


async def muted_event(states: Any, want: bool) -> VoiceStateEvent:
    return await first_event(states, VoiceStateEvent, lambda ev: ev.muted is want, 10)


def test_mute_silences_the_microphone_and_unmute_resumes(
    loomd_proc: LoomdProcess, models: Path, command_clip: Path
) -> None:
    clip = read_wav(command_clip)
    tail = b"\0" * 32000 * 2
    port = free_port()  # the status page
    page = f'[metrics]\nbind = "127.0.0.1"\nport = {port}\npage = "local"\n'
    loomd_proc.write_config(
        voice_toml(models, source='"bus"', sink='"buffer"', agent='"none"') + page
    )
    loomd_proc.start(timeout=60)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Client(loomd_proc.endpoint, name="test", timeout=10) as bus:

            async def voice() -> dict[str, Any]:
                st: dict[str, Any] = (await bus.status())["status"]["components"]["voice"]
                return st["status"]  # type: ignore[no-any-return]

            async with (
                bus.subscribe(Topic.VOICE_STATE) as states,
                bus.subscribe(Topic.VOICE_WAKE) as wakes,
                bus.subscribe(f"{Topic.AUDIO_FRAMES}.local", "realtime") as streamed,
                bus.subscribe(Topic.VOICE_TRANSCRIPT) as transcripts,
            ):
                for sub in (states, wakes, streamed, transcripts):
                    await sub.ready()
                # Home Assistant's switch, as the MQTT bridge publishes it
                await VoiceMute(True).publish(bus)
                out["muted_event"] = await muted_event(states, True)
                before = await voice()
                await feed_mic(bus, clip + tail)
                with pytest.raises(TimeoutError):
                    await wakes.get(timeout=1.0)  # the clip has been fed whole by now
                with pytest.raises(TimeoutError):
                    await streamed.get(timeout=0.1)
                with pytest.raises(TimeoutError):
                    await transcripts.get(timeout=0.1)
                out["before"], out["muted"] = before, await voice()
                out["page"] = await asyncio.to_thread(get_json, port, "/api/voice")

                # Unmuted (as `loomctl voice mute off` does): the same audio wakes it; a
                # claimant takes the turn, so the microphone streams on `audio.frames`.
                out["off"] = await bus.call("voice.mute", args=["off"], timeout=10)
                out["unmuted_event"] = await muted_event(states, False)
                feeder = asyncio.create_task(feed_mic(bus, clip + tail * 3))
                ask = await wakes.get(timeout=15)
                await WakeClaim(WakeAction.STREAM, "test").respond(bus, ask)
                first = await streamed.get(timeout=5)
                assert isinstance(first.payload, bytes)
                # Muted mid-stream: the stream stops while the audio keeps coming.
                p = await asyncio.to_thread(loomctl, loomd_proc, "voice", "mute", "on")
                out["cli"] = p.stdout + p.stderr
                await muted_event(states, True)
                while True:  # frames already on their way when it muted
                    try:
                        await streamed.get(timeout=0.3)
                    except TimeoutError:
                        break
                with pytest.raises(TimeoutError):
                    await streamed.get(timeout=1.5)
                assert not feeder.done()  # the mic was still sending all along
                await feeder
                out["end"] = await voice()
        return out

    got = asyncio.run(scenario())
    assert got["muted_event"].muted is True and got["muted_event"].state == "idle"
    before, muted, end = got["before"], got["muted"], got["end"]
    assert before["muted"] is True and muted["muted"] is True
    # The frames arrived (the mic was live) and went no further.
    assert muted["frames"] - before["frames"] >= len(clip) // 640 * 0.9, (before, muted)
    assert muted["wakes"] == 0 and muted["utterances"] == 0, muted
    assert got["page"]["state"] == "running" and got["page"]["muted"] is True, got["page"]
    assert got["off"]["muted"] is False and got["unmuted_event"].muted is False
    assert "microphone muted" in got["cli"], got["cli"]
    assert end["wakes"] == 1 and end["muted"] is True, end
