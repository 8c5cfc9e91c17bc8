"""The in-process broker on a real asyncio loop: fan-out, QoS classes, credits, ttl,
unsubscribe, error events, and durable replay against a real State journal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from loomd.bus.broker import Broker
from loomd.bus.envelope import Event
from loomd.bus.settings import BusSettings
from loomd.bus.subscriber import Subscriber
from loomd.errors import LoomdError
from loomd.state import State

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Run `fn()` on a fresh loop under a deadline."""

    async def guarded() -> T:
        async with asyncio.timeout(timeout):
            return await fn()

    return asyncio.run(guarded())


async def collect(sub: Subscriber, n: int, within: float = 2.0) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            out.append(await sub.get())
    return out


def payloads(events: list[Event]) -> list[Any]:
    return [e.payload for e in events]


class ReadySink:
    """A socket-session stand-in: `wake` sets an event, the test `take`s (seq, event)."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.wakes = 0

    def wake(self, sub: Subscriber) -> None:
        self.wakes += 1
        self.ready.set()

    async def take(self, sub: Subscriber, n: int, within: float = 5.0) -> list[tuple[int, Event]]:
        out: list[tuple[int, Event]] = []
        async with asyncio.timeout(within):
            while len(out) < n:
                got = sub.take(n - len(out))
                if got:
                    out.extend(got)
                    continue
                self.ready.clear()
                if not sub.pending():
                    await self.ready.wait()
        return out


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- fan-out ------------------------------------------------------------------------------------


def test_fan_out_to_matching_patterns() -> None:
    async def main() -> None:
        b = Broker(BusSettings())
        pats = ["sensor.*.temp", "sensor.#", "#", "sensor.kitchen.temp", "other.#", "*"]
        subs = {p: b.subscribe(p, "reliable") for p in pats}
        topics = ["sensor.kitchen.temp", "sensor.hall.hum", "other.x", "sensor", "sensor.hall.temp"]
        for i, t in enumerate(topics):
            b.publish(Event.create(t, i))
        want = {
            "sensor.*.temp": [0, 4],
            "sensor.#": [0, 1, 3, 4],
            "#": [0, 1, 2, 3, 4],
            "sensor.kitchen.temp": [0],
            "other.#": [2],
            "*": [3],
        }
        for p, sub in subs.items():
            assert sub.pending() == len(want[p]), p
            got = await collect(sub, len(want[p]))
            assert payloads(got) == want[p], p
            assert sub.pending() == 0
        assert b.events_in == 5
        assert b.events_out == sum(len(v) for v in want.values())
        assert b.topics["sensor.kitchen.temp"].events_in == 1
        assert b.topics["sensor.kitchen.temp"].events_out == 4
        assert b.drops == {}

    run(main)


def test_in_process_subscriber_wakes_on_publish() -> None:
    async def main() -> None:
        b = Broker(BusSettings())
        sub = b.subscribe("a.#", "realtime")
        got: list[Any] = []

        async def consume() -> None:
            async for ev in sub:
                got.append(ev.payload)
                if len(got) == 3:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)  # let the consumer park on its waiter
        for i in range(3):
            b.publish(Event.create("a.b", i))
        async with asyncio.timeout(2):
            await task
        assert got == [0, 1, 2]

    run(main)


# -- realtime -----------------------------------------------------------------------------------


def test_realtime_flood_into_stalled_subscribers_is_bounded_and_counted() -> None:
    async def main() -> None:
        b = Broker(BusSettings(realtime_queue=8))
        wide = b.subscribe("s.#", "realtime")
        narrow = b.subscribe("s.x", "realtime")
        for i in range(100):
            b.publish(Event.create("s.x", i, qos="realtime"))
            assert wide.depth() <= 8 and narrow.depth() <= 8
        for i in range(10):
            b.publish(Event.create("s.y", 100 + i, qos="realtime"))
        # The publisher never waits, even with a reliable-style ack.
        async with asyncio.timeout(1):
            await b.publish_wait(Event.create("s.x", 999, qos="realtime"))
        assert wide.depth() == narrow.depth() == 8
        assert wide.stats.dropped == {"queue_full": 111 - 8}
        assert narrow.stats.dropped == {"queue_full": 101 - 8}
        assert b.drops["queue_full"] == (111 - 8) + (101 - 8)
        assert wide.info()["dropped"] == {"queue_full": 103}
        # drop_oldest keeps the newest, in order.
        assert payloads(await collect(wide, 8)) == [103, 104, 105, 106, 107, 108, 109, 999]
        assert payloads(await collect(narrow, 8)) == [*range(93, 100), 999]

    run(main)


def assert_topic_drops(b: Broker, dropped: dict[str, int]) -> None:
    """The broker's queue_full drops: by topic as `dropped` says, and in all their sum."""
    assert {t: b.topics[t].dropped for t in dropped} == dropped
    assert b.drops["queue_full"] == sum(dropped.values())


