"""Ducking: media the board plays (Home Assistant's `play_media`, `voice.play` without
`announcement`) goes on under an announcement at a lower level, and comes back to its own
level after it, instead of being cut.

The sink plays one clip at a time, so ducking is done on the samples: the media clip plays
through the sink; an announcement stops it where it is, plays itself mixed over the next
stretch of the media lowered by `duck_db` (with short ramps down and up), and the media
goes on from the end of that stretch at full level. What played is counted by a listener on
the sink (frames actually played), so the media resumes where it really was."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from loomd.audio.frames import FRAME_BYTES, RATE

if TYPE_CHECKING:
    from loomd.audio.io import Sink

__all__ = ["Media", "Volume", "duck_mix"]

RAMP_MS = 50


def duck_mix(voice: bytes, media: bytes, duck_db: float, ramp_ms: int = RAMP_MS) -> bytes:
    """`voice` over `media` lowered by `duck_db` (ramped down at the start and back up at
    the end over `ramp_ms`); as long as the longer of the two."""
    import numpy as np

    v = np.frombuffer(voice, dtype=np.int16).astype(np.float32)
    m = np.frombuffer(media, dtype=np.int16).astype(np.float32)
    n = max(len(v), len(m))
    low = 10 ** (-duck_db / 20)
    gain = np.ones(len(m), dtype=np.float32)
    span = min(len(v), len(m))  # the media under the voice
    gain[:span] = low
    ramp = min(span // 2, RATE * ramp_ms // 1000)
    if ramp:
        steps = np.linspace(1.0, low, ramp, dtype=np.float32)
        gain[:ramp] = steps
        gain[span - ramp : span] = steps[::-1]  # back up as the voice ends
    out = np.zeros(n, dtype=np.float32)
    out[: len(m)] += m * gain
    out[: len(v)] += v
    return bytes(np.clip(out, -32768, 32767).astype(np.int16).tobytes())


class Volume:
    """The level a sink plays at, changed while it plays: a barge-in candidate ducks the
    board's voice at once and the wake check's verdict restores it (loomd.audio.pipeline).
    The sink scales each 20 ms chunk as it plays it (`apply`), ramped from the last chunk's
    level to the new one across the chunk (no click), before its listeners see it: the echo
    reference is what really played."""

    def __init__(self) -> None:
        self.level = 1.0
        self._last = 1.0

    def set(self, level: float) -> None:
        self.level = min(1.0, max(0.0, level))

    def duck(self, db: float) -> None:
        self.set(10 ** (-db / 20))

    def restore(self) -> None:
        self.set(1.0)

    @property
    def ducked(self) -> bool:
        return self.level < 1.0

    def apply(self, chunk: bytes) -> bytes:
        a, b = self._last, self.level
        self._last = b
        if a == 1.0 and b == 1.0:
            return chunk
        import numpy as np

        x = np.frombuffer(chunk, dtype=np.int16).astype(np.float32)
        gain = np.linspace(a, b, len(x), dtype=np.float32) if a != b else np.float32(b)
        return bytes(np.clip(x * gain, -32768, 32767).astype(np.int16).tobytes())


class Media:
    """One media clip at a time on `sink`; `announce()` ducks it (see the module doc).
    `play_clip` plays on the sink (the speaker's own play: echo reference, guard)."""

    def __init__(self, sink: Sink, play_clip: Callable[[bytes], Awaitable[bool]]) -> None:
        self.sink, self._play = sink, play_clip
        self.pcm = b""
        self.pos = 0  # bytes of the media played so far
        self._count = False
        self._frames = 0
        self._ducking: asyncio.Event | None = None  # set when the announcement is over
        self._paused = asyncio.Event()
        sink.listeners.append(self._played)

    def _played(self, frame: bytes, clip_t0: float, offset: int) -> None:
        if self._count:
            self._frames += 1

    @property
    def playing(self) -> bool:
        return self.pos < len(self.pcm)

    async def play(self, pcm: bytes) -> bool:
        """Play `pcm` to its end (ducked under announcements); False if it was stopped."""
        self.pcm, self.pos = pcm, 0
        try:
            while self.pos < len(self.pcm):
                self._frames, self._count = 0, True
                done = await self._play(self.pcm[self.pos :])
                self._count = False
                self.pos = min(len(self.pcm), self.pos + self._frames * FRAME_BYTES)
                if done:
                    return True
                ducking = self._ducking
                if ducking is None:  # stopped (voice.stop, the stop word): not ducked
                    return False
                self._paused.set()
                await ducking.wait()
            return True
        finally:
            self.pcm, self.pos, self._count = b"", 0, False
            self._paused.set()  # an announcement that came as it ended mixes over nothing

    async def announce(self, voice: bytes, duck_db: float) -> bool:
        """Play `voice` over the media lowered by `duck_db`; the media goes on after it."""
        ducking = self._ducking = asyncio.Event()
        self._paused.clear()
        try:
            self.sink.stop()
            await self._paused.wait()
            under = self.pcm[self.pos : self.pos + len(voice)]
            under = under[: len(under) - len(under) % 2]
            self.pos += len(under)
            return await self._play(duck_mix(voice, under, duck_db))
        finally:
            self._ducking = None
            ducking.set()
