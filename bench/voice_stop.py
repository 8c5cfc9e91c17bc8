"""The stop word on the real daemon in the fake room (tests/audio/room.py), for bench/voice.py.

The board says a reply (Piper) through the room; a person (Piper too) says the stop word
over it at a random moment; the board's own replies, some saying the word themselves, run
with no person. loomd: the daemon's pipeline (echo canceller, self-stop guard, the stop
model in the wake worker). Raw baseline: openWakeWord alone on the same microphone audio
(no canceller, no guard). No pinned wheel ships a "stop" model, so the word is a stand-in
that one does ship (`STOP_MODEL`, docs/design/voice-stop.md); the keys say so.

Keys: `stop_recall`, `stop_ms_p50` (the word's end to the board's last frame of audio),
`self_stop_per_hour` (stops with no person speaking, per hour of the board's voice), and
`raw_stop_recall`, `raw_stop_ms_p50` (stream time, score crossing), `raw_self_stop_per_hour`.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.falsewake import scores
from bench.harness import daemon_config, spawn_daemon
from loomd.audio.frames import FRAME_BYTES

STOP_MODEL = "openwakeword/alexa_v0.1.onnx"
STOP_PHRASE = "Alexa."
REPLIES = [
    "The weather tomorrow will be mild with a light breeze and some sun in the afternoon.",
    "Your next meeting is at three, and the kitchen lights are still on downstairs.",
    "I set a timer for ten minutes. The oven should be warm by the time it rings.",
]
SELF = "Alexa is a name people give to speakers. I said Alexa, and you heard it. Alexa!"
WINDOW_S = 2.0  # a stop later than this after the word is not a hit


def trim(pcm: bytes) -> bytes:
    """The speech without the silence around it (Piper pads a little)."""
    x = np.abs(np.frombuffer(pcm, np.int16).astype(np.int32))
    loud = np.flatnonzero(x > 500)
    return pcm[int(loud[0]) * 2 : int(loud[-1]) * 2 + 2] if len(loud) else pcm


def stop_bench(models: Path, quick: bool) -> dict[str, Any]:
    from piper import PiperVoice

    from loomd.audio.tts import resample

    onnx = models / "piper/en_US-joe-medium.onnx"
    voice = PiperVoice.load(str(onnx), config_path=str(onnx) + ".json")

    def piper(text: str) -> bytes:
        return b"".join(
            resample(c.audio_int16_bytes, c.sample_rate) for c in voice.synthesize(text)
        )

    word = trim(piper(STOP_PHRASE))
    trials = 4 if quick else 12
    root = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    conf = daemon_config(
        root,
        "[metrics]\nenabled = false\n"
        f'[voice]\nenabled = true\nmodels_dir = "{models}"\nsource = "bus"\nsink = "bus"\n'
        f'agent = "none"\n[voice.stop]\nmodel = "{STOP_MODEL}"\n',
    )
    proc = spawn_daemon(conf)
    try:
        got = asyncio.run(_run(f"ipc://{root}/run/bus.sock", word, trials, quick))
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)
    # The raw baseline on the same microphone audio.
    mic = b"".join(f for _, f in got["tap"])
    raw = scores(models, mic, STOP_MODEL)
    hits = [(k + 1) * 0.08 for k, sc in enumerate(raw) if sc >= 0.5]
    words = [(a * 0.02, b * 0.02) for a, b in got["words"]]  # stream seconds
    caught, late = 0, []
    for a, b in words:
        first = next((h for h in hits if a <= h <= b + WINDOW_S), None)
        if first is not None:
            caught += 1
            late.append((first - b) * 1000)
    # The board alone, as for loomd's figure: before the first person spoke.
    stray = [h for h in hits if h < got["alone_frames"] * 0.02]
    return {
        "stop_word": f"{Path(STOP_MODEL).stem} (stand-in: no pinned wheel ships 'stop')",
        "stop_recall": round(got["caught"] / len(words), 3),
        "stop_ms_p50": round(statistics.median(got["stop_ms"]), 1) if got["stop_ms"] else None,
        "self_stop_per_hour": round(got["self_stops"] * 3600 / got["self_s"], 2),
        "self_stop_audio_s": round(got["self_s"], 1),
        "raw_stop_recall": round(caught / len(words), 3),
        "raw_stop_ms_p50": round(statistics.median(late), 1) if late else None,
        "raw_self_stop_per_hour": round(len(stray) * 3600 / got["self_s"], 2),
    }


async def _run(endpoint: str, word: bytes, trials: int, quick: bool) -> dict[str, Any]:
    from bench.harness import wait_daemon_op
    from loomd.messages import Topic, VoiceStop
    from loomd.sdk import Client
    from tests.audio.room import FakeRoom

    await wait_daemon_op(endpoint, "voice.last", 90)
    rng = random.Random(7)
    out: dict[str, Any] = {"words": [], "stop_ms": [], "caught": 0, "self_stops": 0}
    async with Client(endpoint, name="bench", timeout=10) as bus:
        room = FakeRoom(bus)
        room.tap = []
        done = asyncio.Event()
        runner = asyncio.create_task(room.run(done))
        async with bus.subscribe(Topic.VOICE_STOP) as stops:
            await stops.ready()

            async def say(text: str) -> float:
                began = time.monotonic()
                await bus.call("voice.say", args=[text], timeout=120)
                return time.monotonic() - began

            # The board alone: its replies, some saying the word, and no person.
            self_s = 0.0
            for text in [SELF, *REPLIES][: 2 if quick else 4]:
                self_s += await say(text)
                await asyncio.sleep(1.0)  # the echo tail
                while True:
                    try:
                        VoiceStop.from_event(await stops.get(timeout=0.05))
                        out["self_stops"] += 1
                    except TimeoutError:
                        break
            out["self_s"], out["alone_frames"] = self_s, room.frames_out
            # A person says the word over the board's reply.
            reply_s = 0.0
            for i in range(trials):
                text = " ".join([REPLIES[i % len(REPLIES)]] * 2)
                said = asyncio.create_task(say(text))
                await asyncio.sleep(1.5 + rng.random() * 2.5)
                start = room.frames_out  # the room's next frame carries the word
                room.speak(word)
                end = start + len(word) // FRAME_BYTES
                out["words"].append((start, end))
                reply_s += await said
                await asyncio.sleep(1.0)
                try:
                    ev = VoiceStop.from_event(await stops.get(timeout=0.05))
                except TimeoutError:
                    continue
                word_end = next(t for t, _ in room.tap[end - 1 : end])
                if ev.reason == "stop word" and room.last_played - word_end <= WINDOW_S:
                    out["caught"] += 1
                    out["stop_ms"].append(max(0.0, room.last_played - word_end) * 1000)
                while True:  # a second stop on the same word would be counted here
                    try:
                        await stops.get(timeout=0.05)
                    except TimeoutError:
                        break
            out["reply_s"] = reply_s
        done.set()
        await runner
        out["tap"] = room.tap
    return out