def test_realtime_drops_are_counted_per_topic() -> None:
    # DESIGN: "Every drop is counted per topic and subscriber".
    async def main() -> None:
        b = Broker(BusSettings(realtime_queue=4))
        b.subscribe("s.#", "realtime")
        for i in range(10):
            b.publish(Event.create("s.x", i))
        for i in range(3):
            b.publish(Event.create("s.y", i))
        # The 4 kept are s.x 9, s.y 0..2: drops are 9 on s.x (0..8), none on s.y.
        assert_topic_drops(b, {"s.x": 9, "s.y": 0})

    run(main)


def test_keep_latest_eviction_is_counted_against_the_evicted_topic() -> None:
    async def main() -> None:
        b = Broker(BusSettings(realtime_queue=2, realtime_policy="keep_latest"))
        sub = b.subscribe("s.*", "realtime")
        b.publish(Event.create("s.a", 1))
        b.publish(Event.create("s.a", 2))  # replaces s.a 1: an s.a event lost
        b.publish(Event.create("s.b", 1))
        b.publish(Event.create("s.c", 1))  # full: the stalest topic, s.a, is evicted
        assert {e.topic: e.payload for e in await collect(sub, 2)} == {"s.b": 1, "s.c": 1}
        assert_topic_drops(b, {"s.a": 2, "s.b": 0, "s.c": 0})

    run(main)


def test_realtime_keep_latest() -> None:
    async def main() -> None:
        b = Broker(BusSettings(realtime_queue=4, realtime_policy="keep_latest"))
        sub = b.subscribe("s.*", "realtime")
        for i in range(10):
            for t in ("a", "b", "c"):
                b.publish(Event.create(f"s.{t}", i))
        assert sub.depth() == 3
        got = await collect(sub, 3)
        assert {e.topic: e.payload for e in got} == {"s.a": 9, "s.b": 9, "s.c": 9}
        assert sub.stats.dropped == {"queue_full": 27}

    run(main)


@pytest.mark.parametrize(
    ("qos", "limits"),
    [
        ("reliable", BusSettings()),
        ("realtime", BusSettings()),
        ("realtime", BusSettings(realtime_policy="keep_latest")),
        ("batched", BusSettings(batch_max=2, batch_interval_ms=60_000)),
    ],
    ids=["reliable", "drop_oldest", "keep_latest", "batched"],
)
def test_unpop_puts_events_back_in_order(qos: str, limits: BusSettings) -> None:
    # A socket session that cannot send puts events back; they must come out again.
    async def main() -> None:
        b = Broker(limits)
        sink = ReadySink()
        sub = b.subscribe("u.*", qos, sink=sink)
        b.publish(Event.create("u.a", 1))
        b.publish(Event.create("u.b", 2))
        first = sub.take(10)
        assert [e.payload for _, e in first] == [1, 2]
        sub.unpop(first)
        assert sub.pending() == 2
        again = await sink.take(sub, 2, within=1)
        assert [e.payload for _, e in again] == [1, 2]
        assert sub.stats.delivered == 2
        await sub.close()

    run(main)


