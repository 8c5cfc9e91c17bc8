"""Micro-measurement behind docs/design/state.md (not a test; run by hand).

    .venv/bin/python bench/state.py [DIR]

Prints commits/s and ops/s for: one txn per put (each put awaited before the next),
group commit (many puts in flight), and sustained journal appends with a bounded
number in flight, on asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

from loomd.state import State

VALUE = {"temp": 21.5, "unit": "C", "raw": b"\x00" * 32}
HEADER = b"\xa4av\x01dtypeksensor.tempbidP" + b"\x01" * 16 + b"bts\x1b" + b"\x00" * 8
BODY = b"\xa2dtemp\xfb@5\x80\x00\x00\x00\x00\x00dunitaC"
# The journal runs: (appends, commit window ms, appends in flight).
JOURNAL_RUNS = (
    (200_000, 2.0, 4096),
    (200_000, 0.0, 4096),
    (50_000, 2.0, 64),
    (50_000, 0.0, 64),
    (100_000, 2.0, 256),
)


async def one_txn_per_put(path: Path, n: int) -> dict[str, float]:
    async with State(path, commit_window_ms=0) as st:
        kv = st.kv("bench")
        t0 = time.perf_counter()
        for i in range(n):
            await kv.put(f"k{i}", VALUE)
        dt = time.perf_counter() - t0
        s = st.stats()
    return {"puts/s": n / dt, "commits/s": s["commits"] / dt, "puts/commit": n / s["commits"]}


async def group_commit(path: Path, n: int, window_ms: float, in_flight: int) -> dict[str, float]:
    async with State(path, commit_window_ms=window_ms) as st:
        kv = st.kv("bench")
        pending: deque[asyncio.Future[None]] = deque()
        t0 = time.perf_counter()
        for i in range(n):
            pending.append(kv.put_nowait(f"k{i}", VALUE))
            if len(pending) >= in_flight:
                await pending.popleft()
        await asyncio.gather(*pending)
        dt = time.perf_counter() - t0
        s = st.stats()
    return {"puts/s": n / dt, "commits/s": s["commits"] / dt, "puts/commit": n / s["commits"]}


async def ticker(lags: list[float]) -> None:
    """How late a 1 ms timer fires: the loop's responsiveness while the writer works."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t) * 1e3 - 1.0)


async def journal(path: Path, n: int, window_ms: float, in_flight: int) -> dict[str, float]:
    async with State(path, commit_window_ms=window_ms) as st:
        j = st.journal
        pending: deque[asyncio.Future[int]] = deque()
        lat: list[float] = []
        lags: list[float] = []
        tick = asyncio.create_task(ticker(lags))
        t0 = time.perf_counter()
        for i in range(n):
            pending.append(j.append(b"sensor.kitchen.temp", HEADER, BODY)[1])
            if len(pending) >= in_flight:
                await pending.popleft()
            elif i % 256 == 0:
                await asyncio.sleep(0)  # a publisher yields now and then, as bus code does
        await asyncio.gather(*pending)
        dt = time.perf_counter() - t0
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
        # one ack latency probe after the run: a single append on an idle writer
        for _ in range(20):
            t1 = time.perf_counter()
            await j.append(b"probe", HEADER, BODY)[1]
            lat.append((time.perf_counter() - t1) * 1e3)
        s = st.stats()
    lat.sort()
    lags.sort()
    return {
        "timer lag ms (p99)": lags[int(len(lags) * 0.99)] if lags else 0.0,
        "appends/s": n / dt,
        "commits/s": s["commits"] / dt,
        "appends/commit": n / s["commits"],
        "idle ack ms (p50)": lat[len(lat) // 2],
    }


def run(name: str, loop: str, fn: Callable[[], Coroutine[Any, Any, dict[str, float]]]) -> None:
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None)
    with runner:
        result = runner.run(fn())
    cells = ", ".join(f"{k} {v:,.1f}" for k, v in result.items())
    print(f"{name:<38} {loop:<8} {cells}")


def main() -> None:
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="loomd-bench-"))
    runs = iter(range(1000))

    def fresh() -> Path:
        return base / f"run{next(runs)}"

    for loop in ("asyncio", "uvloop"):
        run("kv: one txn per put (awaited)", loop, lambda: one_txn_per_put(fresh(), 2000))
        for window, flight in ((2.0, 1024), (0.0, 1024)):
            name = f"kv: group commit, {window:g} ms, {flight} in flight"
            run(name, loop, functools.partial(group_commit, fresh(), 50_000, window, flight))
        for puts, window, flight in JOURNAL_RUNS:
            name = f"journal: {window:g} ms window, {flight} in flight"
            run(name, loop, functools.partial(journal, fresh(), puts, window, flight))


if __name__ == "__main__":
    main()
