"""loomd in process: the Broker with no socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from multiprocessing.connection import Connection

from bench.harness import send_result, wait_go
from bench.workload import PubSpec, payload


def inproc(conn: Connection, spec: PubSpec) -> None:
    import uvloop

    uvloop.run(_inproc(conn, spec))


async def _inproc(conn: Connection, spec: PubSpec) -> None:
    from loomd.bus.broker import Broker
    from loomd.bus.envelope import Event
    from loomd.bus.settings import BusSettings

    broker = Broker(BusSettings(realtime_queue=4096))
    sub = broker.subscribe("bench.#", "realtime")
    last = 0.0
    received = 0

    async def consume() -> None:
        nonlocal received, last
        async for _ in sub:
            received += 1
            last = time.perf_counter()

    task = asyncio.create_task(consume())
    conn.send(("ready", {}))
    wait_go(conn)
    cpu0 = time.process_time()
    body, create, publish = payload(spec.size), Event.create, broker.publish
    t0 = time.perf_counter()
    end = t0 + spec.duration_s
    sent = 0
    while time.perf_counter() < end:
        for _ in range(256):
            publish(create(spec.topic, body, sender="bench", qos="realtime"))
        sent += 256
        await asyncio.sleep(0)  # the consumer task drains what was published
    await asyncio.sleep(0)  # one more turn: the consumer drains the last burst
    dropped = sum(broker.drops.values())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    elapsed = last - t0
    eps = received / elapsed if elapsed > 0 else 0.0
    send_result(
        conn,
        cpu0,
        sent=sent,
        received=received,
        dropped=dropped,
        eps=eps,
        unaccounted=sent - received - dropped,
    )