# -- batched ------------------------------------------------------------------------------------


def test_batched_delivery_by_size() -> None:
    async def main() -> None:
        b = Broker(BusSettings(batch_max=5, batch_interval_ms=60_000, batch_budget=1000))
        sub = b.subscribe("m.#", "batched")
        for i in range(4):
            b.publish(Event.create("m.cpu", i))
        assert sub.pending() == 0  # held until the batch is full
        b.publish(Event.create("m.cpu", 4))
        assert sub.pending() == 5
        for i in range(5, 12):
            b.publish(Event.create("m.cpu", i))
        assert sub.pending() == 10
        assert sub.depth() == 12
        assert payloads(await collect(sub, 10)) == list(range(10))
        assert sub.pending() == 0
        await sub.close()

    run(main)


def test_batched_delivery_by_timer() -> None:
    async def main() -> None:
        b = Broker(BusSettings(batch_max=100, batch_interval_ms=20))
        sub = b.subscribe("m.#", "batched")
        for i in range(3):
            b.publish(Event.create("m.mem", i))
        assert sub.pending() == 0
        got = await collect(sub, 3, within=2.0)  # the timer releases them
        assert payloads(got) == [0, 1, 2]
        # A second batch gets its own timer.
        b.publish(Event.create("m.mem", 3))
        assert sub.pending() == 0
        assert payloads(await collect(sub, 1, within=2.0)) == [3]
        assert sub.stats.dropped == {}

    run(main)


def test_batched_flood_into_stalled_subscriber_is_bounded_and_counted() -> None:
    # DESIGN: "memory stays bounded under any publisher rate"; every drop is counted.
    async def main() -> None:
        lim = BusSettings(batch_max=10, batch_interval_ms=60_000, batch_budget=100)
        b = Broker(lim)
        sub = b.subscribe("m.#", "batched")
        n = 10_000
        for i in range(n):
            b.publish(Event.create("m.cpu", i))
            assert sub.depth() <= lim.batch_budget + lim.batch_max
        kept = sub.depth()
        assert 0 < kept <= lim.batch_budget + lim.batch_max
        assert sum(sub.stats.dropped.values()) == n - kept
        assert sum(b.drops.values()) == n - kept
        assert b.topics["m.cpu"].dropped == n - kept
        got = payloads(await collect(sub, sub.pending()))
        assert got == sorted(got)  # what is kept stays in arrival order
        await sub.close()

    run(main)


def test_batched_over_budget_in_one_interval_is_sampled() -> None:
    # spine.md: past `batch_budget` in one interval events are thinned and counted as
    # `sampled` -- even when the reader keeps up with every batch.
    async def main() -> None:
        clock = FakeClock()  # the interval ends only when the test says so
        lim = BusSettings(batch_max=10, batch_interval_ms=1000, batch_budget=100)
        b = Broker(lim, clock=clock)
        sink = ReadySink()
        sub = b.subscribe("m.#", "batched", sink=sink)
        n = 1000
        delivered: list[Any] = []
        for i in range(n):
            b.publish(Event.create("m.cpu", i))
            delivered.extend(e.payload for _, e in sub.take(1000))
        held = sub.depth()  # an incomplete last batch, released by time
        assert held < lim.batch_max
        sampled = sub.stats.dropped.get("sampled", 0)
        assert len(delivered) + held + sampled == n
        assert lim.batch_budget < len(delivered) < n / 2
        assert delivered[: lim.batch_budget] == list(range(lim.batch_budget))
        assert delivered == sorted(delivered)
        assert b.topics["m.cpu"].dropped == sampled
        clock.now += 1.0  # a new interval: a fresh budget
        for i in range(50):
            b.publish(Event.create("m.cpu", n + i))
        got = [e.payload for _, e in sub.take(1000)]
        assert len(got) + sub.depth() == held + 50  # nothing sampled: a partial batch waits
        assert got[held:] == list(range(n, n + len(got) - held))
        assert sorted(delivered + got[:held]) == delivered + got[:held]
        assert sub.stats.dropped.get("sampled", 0) == sampled
        await sub.close()

    run(main)


