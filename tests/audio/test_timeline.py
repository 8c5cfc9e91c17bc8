"""The echo reference as a sample-accurate timeline (issue 18 item 5): every sample the
board plays is stamped with its play position and read back by the microphone frame that
hears it; tested in the sample-accurate fake room (tests/audio/room.py `SampleRoom`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bench.bargein import SENTENCES  # the reply the bench speaks too
from loomd.audio.aec import Timeline
from loomd.audio.frames import FRAME_SAMPLES, RATE
from loomd.audio.io import read_wav
from tests.audio.conftest import say_wav
from tests.audio.room import SampleRoom, wake_over_reply


def ramp(n: int, start: int = 1) -> bytes:
    return np.arange(start, start + n, dtype=np.int16).tobytes()


def test_a_clip_lands_on_its_play_position_despite_late_frames() -> None:
    tl = Timeline()
    rng = np.random.default_rng(3)
    for k in range(200):  # the mic clock: frames delivered up to 8 ms late
        tl.heard(k * 0.02, 50.0 + (k + 1) * 0.02 + rng.uniform(0, 0.008))
    # A clip whose first sample reaches the DAC 1.2345 s into the mic's clock.
    clip_t0 = 50.0 + 1.2345
    for i in range(5):
        tl.played(ramp(FRAME_SAMPLES, 1 + i * FRAME_SAMPLES), clip_t0, i * FRAME_SAMPLES)
    first = round(1.2345 * RATE)
    got = np.frombuffer(tl.read(first / RATE, 5 * FRAME_SAMPLES), np.int16)
    # The least-delayed frame of 200 was < 0.25 ms late: the clip is within 4 samples.
    shift = int(np.argmax(got > 0))
    assert shift <= 4, shift
    assert list(got[shift : shift + 10]) == list(range(1, 11))
    assert tl.clips == 1  # anchored once, not per chunk
    # Before the clip and after it: silence.
    assert not np.frombuffer(tl.read((first - 400) / RATE), np.int16).any()
    assert not np.frombuffer(tl.read((first + 5 * FRAME_SAMPLES + 8) / RATE), np.int16).any()
    assert tl.active(first / RATE + 0.5) and not tl.active(first / RATE + 1.2)


def test_a_new_stream_forgets_the_old_clock() -> None:
    tl = Timeline()
    for k in range(100):
        tl.heard(k * 0.02, 10.0 + (k + 1) * 0.02)
    tl.played(ramp(FRAME_SAMPLES), 10.5, 0)
    assert np.frombuffer(tl.read(0.5), np.int16).any()
    tl.heard(0.0, 99.02)  # a stream whose clock starts again
    assert not np.frombuffer(tl.read(0.5), np.int16).any()
    assert tl.sample_at(99.02) == FRAME_SAMPLES


def test_the_room_echo_is_sample_accurate() -> None:
    """The fake room itself: the echo of a played click is at exactly the delay."""
    room = SampleRoom(2.0, noise=0.0, latency_ms=(10.0, 10.0), delay_ms=37.5, gain_db=0.0)
    click = np.zeros(FRAME_SAMPLES * 3, np.int16)
    click[100] = 1000

    async def run() -> bytes:
        mic = bytearray()
        task = asyncio.create_task(room.speaker.play(click.tobytes()))
        async for frame in room.mic.frames():
            mic += frame.pcm
        assert task.done() and task.result() is True
        return bytes(mic)

    mic = np.frombuffer(asyncio.run(run()), np.int16)
    (hits,) = np.nonzero(mic)
    assert list(hits) == [room.starts[0] + 100 + 600], (hits, room.starts)


@pytest.fixture(scope="module")
def reply(models: Path) -> list[bytes]:
    """The reply in Piper's voice, rendered without its random noise (noise scales 0), so
    every run hears the same board: Piper renders each reply a little differently, and
    where the word falls against the board's speech moves the score (bench/voice.py
    measures over fresh renderings)."""
    from piper import PiperVoice
    from piper.config import SynthesisConfig

    from loomd.audio.tts import resample

    onnx = models / "piper/en_US-joe-medium.onnx"
    voice = PiperVoice.load(str(onnx), config_path=str(onnx) + ".json")
    exact = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    return [
        b"".join(resample(c.audio_int16_bytes, c.sample_rate)
                 for c in voice.synthesize(s, syn_config=exact))
        for s in SENTENCES
    ]  # fmt: skip


@pytest.fixture(scope="module")
def wake(models: Path) -> object:
    from loomd.audio.wake import WakeDetector

    return WakeDetector(str(models), ("openwakeword/hey_jarvis_v0.1.onnx",), refractory_s=0.0)


@pytest.mark.models
def test_barge_in_over_a_reply_with_a_wandering_lag(
    reply: list[bytes], wake: object, speech_dir: Path
) -> None:
    """A reply of five sentence clips, each reaching the room after a new random latency
    (5-45 ms): the person's "hey jarvis" at six places over the board's voice is heard
    over the speaking threshold (0.6) every time, and the board alone never reaches it."""
    person = read_wav(say_wav("hey jarvis", speech_dir / "tl-person.wav", pad=(0.0, 0.3)))
    seconds = sum(len(c) for c in reply) / 32000
    word = len(person) / 32000
    peaks = []
    for k in range(6):
        at = 2.0 + (seconds - 2.5) * k / 5  # from 1 s into the reply to its last words
        room = SampleRoom(seconds + 3.0, seed=k)
        room.speak(person, at)
        scores = asyncio.run(wake_over_reply(room, reply, wake))
        peaks.append(max(s for t, s in scores if at <= t <= at + word + 0.8))
    assert min(peaks) >= 0.6, peaks
    alone = asyncio.run(wake_over_reply(SampleRoom(seconds + 3.0, seed=50), reply, wake))
    assert max(s for _, s in alone) < 0.6  # no self-wake, even while converging
    assert max(s for t, s in alone if t > 2.0) < 0.1, alone  # once converged: far below


@pytest.mark.models
def test_the_timeline_cancels_the_echo_across_sentences_the_fifo_did_not(
    reply: list[bytes],
) -> None:
    """Echo reduction over the whole reply (after the canceller's first 2 s), the same
    rooms: the timeline keeps the canceller on the echo across the five clips; the FIFO
    reference it replaced re-anchors at each clip and loses it (the control)."""

    class Silent:  # no wake word here: only the canceller is measured
        last = 0.0

        def reset(self) -> None: ...

        def process(self, *args: object, **kw: object) -> None: ...

    erle: dict[bool, list[float]] = {False: [], True: []}
    seconds = sum(len(c) for c in reply) / 32000
    for seed in range(2):
        for fifo in (False, True):
            power: list[tuple[float, float]] = []
            room = SampleRoom(seconds + 3.0, seed=seed, noise=1.0)
            asyncio.run(wake_over_reply(room, reply, Silent(), fifo=fifo, power=power))
            p = np.array(power[150:])  # from 2 s into the reply
            erle[fifo].append(10 * float(np.log10(p[:, 0].sum() / p[:, 1].sum())))
    assert min(erle[False]) >= 20.0, erle
    assert max(erle[True]) < min(erle[False]) - 8.0, erle
