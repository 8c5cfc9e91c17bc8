"""The Wyoming services of the real daemon, driven by the `wyoming` package's own client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loomd.audio.io import read_wav
from loomd.audio.wer import wer
from tests.audio.conftest import say_wav, voice_toml
from tests.conftest import LoomdProcess, free_port

pytestmark = pytest.mark.models


# wyoming.audio imports the stdlib's audioop (deprecated in 3.11, fine on the 3.11 we target).
@pytest.mark.filterwarnings("ignore:'audioop' is deprecated:DeprecationWarning")
def test_stt_tts_and_wake_over_wyoming(
    loomd_proc: LoomdProcess, models: Path, speech_dir: Path, command_clip: Path
) -> None:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info
    from wyoming.tts import Synthesize
    from wyoming.wake import Detect, Detection, NotDetected

    port = free_port()
    loomd_proc.write_config(
        voice_toml(models) + f"[voice.wyoming]\nenabled = true\nport = {port}\n"
    )
    loomd_proc.start(timeout=60)
    cmd = read_wav(say_wav("close the garage door", speech_dir / "garage.wav"))
    wake_clip = read_wav(command_clip)
    other = read_wav(say_wav("what time is it", speech_dir / "time.wav"))

    async def stream(client: Any, pcm: bytes) -> None:
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(pcm), 3200):
            chunk = AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + 3200])
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with asyncio.timeout(120), AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            out["info"] = Info.from_event(await client.read_event())
            await client.write_event(Transcribe().event())
            await stream(client, cmd)
            out["text"] = Transcript.from_event(await client.read_event()).text
            await client.write_event(Synthesize(text="The garage door is closed.").event())
            assert AudioStart.is_type((await client.read_event()).type)
            audio = b""
            while AudioChunk.is_type((ev := await client.read_event()).type):
                audio += AudioChunk.from_event(ev).audio
            assert AudioStop.is_type(ev.type)
            out["audio"] = audio
            await client.write_event(Detect().event())
            await stream(client, wake_clip)
            out["wake"] = await client.read_event()
            await client.write_event(Detect().event())
            await stream(client, other)
            out["no_wake"] = await client.read_event()
        return out

    got = asyncio.run(scenario())
    info = got["info"]
    assert info.asr[0].models[0].name == "ggml-tiny.en"
    assert info.tts[0].voices[0].name == "en_US-joe-medium"
    assert info.wake[0].models[0].name == "hey_jarvis_v0.1"
    assert wer("close the garage door", got["text"]) == 0.0, got["text"]
    assert len(got["audio"]) > 32000  # more than a second of speech
    from tests.audio.test_pipeline import transcribe

    heard = transcribe(models, got["audio"])
    assert wer("The garage door is closed.", heard) == 0.0, heard
    assert Detection.is_type(got["wake"].type)
    assert Detection.from_event(got["wake"]).name == "hey_jarvis_v0.1"
    assert NotDetected.is_type(got["no_wake"].type)