# -- reliable -----------------------------------------------------------------------------------


def test_reliable_stalled_subscriber_blocks_publish_wait_until_consumed() -> None:
    async def main() -> None:
        b = Broker(BusSettings(reliable_queue=4, max_hold_ms=5000))  # held the whole test
        sub = b.subscribe("ctl.#", "reliable")
        for i in range(3):
            async with asyncio.timeout(1):
                await b.publish_wait(Event.create("ctl.cmd", i))
        assert b.parked() == 0
        task = asyncio.create_task(b.publish_wait(Event.create("ctl.cmd", 3)))
        done, _ = await asyncio.wait({task}, timeout=0.2)  # deadline, not a sleep
        assert not done, "publish_wait returned while the reliable queue was full"
        assert b.parked() == 1
        assert sub.depth() == 4
        first = await sub.get(timeout=1)
        assert first.payload == 0
        async with asyncio.timeout(1):
            await task  # credit released once the queue is below its limit
        assert b.parked() == 0
        assert payloads(await collect(sub, 3)) == [1, 2, 3]
        assert b.drops == {}
        assert sub.stats.dropped == {}

    run(main)


def test_a_stalled_reliable_subscriber_holds_publishers_at_most_max_hold_ms() -> None:
    """Its queue is full and it consumes nothing: the publisher's ack waits for it only
    max_hold_ms; the subscriber keeps everything (its backlog is its own)."""

    async def main() -> None:
        b = Broker(BusSettings(reliable_queue=4, max_hold_ms=100))
        sub = b.subscribe("ctl.#", "reliable")
        t0 = time.monotonic()  # it subscribed now: as good as progress
        for i in range(3):
            await b.publish_wait(Event.create("ctl.cmd", i))
        task = asyncio.create_task(b.publish_wait(Event.create("ctl.cmd", 3)))
        done, _ = await asyncio.wait({task}, timeout=0.03)
        assert not done  # held while the subscriber may still be consuming
        async with asyncio.timeout(1):
            await task
        assert 0.03 <= time.monotonic() - t0 < 0.3
        async with asyncio.timeout(0.05):  # no longer held at all
            await b.publish_wait(Event.create("ctl.cmd", 4))
            await b.publish_wait(Event.create("ctl.cmd", 5))
        assert payloads(await collect(sub, 6)) == [0, 1, 2, 3, 4, 5]
        assert b.drops == {}

    run(main)


def test_reliable_sequential_publisher_is_paced_by_slow_consumer() -> None:
    async def main() -> None:
        limit = 5
        b = Broker(BusSettings(reliable_queue=limit))
        sub = b.subscribe("ctl.#", "reliable")
        n = 300
        got: list[Any] = []
        max_depth = 0

        async def consume() -> None:
            async for ev in sub:
                got.append(ev.payload)
                if len(got) == n:
                    return

        async def produce() -> None:
            nonlocal max_depth
            for i in range(n):
                await b.publish_wait(Event.create("ctl.x", i))
                max_depth = max(max_depth, sub.depth())

        async with asyncio.timeout(5):
            await asyncio.gather(produce(), consume())
        assert got == list(range(n))
        assert max_depth <= limit
        assert b.drops == {}

    run(main)


def test_realtime_subscriber_does_not_slow_reliable_publisher() -> None:
    async def main() -> None:
        b = Broker(BusSettings(realtime_queue=2, reliable_queue=2))
        b.subscribe("x.#", "realtime")  # stalled, but realtime never withholds credit
        async with asyncio.timeout(1):
            for i in range(50):
                await b.publish_wait(Event.create("x.y", i))
        assert b.drops["queue_full"] == 48

    run(main)


# -- ttl ----------------------------------------------------------------------------------------


