"""Shared test helpers: run a coroutine under a deadline, a settable clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

T = TypeVar("T")


LOOPS = ["asyncio", "uvloop"]


def arun(fn: Callable[[], Awaitable[T]], timeout: float = 20.0, loop: str = "asyncio") -> T:
    """Run `fn()` on a fresh loop (the daemon's uvloop or stock asyncio) under a deadline."""

    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await fn()

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(guarded())


async def wait_until(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    """Await a condition the writer thread makes true on its own, under a deadline.

    Polled: the writer has no event for "housekeeping done", and adding one only for
    tests would put a test seam in the hot path."""
    async with asyncio.timeout(within_s):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


class FakeClock:
    """An injected wall clock in ns that only moves when the test says so."""

    def __init__(self, now_ns: int = 1_000_000_000_000) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)
