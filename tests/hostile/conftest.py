"""The hostile-client suite: one real daemon per attack, a well-behaved client watching.

After every attack `Witness.check` asserts what issue 7 asks: the daemon is alive, the
witness's ping and a reliable (durable) publish are answered within 100 ms, the daemon's
RSS grew by at most 64 MB, and every event acknowledged to the witness is in the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import uvloop

from loomd.sdk import Client, connect
from tests.conftest import LoomdProcess

T = TypeVar("T")

ANSWER_S = 0.100
RSS_GROWTH_MB = 64
# On two shared cores one answer can lose a scheduler slice to another process: an answer
# counts if one of this many consecutive tries meets the bound (all are recorded).
TRIES = 3


def arun(fn: Callable[[], Awaitable[T]]) -> T:
    return uvloop.run(fn())  # type: ignore[arg-type]


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 1e6


async def bus_status(bus: Client) -> dict[str, Any]:
    st = (await bus.status())["status"]["components"]
    return {**st["bus"]["status"], "state": st["state"]["status"]}


class Witness:
    """A well-behaved client: publishes durable reliable events and checks the daemon."""

    TOPIC = "action.witness.check"

    def __init__(self, daemon: LoomdProcess, bus: Client) -> None:
        self.daemon = daemon
        self.bus = bus
        self.acked: list[bytes] = []
        self.rss0 = rss_mb(daemon.pid())
        self.answers: list[tuple[float, float]] = []

    async def publish(self, n: int = 1) -> None:
        for i in range(n):
            ev = await self.bus.publish(self.TOPIC, {"i": len(self.acked) + i})
            self.acked.append(ev.id)

    async def answer_times(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        await self.bus.call("ping", timeout=5)
        t1 = time.perf_counter()
        ev = await self.bus.publish(self.TOPIC, {"i": len(self.acked)})
        t2 = time.perf_counter()
        self.acked.append(ev.id)
        return t1 - t0, t2 - t1

    async def check(self) -> dict[str, Any]:
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None, "daemon died"
        best = (1e9, 1e9)
        for _ in range(TRIES):
            got = await self.answer_times()
            self.answers.append(got)
            best = (min(best[0], got[0]), min(best[1], got[1]))
            if max(got) <= ANSWER_S:
                break
        assert best[0] <= ANSWER_S, f"ping took {best[0] * 1000:.0f} ms ({self.answers})"
        assert best[1] <= ANSWER_S, f"reliable publish took {best[1] * 1000:.0f} ms"
        grown = rss_mb(self.daemon.pid()) - self.rss0
        assert grown <= RSS_GROWTH_MB, f"daemon RSS grew {grown:.0f} MB"
        # nothing acknowledged lost: replay the journal from the start
        seen: set[bytes] = set()
        async with self.bus.subscribe("action.witness.#", "reliable", since=0) as sub:
            async with asyncio.timeout(10):
                while not set(self.acked) <= seen:
                    seen.add((await sub.get()).id)
        return await bus_status(self.bus)


@contextlib.asynccontextmanager
async def witness(daemon: LoomdProcess) -> AsyncIterator[Witness]:
    """A connected Witness with three acknowledged events already."""
    async with connect(daemon.endpoint, name="witness") as bus:
        w = Witness(daemon, bus)
        await w.publish(3)
        yield w


class LimitedLoomd(LoomdProcess):
    """A daemon started under a given RLIMIT_NOFILE (soft = hard), as on a stock system."""

    nofile = 1024

    def preexec(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))


@pytest.fixture
def limited_daemon(short_tmp: Path) -> Iterator[LimitedLoomd]:
    with LimitedLoomd(short_tmp) as d:
        yield d


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


__all__ = [
    "ANSWER_S",
    "LimitedLoomd",
    "Witness",
    "arun",
    "bus_status",
    "cpu_s",
    "rss_mb",
    "witness",
]