def test_ttl_zero_is_dropped_and_counted() -> None:
    async def main() -> None:
        b = Broker(BusSettings())
        sub = b.subscribe("#", "reliable")
        b.publish(Event.create("t.x", 1, ttl=0))
        with pytest.raises(LoomdError, match="ttl"):
            async with asyncio.timeout(1):
                await b.publish_wait(Event.create("t.x", 2, ttl=0))
        acks: list[str | None] = []
        b.publish(Event.create("t.x", 3, ttl=0), acks.append)
        assert acks == ["ttl_expired"]
        assert sub.pending() == 0
        assert b.drops == {"ttl": 3}
        assert b.topics["t.x"].dropped == 3
        assert b.topics["t.x"].events_in == 3
        b.publish(Event.create("t.x", 4, ttl=1))
        assert payloads(await collect(sub, 1)) == [4]

    run(main)


# -- unsubscribe --------------------------------------------------------------------------------


def test_unsubscribe_stops_delivery_and_ends_iteration() -> None:
    async def main() -> None:
        b = Broker(BusSettings())
        sub = b.subscribe("u.#", "reliable")
        other = b.subscribe("u.#", "reliable")
        got: list[Any] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for ev in sub:
                got.append(ev.payload)
                first.set()

        task = asyncio.create_task(consume())
        b.publish(Event.create("u.a", 1))
        async with asyncio.timeout(1):
            await first.wait()
        await sub.close()
        async with asyncio.timeout(1):
            await task  # the parked consumer is released and the iteration ends
        b.publish(Event.create("u.a", 2))
        assert got == [1]
        assert sub.depth() == 0
        assert sub not in list(b.subscriptions())
        assert payloads(await collect(other, 2)) == [1, 2]
        b.unsubscribe(sub)  # idempotent

    run(main)


def test_unsubscribe_releases_parked_acks() -> None:
    async def main() -> None:
        b = Broker(BusSettings(reliable_queue=1, max_hold_ms=5000))
        sub = b.subscribe("u.#", "reliable")
        task = asyncio.create_task(b.publish_wait(Event.create("u.a", 1)))
        done, _ = await asyncio.wait({task}, timeout=0.1)
        assert not done
        assert b.parked() == 1
        b.unsubscribe(sub)
        async with asyncio.timeout(1):
            await task
        assert b.parked() == 0
        async with asyncio.timeout(1):
            await b.publish_wait(Event.create("u.a", 2))  # nobody left to wait for

    run(main)


# -- error events -------------------------------------------------------------------------------


def test_error_publishes_loomd_error_and_is_rate_limited() -> None:
    async def main() -> None:
        clock = FakeClock()
        b = Broker(BusSettings(), clock=clock)
        errs = b.subscribe("loomd.error", "reliable")
        for i in range(25):
            b.error("protocol", f"bad frame {i}", client="c1")
        assert errs.pending() == 20
        assert b.drops["error_rate"] == 5
        first = await errs.get(timeout=1)
        assert first.topic == "loomd.error"
        assert first.type == "loomd.error"
        assert first.sender == "loomd"
        assert first.payload == {"code": "protocol", "message": "bad frame 0", "client": "c1"}
        await collect(errs, 19)
        clock.now += 0.5  # half the window refills half the budget
        for i in range(15):
            b.error("protocol", f"later {i}")
        assert errs.pending() == 10
        assert b.drops["error_rate"] == 10
        clock.now += 10.0  # the bucket caps at its size
        for i in range(25):
            b.error("protocol", f"much later {i}")
        assert errs.pending() == 30
        assert b.drops["error_rate"] == 15

    run(main)


# -- durable replay -----------------------------------------------------------------------------


N_DURABLE = 300  # with as much noise: 600 journal entries, more than two replay pages


