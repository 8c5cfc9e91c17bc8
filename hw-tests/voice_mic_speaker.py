"""On a board with a microphone and a speaker (not run in CI: no sound devices there).

    python hw-tests/voice_mic_speaker.py [DEVICE-SUBSTRING]

Records 3 s through loomd's PyAudioMic, plays it back through PyAudioSpeaker, and prints
the level; then says a sentence with Piper/espeak-ng. Listen for both."""

from __future__ import annotations

import asyncio
import os
import sys

import numpy as np

from loomd.audio.io import PyAudioMic, PyAudioSpeaker
from loomd.audio.tts import load_tts


async def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else ""
    mic, speaker = PyAudioMic(device), PyAudioSpeaker(device)
    pcm = b""
    async for frame in mic.frames():
        pcm += frame.pcm
        if len(pcm) >= 3 * 32000:
            break
    rms = float(np.sqrt(np.mean(np.frombuffer(pcm, np.int16).astype(np.float64) ** 2)))
    print(f"recorded 3 s, RMS {rms:.0f}")
    await speaker.play(pcm)
    models = os.environ.get("LOOMD_TEST_MODELS", "/usr/share/loomd/models")
    tts, why = load_tts("piper", models, "piper/en_US-joe-medium.onnx")
    print(why or f"speaking with {tts.name}")
    await speaker.play(tts.synthesize("The microphone and the speaker work."))


asyncio.run(main())
