"""The pipeline's one audio format and the queue that keeps it fresh.

Frames are 16 kHz mono signed 16-bit, 20 ms (320 samples, 640 bytes). `FreshQueue` holds
frames between stages: bounded by count *and* age, so a stage that fell behind (STT holding
the CPU) resumes on current audio instead of working through a backlog; what it drops is
counted."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FRAME_BYTES", "FRAME_MS", "FRAME_SAMPLES", "RATE", "Frame", "FreshQueue"]

RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2


@dataclass(frozen=True, slots=True)
class Frame:
    pcm: bytes  # FRAME_BYTES of s16le mono
    t: float  # stream clock: the frame's first sample / RATE (a sample clock, every source)
    at: float  # time.monotonic() when it entered the pipeline


class FreshQueue:
    """A frame queue bounded by count and age: the oldest frames go first when either bound
    is passed. `get()` returns the oldest frame that is still fresh."""

    def __init__(
        self,
        max_frames: int = 100,
        max_age_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_frames = max_frames
        self.max_age_s = max_age_s
        self.clock = clock
        self._items: collections.deque[Frame] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: Frame) -> None:
        self._items.append(frame)
        while len(self._items) > self.max_frames:
            self._items.popleft()
            self.dropped += 1
        self.high_water = max(self.high_water, len(self._items))
        self._ready.set()

    def _trim(self) -> None:
        horizon = self.clock() - self.max_age_s
        while self._items and self._items[0].at < horizon:
            self._items.popleft()
            self.dropped += 1

    async def get(self) -> Frame:
        while True:
            self._trim()
            if self._items:
                return self._items.popleft()
            self._ready.clear()
            await self._ready.wait()
