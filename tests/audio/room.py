"""A fake room for the real daemon: what the board plays (`audio.out.<site>`) comes back to
its microphone (`audio.in.<site>`) after a delay, attenuated, over a noise floor, at real-time
pace; a "person" can speak into it too. Only the hardware edge is fake."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import numpy as np

from loomd.audio.frames import FRAME_BYTES


class FakeRoom:
    def __init__(
        self, bus: Any, *, site: str = "local", delay_ms: int = 60, gain_db: float = -6.0
    ) -> None:
        self.bus, self.site = bus, site
        self.delay_s = delay_ms / 1000
        self.gain = 10 ** (gain_db / 20)
        self._played: collections.deque[tuple[float, bytes]] = collections.deque()
        self._voice = collections.deque[bytes]()
        self._rng = np.random.default_rng(1)
        self.frames_out = 0
        self.echo_frames = 0
        self.tap: list[tuple[float, bytes]] | None = None  # (time, frame) sent to the mic
        self.last_played = 0.0  # when the board's last frame reached the room

    def speak(self, pcm: bytes) -> None:
        """A person in the room says `pcm` (16 kHz s16), starting now."""
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self._voice.append(pcm[i : i + FRAME_BYTES])

    async def _listen(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(f"audio.out.{self.site}", "realtime") as sub:
            await sub.ready()
            ready.set()
            async for ev in sub:
                self.last_played = time.monotonic()
                self._played.append((self.last_played, ev.payload))

    async def run(self, stop: asyncio.Event) -> None:
        ready = asyncio.Event()
        listener = asyncio.create_task(self._listen(ready))
        await ready.wait()
        began = time.monotonic()
        n = 0
        try:
            while not stop.is_set():
                n += 1
                await asyncio.sleep(max(0.0, began + n * 0.02 - time.monotonic()))
                mic = self._rng.normal(0, 30, FRAME_BYTES // 2)
                due = time.monotonic() - self.delay_s
                if self._played and self._played[0][0] <= due:
                    echo = np.frombuffer(self._played.popleft()[1], np.int16)
                    mic += echo.astype(np.float64) * self.gain
                    self.echo_frames += 1
                if self._voice:
                    mic += np.frombuffer(self._voice.popleft(), np.int16).astype(np.float64)
                frame = np.clip(mic, -32768, 32767).astype(np.int16).tobytes()
                await self.bus.publish(f"audio.in.{self.site}", frame, qos="realtime")
                if self.tap is not None:
                    self.tap.append((time.monotonic(), frame))
                self.frames_out += 1
        finally:
            listener.cancel()
