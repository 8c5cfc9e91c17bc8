"""A bounded ring of once-a-second samples: events/s in and out, drops/s and loop lag."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loomd.messages import BusStats

__all__ = ["History", "Sample"]

INTERVAL_S = 1.0
KEEP = 600  # ten minutes at one sample a second


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # time.time() at the end of the second
    events_in: float  # per second
    events_out: float
    drops: float
    lag_ms: float  # how late this sampler woke up: the loop lag it saw

    def to_list(self) -> list[float]:
        return [
            round(self.t, 3),
            round(self.events_in, 2),
            round(self.events_out, 2),
            round(self.drops, 2),
            round(self.lag_ms, 2),
        ]


class History:
    """`run()` samples the bus's counters (`Bus.stats()`) once a second into a ring of
    `keep` samples: nothing on the bus's hot path."""

    FIELDS = ("t", "events_in", "events_out", "drops", "lag_ms")

    def __init__(
        self,
        stats: Callable[[], Awaitable[BusStats]],
        keep: int = KEEP,
        interval: float = INTERVAL_S,
    ) -> None:
        self._stats = stats
        self.interval = interval
        self.ring: deque[Sample] = deque(maxlen=keep)
        self._last: tuple[float, int, int, int] | None = None  # loop time, in, out, drops

    async def _counts(self) -> tuple[int, int, int]:
        s = await self._stats()
        return s.events_in, s.events_out, sum(s.drops.values())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.take(loop.time(), 0.0, await self._counts())  # the baseline: from now on
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            lag_ms = max(0.0, now - before - self.interval) * 1000
            self.take(now, lag_ms, await self._counts())

    def take(self, now: float, lag_ms: float, counts: tuple[int, int, int]) -> None:
        last, self._last = self._last, (now, *counts)
        if last is None:
            return  # the first reading is the baseline of the first rate
        dt = max(now - last[0], 1e-6)
        self.ring.append(
            Sample(
                time.time(),
                (counts[0] - last[1]) / dt,
                (counts[1] - last[2]) / dt,
                max(0, counts[2] - last[3]) / dt,
                lag_ms,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval,
            "keep": self.ring.maxlen,
            "fields": list(self.FIELDS),
            "samples": [s.to_list() for s in self.ring],
        }
