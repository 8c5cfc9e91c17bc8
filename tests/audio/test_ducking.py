"""Ducking, with the speaker into a buffer (a realtime `BufferSink`): media plays, an
announcement comes, the media goes on under it lowered and at its own level after it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from loomd.audio.ducking import Media, duck_mix
from loomd.audio.frames import RATE
from loomd.audio.io import BufferSink
from loomd.messages import PlayAudio, PlayDone, Topic
from loomd.sdk import Client
from tests.audio.conftest import voice_toml
from tests.conftest import LoomdProcess

DUCK_DB = 20.0


def tone(seconds: float, hz: float, level: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def gain_of(out: np.ndarray, media: np.ndarray, a: int, b: int) -> float:
    """Least-squares gain of `media[a:b]` in `out[a:b]` (the voice is orthogonal to it)."""
    m = media[a:b].astype(np.float64)
    return float(np.dot(out[a:b].astype(np.float64), m) / np.dot(m, m))


def test_duck_mix_lowers_the_media_under_the_voice_only() -> None:
    media = tone(1.0, 440, 8000)
    voice = tone(0.5, 1000, 4000)
    out = np.frombuffer(duck_mix(voice.tobytes(), media.tobytes(), DUCK_DB), np.int16)
    assert len(out) == len(media)
    under = out - np.pad(voice, (0, len(media) - len(voice)))  # the media's part
    assert gain_of(under, media, 1600, 6400) == pytest.approx(10 ** (-DUCK_DB / 20), abs=0.01)
    assert gain_of(under, media, 8800, len(media)) == pytest.approx(1.0, abs=0.01)


def test_an_announcement_ducks_the_media_and_it_comes_back() -> None:
    async def run() -> tuple[np.ndarray, bool, bool, int]:
        sink = BufferSink(realtime=True)
        media = Media(sink, sink.play)
        clip = tone(2.0, 440, 8000)
        on = asyncio.Event()
        sink.listeners.append(lambda _frame, _t0, _offset: on.set())
        playing = asyncio.create_task(media.play(clip.tobytes()))
        async with asyncio.timeout(5):
            await on.wait()  # the media is on the speaker
        await asyncio.sleep(0.4)  # and plays a while
        assert media.playing
        said = await media.announce(tone(0.6, 1000, 4000).tobytes(), DUCK_DB)
        done = await asyncio.wait_for(playing, 10)
        return np.frombuffer(bytes(sink.audio), np.int16), said, done, len(sink.clips)

    out, said, done, clips = asyncio.run(run())
    assert said and done
    assert clips == 3  # the media, the announcement over it, the rest of the media
    media = tone(2.0, 440, 8000)
    # Every sample of the media played once: nothing skipped, nothing repeated
    assert len(out) == len(media)
    voice = tone(0.6, 1000, 4000)
    # Where the announcement began: the first sample that is not the media
    start = int(np.flatnonzero(np.abs(out.astype(np.int32) - media) > 300)[0])
    assert 0.3 * RATE < start < 1.0 * RATE, start
    under = out.astype(np.int32)
    under[start : start + len(voice)] -= voice  # the media's part of the mix
    ramp = RATE // 20  # past the 50 ms ramps
    g_during = gain_of(under, media, start + ramp, start + len(voice) - ramp)
    g_after = gain_of(out, media, start + len(voice), len(out))
    before = gain_of(out, media, 0, start)
    assert g_during == pytest.approx(10 ** (-DUCK_DB / 20), abs=0.02), g_during
    assert before == pytest.approx(1.0, abs=0.01) and g_after == pytest.approx(1.0, abs=0.01)


def test_a_stop_stops_the_media_for_good() -> None:
    async def run() -> bool:
        sink = BufferSink(realtime=True)
        media = Media(sink, sink.play)
        playing = asyncio.create_task(media.play(tone(2.0, 440, 8000).tobytes()))
        await asyncio.sleep(0.3)
        sink.stop()
        return await asyncio.wait_for(playing, 5)

    assert asyncio.run(run()) is False


def level_at(frame: bytes, hz: float) -> float:
    """The amplitude of the `hz` component of one 20 ms frame (phase does not matter)."""
    x = np.frombuffer(frame, np.int16).astype(np.float64)
    t = np.arange(len(x)) / RATE
    a = np.dot(x, np.sin(2 * np.pi * hz * t)) * 2 / len(x)
    b = np.dot(x, np.cos(2 * np.pi * hz * t)) * 2 / len(x)
    return float(np.hypot(a, b))


@pytest.mark.models
def test_the_daemon_ducks_media_under_an_announcement(
    loomd_proc: LoomdProcess, models: Path
) -> None:
    """Home Assistant's path: media on `voice.play`, then an announcement on `voice.play`;
    what the board plays (`audio.out.local`): the media's tone at its level, about 20 dB
    under the announcement while it plays, at its level again after it."""
    loomd_proc.write_config(voice_toml(models, sink='"bus"', source='"none"'))
    loomd_proc.start(timeout=60)

    async def scenario() -> list[bytes]:
        async with Client(loomd_proc.endpoint, name="test", timeout=10) as bus:
            async with bus.subscribe("audio.out.local", "realtime") as out:
                await out.ready()
                media = PlayAudio(tone(3.0, 440, 8000).tobytes(), "local", "media")
                await media.publish(bus)
                frames = [(await out.get(timeout=10)).payload for _ in range(30)]
                ann = PlayAudio(tone(0.8, 1000, 4000).tobytes(), "local", "ann", True)
                ev = await bus.request(Topic.VOICE_PLAY, ann.to_payload(), timeout=20)
                assert PlayDone.from_payload(ev.payload).played
                while True:
                    try:
                        frames.append((await out.get(timeout=1.0)).payload)
                    except TimeoutError:
                        return frames

    frames = asyncio.run(scenario())
    media = [level_at(f, 440) for f in frames]
    voice = [level_at(f, 1000) for f in frames]
    under = [m for m, v in zip(media, voice, strict=True) if v > 3000]
    assert len(under) >= 30, voice  # the announcement's 0.8 s, give or take the ramps
    first = voice.index(next(v for v in voice if v > 3000))
    last = len(voice) - 1 - voice[::-1].index(next(v for v in voice[::-1] if v > 3000))
    before, after = media[5:first], media[last + 3 :]
    assert before and after, (first, last, len(frames))
    assert np.median(before) == pytest.approx(8000, rel=0.05)
    assert np.median(under) == pytest.approx(800, rel=0.3)  # 20 dB down
    assert np.median(after) == pytest.approx(8000, rel=0.05)
    # The media played on to its end: 3 s in all, plus the announcement over it
    assert len(frames) >= 140