@pytest.mark.parametrize(
    ("k", "reliable_queue"),
    [(0, 4096), (7, 4096), (150, 4096), (N_DURABLE, 4096), (0, 4), (150, 4), (0, 1), (150, 1)],
)
def test_durable_replay_then_live_without_gap_or_duplicate(
    tmp_path: Path, k: int, reliable_queue: int
) -> None:
    n, live = N_DURABLE, 10

    async def main() -> None:
        async with State(tmp_path / "state", commit_window_ms=0.5) as state:
            limits = BusSettings(durable=("control.#",), reliable_queue=reliable_queue)
            b = Broker(limits, state.journal)
            acks: list[Awaitable[None]] = []
            for i in range(n):
                acks.append(b.publish_wait(Event.create("control.cmd", i)))
                # Noise on another durable topic the subscription does not match.
                acks.append(b.publish_wait(Event.create("control.other", -1)))
            async with asyncio.timeout(5):
                await asyncio.gather(*acks)  # appended in order, committed in groups
            assert state.journal.head == 2 * n
            seqs = [e.seq for e in state.journal.read(0, 4 * n) if e.topic == b"control.cmd"]
            assert len(seqs) == n

            sink = ReadySink()
            after = seqs[k - 1] if k else 0
            sub = b.subscribe("control.cmd", "reliable", sink=sink, after_seq=after)
            # Live events race the replay: published before its first step runs.
            pending = [
                asyncio.create_task(b.publish_wait(Event.create("control.cmd", n + i)))
                for i in range(live)
            ]
            got = await sink.take(sub, n - k + live, within=2.0)  # healthy: ~0.1 s
            assert [e.payload for _, e in got] == list(range(k, n + live))
            got_seqs = [s for s, _ in got]
            assert got_seqs[: n - k] == seqs[k:]
            assert got_seqs == sorted(set(got_seqs))  # journal seqs, increasing
            async with asyncio.timeout(5):
                await asyncio.gather(*pending)
            # Nothing more (no duplicate): the next event is a fresh sentinel.
            sentinel = asyncio.create_task(b.publish_wait(Event.create("control.cmd", "end")))
            tail = await sink.take(sub, 1)
            assert tail[0][1].payload == "end"
            assert sub.pending() == 0
            async with asyncio.timeout(5):
                await sentinel
            assert b.drops == {}

    run(main, timeout=15)


