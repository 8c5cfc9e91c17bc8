"""A component's task must end when it is cancelled, even when what it waits for completes
at the same moment. On Python 3.11 `asyncio.wait_for` swallows such a cancel (CPython
gh-86296); the daemon hung in shutdown on it (the assist's refresh loop, poked by the
catalogue changes of the stop itself). `asyncio.timeout()` does not."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def _poked_loop(poke: asyncio.Event, rounds: list[int]) -> None:
    while True:  # the shape of a refresh loop: wait for a poke or a deadline, then work
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await poke.wait()
        poke.clear()
        rounds.append(1)


def test_a_cancel_that_meets_a_poke_ends_the_loop() -> None:
    async def scenario() -> None:
        poke, rounds = asyncio.Event(), []
        task = asyncio.create_task(_poked_loop(poke, rounds))
        await asyncio.sleep(0)  # the loop waits on the event now
        poke.set()  # the event and the cancel land in the same turn of the loop
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "the cancel was swallowed: the loop went on waiting"
        assert task.cancelled()

    asyncio.run(scenario())


def test_no_wait_for_in_the_daemon() -> None:
    """`asyncio.timeout()` everywhere a deadline is awaited (see Component.spawn)."""
    users = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "loomd").rglob("*.py")
        if re.search(r"\bwait_for\([^)]", p.read_text())  # a call, not its name in a note
    ]
    assert users == []
