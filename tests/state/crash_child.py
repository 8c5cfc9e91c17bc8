"""Child process for test_crash: writes forever, prints each ack the moment it resolves.

Usage: python crash_child.py STATE_DIR RUN_ID
Lines: `J <seq> <i>` once journal entry i is durable, `K <key> <i>` once kv[key] = i is.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

from loomd.state import State

IN_FLIGHT = 256  # bounded, so the child never outruns the writer by much


def emit(line: str) -> None:
    # One write(2) per line, no buffering: what the parent read was acked before it.
    os.write(1, line.encode())


def ack(kind: str, name: str | None, i: int, fut: asyncio.Future[Any]) -> None:
    emit(f"{kind} {fut.result() if name is None else name} {i}\n")


async def main(path: Path, run: int) -> None:
    async with State(path, commit_window_ms=1.0) as st:
        journal, kv = st.journal, st.kv("crash")
        emit(f"READY {journal.head}\n")
        pending: deque[asyncio.Future[Any]] = deque()
        i = 0
        while True:
            _, fut = journal.append(b"crash.t", b"r%d" % run, b"%d" % i)
            fut.add_done_callback(partial(ack, "J", None, i))
            key = f"r{run}.k{i}"
            put = kv.put_nowait(key, i)
            put.add_done_callback(partial(ack, "K", key, i))
            pending.append(fut)
            pending.append(put)
            i += 1
            while len(pending) > IN_FLIGHT:
                await pending.popleft()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