class GatedJournal:
    """The real journal, but the broker hears of a commit only when the test opens the gate.

    It widens a real window: an entry is readable (and counted in `head`) as soon as its
    txn commits, while its future settles later on the loop."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.committed: list[asyncio.Future[int]] = []
        self._held: list[tuple[Callable[[Any], None], asyncio.Future[int]]] = []
        self.open = True

    def append_then(
        self, topic: bytes, header: bytes, body: bytes, then: Callable[[Any], None]
    ) -> int:
        if self.open:
            return int(self.inner.append_then(topic, header, body, then))
        landed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.committed.append(landed)
        self._held.append((then, landed))
        return int(self.inner.append_then(topic, header, body, landed.set_result))

    def release(self) -> None:
        self.open = True
        for then, landed in self._held:
            then(landed.result())
        self._held.clear()

    def read(self, after_seq: int, limit: int = 256) -> list[Any]:
        return self.inner.read(after_seq, limit)

    @property
    def head(self) -> int:
        return int(self.inner.head)


def test_durable_replay_overlapping_commit_is_not_delivered_twice(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path / "state", commit_window_ms=0.5) as state:
            journal = GatedJournal(state.journal)
            b = Broker(BusSettings(durable=("control.#",)), journal)
            for i in range(5):
                await b.publish_wait(Event.create("control.cmd", i))
            journal.open = False
            loop = asyncio.get_running_loop()
            acks: list[asyncio.Future[str | None]] = []
            for i in range(5, 8):
                ack: asyncio.Future[str | None] = loop.create_future()
                acks.append(ack)
                b.publish(Event.create("control.cmd", i), ack.set_result)
            assert len(journal.committed) == 3
            async with asyncio.timeout(5):
                await asyncio.gather(*journal.committed)  # durable, acks not yet settled
            assert state.journal.head == 8
            sink = ReadySink()
            sub = b.subscribe("control.cmd", "reliable", sink=sink, after_seq=2)
            got = await sink.take(sub, 6)  # replay reads 3..8, including the unsettled ones
            assert not any(a.done() for a in acks)
            journal.release()  # now the broker routes 6..8 live: already delivered
            async with asyncio.timeout(5):
                assert await asyncio.gather(*acks) == [None, None, None]
            async with asyncio.timeout(5):
                await b.publish_wait(Event.create("control.cmd", "end"))
            got += await sink.take(sub, 1)
            assert [e.payload for _, e in got] == [2, 3, 4, 5, 6, 7, "end"]
            assert [s for s, _ in got] == [3, 4, 5, 6, 7, 8, 9]

    run(main, timeout=15)


def test_durable_subscriber_without_after_seq_gets_only_live(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path / "state", commit_window_ms=0.5) as state:
            b = Broker(BusSettings(durable=("control.#",)), state.journal)
            for i in range(5):
                await b.publish_wait(Event.create("control.cmd", i))
            sub = b.subscribe("control.#", "reliable")
            await b.publish_wait(Event.create("control.cmd", 5))
            assert payloads(await collect(sub, 1)) == [5]
            assert sub.pending() == 0
            # Non-durable topics keep flowing through the same broker.
            other = b.subscribe("chat.#", "reliable")
            await b.publish_wait(Event.create("chat.msg", "hi"))
            assert payloads(await collect(other, 1)) == ["hi"]
            assert state.journal.head == 6

    run(main, timeout=15)


def test_realtime_max_age_drops_stale_events_as_too_old() -> None:
    """The voice pipeline wants fresh frames, not a backlog: events older than max_age_ms
    when they would be delivered are dropped and counted; fresh ones still arrive."""

    async def main() -> None:
        broker = Broker(BusSettings())
        sub = broker.subscribe("audio.#", "realtime", max_age_ms=30)
        for i in range(5):
            broker.publish(Event.create("audio.frame", i, qos="realtime"))
        old = Event.create("audio.frame", "stale", qos="realtime")
        old.header["ts"] -= 10**9  # a frame that spent a second somewhere
        broker.publish(old)
        await asyncio.sleep(0.06)  # the consumer was busy for longer than max_age
        broker.publish(Event.create("audio.frame", "fresh", qos="realtime"))
        assert (await sub.get(1)).payload == "fresh"
        assert sub.stats.dropped == {"too_old": 6}
        assert broker.drops["too_old"] == 6
        assert sub.bytes == 0 and sub.budget.used == 0
        with pytest.raises(LoomdError, match="realtime"):
            broker.subscribe("audio.#", "reliable", max_age_ms=30)

    run(main)


def test_stalled_reliable_subscriber_is_shed_and_parked_acks_released() -> None:
    """A reliable subscriber that takes nothing while publishers wait on it is evicted
    after slow_consumer_ms (non-durable events: it would lose them) and its sink told."""

    class Sink(ReadySink):
        def __init__(self) -> None:
            super().__init__()
            self.evictions: list[str] = []

        def evicted(self, sub: Subscriber, reason: str) -> None:
            self.evictions.append(reason)

    async def main() -> None:
        broker = Broker(BusSettings(reliable_queue=10, slow_consumer_ms=50))
        sink = Sink()
        sub = broker.subscribe("work.#", "reliable", sink=sink)
        acks: list[str | None] = []
        all_acked = asyncio.Event()

        def on_ack(err: str | None) -> None:
            acks.append(err)
            if len(acks) == 20:
                all_acked.set()

        for i in range(20):
            broker.publish(Event.create("work.x", i), on_ack)
        assert len(acks) < 20  # held back while the queue is over its limit
        async with asyncio.timeout(2):
            await all_acked.wait()
        assert acks == [None] * 20 and sink.evictions == ["slow_consumer"]
        assert sub.closed and sub.stats.dropped["evicted"] == 20
        assert broker.shed_counts == {"detached": 0, "evicted": 1}
        assert sub.budget.used == 0

    run(main)
