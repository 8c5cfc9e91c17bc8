"""loomd over its socket: SDK publisher and subscriber processes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.harness import BenchError, pub_result
from bench.workload import STAMP, SUB_WINDOW, PubSpec, Schedule, Stopper, SubSpec, Tally, payload


def loomd_pub(conn: Connection, spec: PubSpec) -> None:
    import uvloop

    uvloop.run(_loomd_pub(conn, spec))


async def _wait_go_async(conn: Connection, timeout: float = 60.0) -> None:
    """`wait_go` that keeps the event loop (and the SDK client) running meanwhile."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        async with asyncio.timeout(timeout):
            await readable.wait()
    except TimeoutError:
        raise BenchError(f"no word from the bench within {timeout:.0f} s") from None
    finally:
        loop.remove_reader(conn.fileno())
    with contextlib.suppress(EOFError):
        conn.recv()


async def _loomd_pub(conn: Connection, spec: PubSpec) -> None:
    import loomd.sdk

    async with loomd.sdk.connect(spec.endpoint, name="bench-pub") as bus:
        conn.send(("ready", {}))
        await _wait_go_async(conn)
        cpu0 = time.process_time()
        publish, topic, qos = bus.publish, spec.topic, spec.qos
        t0 = time.perf_counter()
        sent = 0
        result: dict[str, Any] = {}
        if spec.qos == "reliable":
            end = t0 + spec.duration_s
            while time.perf_counter() < end:
                for _ in range(256):
                    await publish(topic, payload(spec.size, sent, True), qos=qos, wait=False)
                    sent += 1
            result["published_s"] = time.perf_counter() - t0
            try:
                await bus.flush(timeout=60)
                result["acked"] = sent
            except Exception as exc:  # an ack error: nothing can be claimed as acknowledged
                result["acked"] = 0
                result["ack_error"] = f"{type(exc).__name__}: {exc}"
        elif spec.rate:
            sched = Schedule(spec.rate, spec.duration_s)
            while not sched.finished:
                for _ in range(sched.due()):
                    await publish(topic, payload(spec.size), qos=qos)
                    sched.sent += 1
                await asyncio.sleep(sched.wait_s())
            sent = sched.sent
        else:
            msg = payload(spec.size)
            end = t0 + spec.duration_s
            while time.perf_counter() < end:
                for _ in range(256):
                    await publish(topic, msg, qos=qos)
                sent += 256
                await asyncio.sleep(0)  # let the client's pump and heartbeat run
        elapsed = time.perf_counter() - t0
        local_drops = bus.dropped
        result.update(sent=sent, dropped_local=local_drops, elapsed_s=elapsed)
        result.setdefault("expect", result.get("acked", sent - local_drops))
        conn.send(pub_result(cpu0, **result))
        await _wait_go_async(conn, timeout=300)  # stay connected: see send_result


def loomd_sub(conn: Connection, spec: SubSpec) -> None:
    import uvloop

    uvloop.run(_loomd_sub(conn, spec))


def _daemon_drops(status: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in status["status"].get("drops", {}).items()}


async def _loomd_sub(conn: Connection, spec: SubSpec) -> None:
    import loomd.sdk

    async with loomd.sdk.connect(spec.endpoint, name="bench-sub") as bus:
        drops_before = _daemon_drops(await bus.status())
        sub = bus.subscribe(
            spec.pattern, qos=spec.qos, window=SUB_WINDOW, max_age_ms=spec.max_age_ms
        )
        await sub.ready()
        tally, stop = Tally(spec), Stopper(conn, spec)

        async def consume() -> None:
            arrive, ages = tally.arrive, tally.ages
            if not (spec.latency or spec.track):
                async for ev in sub:
                    arrive()
                    if not tally.n & 63:  # 1 in 64: how stale events are under load
                        now = time.time_ns()
                        ages.append(now - ev.ts)
                return
            async for ev in sub:
                arrive()
                if spec.latency:
                    now = time.time_ns()
                    tally.latency(ev.ts, now)
                if spec.track:
                    tally.index(STAMP.unpack_from(ev.body_bytes())[0])

        conn.send(("ready", {}))
        task = asyncio.create_task(consume())
        while not task.done() and not stop.should_stop(tally):  # noqa: ASYNC110 - idle detection polls
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        status = await bus.status()
        drops_after = _daemon_drops(status)
        result = tally.result(stop)
        result["dropped_daemon"] = {
            k: v - drops_before.get(k, 0)
            for k, v in drops_after.items()
            if v - drops_before.get(k, 0)
        }
        result["dropped_local"] = sub.dropped
        result["too_old_local"] = getattr(sub, "too_old", 0)  # an SDK without it: 0
        result["daemon_latency_ms"] = status["status"].get("latency_ms")
        await sub.close()
        conn.send(("result", result))
