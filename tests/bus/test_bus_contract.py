"""One contract, two implementations of the `Bus` API: `LocalBus` (in process, over the
broker with a real LMDB journal) and `loomd.sdk.Client` (over a real daemon's socket).
Every part of loomd talks to the bus only through this API, so it can move out of process
unchanged; this test is what makes that true."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
import uvloop

from loomd.bus import wire
from loomd.bus.api import Bus, BusSubscription
from loomd.bus.broker import Broker
from loomd.bus.envelope import Event
from loomd.bus.local import LocalBus
from loomd.bus.settings import BusSettings
from loomd.errors import LoomdError, ProtocolError, RequestTimeout
from loomd.sdk import connect
from loomd.state import State
from tests.conftest import LoomdProcess


class Pair(Protocol):
    """Two handles on one bus (two parts), and a count of live subscriptions."""

    a: Bus
    b: Bus

    async def subscriptions(self) -> int: ...


class LocalPair:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.a, self.b = LocalBus(broker, "part-a"), LocalBus(broker, "part-b")

    async def subscriptions(self) -> int:
        return len(list(self.broker.subscriptions()))


class SdkPair:
    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    async def subscriptions(self) -> int:
        """The pair's own: the daemon's components open and close reply subscriptions of
        their own (a lease renewal, a catalogue read) whenever they like."""
        st = (await self.a.status())["status"]["components"]["bus"]["status"]
        return sum(1 for s in st["subscriptions"] if s["owner"].startswith(("part-a#", "part-b#")))


@contextlib.asynccontextmanager
async def local_pair(root: Path) -> AsyncIterator[Pair]:
    async with State(root / "db") as state:
        yield LocalPair(Broker(BusSettings(), state.journal))


@contextlib.asynccontextmanager
async def sdk_pair(d: LoomdProcess) -> AsyncIterator[Pair]:
    async with connect(d.endpoint, name="part-a") as a, connect(d.endpoint, name="part-b") as b:
        yield SdkPair(a, b)


@pytest.fixture(params=["local", "sdk"])
def pair(request: pytest.FixtureRequest, short_tmp: Path) -> Callable[[], Any]:
    if request.param == "local":
        return lambda: local_pair(short_tmp)
    d = request.getfixturevalue("daemon")
    return lambda: sdk_pair(d)


def run(make: Callable[[], Any], body: Callable[[Pair], Awaitable[None]]) -> None:
    async def main() -> None:
        async with make() as p, asyncio.timeout(30):
            await body(p)

    uvloop.run(main())


def test_both_implement_the_protocol(pair: Callable[[], Any]) -> None:
    async def body(p: Pair) -> None:
        assert isinstance(p.a, Bus) and isinstance(p.b, Bus)
        async with p.a.subscribe("x.y") as sub:
            assert isinstance(sub, BusSubscription)

    run(pair, body)


def test_publish_and_subscribe_each_class_in_order(pair: Callable[[], Any]) -> None:
    async def body(p: Pair) -> None:
        for qos in ("realtime", "batched", "reliable"):
            async with p.b.subscribe(f"c.{qos}.#", qos) as sub:
                await sub.ready()
                for i in range(20):
                    await p.a.publish(f"c.{qos}.n", {"i": i}, qos=qos)
                got = [await sub.get(5) for _ in range(20)]
            assert [e.payload for e in got] == [{"i": i} for i in range(20)], qos
            assert {e.sender for e in got} == {"part-a"}
            assert {e.topic for e in got} == {f"c.{qos}.n"}
        raw = bytes(range(256))
        async with p.b.subscribe("c.raw", "reliable") as sub:
            await sub.ready()
            await p.a.publish("c.raw", raw, type="blob")
            ev = await sub.get(5)
        assert (ev.payload, ev.type) == (raw, "blob")

    run(pair, body)


def test_iteration_ends_when_the_subscription_closes(pair: Callable[[], Any]) -> None:
    async def body(p: Pair) -> None:
        before = await p.subscriptions()
        sub = await p.b.subscribe("it.#", "reliable").ready()
        await p.a.publish("it.one", 1)
        seen = []
        async for ev in sub:
            seen.append(ev.payload)
            await sub.close()
        assert seen == [1]
        with pytest.raises(StopAsyncIteration):
            await sub.get(1)
        assert await p.subscriptions() == before

    run(pair, body)


def test_request_reply_and_nothing_left_behind(pair: Callable[[], Any]) -> None:
    async def body(p: Pair) -> None:
        async with p.b.subscribe("svc.double", "reliable") as inbox:
            await inbox.ready()

            async def serve() -> None:
                async for req in inbox:
                    await p.b.reply(req, {"n": req.payload["n"] * 2})

            server = asyncio.create_task(serve())
            # an SDK client keeps one reply subscription for its requests, opened by the
            # first: what is counted is what requests leave behind after that
            assert (await p.a.request("svc.double", {"n": 0}, timeout=5)).payload == {"n": 0}
            before = await p.subscriptions()
            replies = await asyncio.gather(
                *(p.a.request("svc.double", {"n": i}, timeout=5) for i in range(10))
            )
            assert [r.payload for r in replies] == [{"n": 2 * i} for i in range(10)]
            assert all(r.sender == "part-b" and r.correlation_id for r in replies)
            assert await p.subscriptions() == before  # no reply subscription per request

            with pytest.raises(RequestTimeout):
                await p.a.request("svc.nobody", 1, timeout=0.2)
            assert await p.subscriptions() == before
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server

    run(pair, body)


def test_reply_needs_a_request(pair: Callable[[], Any]) -> None:
    async def body(p: Pair) -> None:
        async with p.b.subscribe("plain.#", "reliable") as sub:
            await sub.ready()
            await p.a.publish("plain.event", 1)
            ev = await sub.get(5)
        with pytest.raises(LoomdError, match="has no reply_to"):
            await p.b.reply(ev, 2)

    run(pair, body)


def test_listeners_and_stats_see_every_part(pair: Callable[[], Any]) -> None:
    """Whether anyone listens on a topic, and the subscription stats, through the API
    alone: a part that wants them never reads the broker (it may be out of process)."""

    async def body(p: Pair) -> None:
        assert await p.a.listeners("ls.x") == 0
        before = await p.a.stats()
        async with p.b.subscribe("ls.*", "reliable") as sub, p.b.subscribe("ls.#", "realtime"):
            await sub.ready()
            assert await p.a.listeners("ls.x") == 2  # both patterns match
            assert await p.a.listeners("ls.x.y") == 1  # only `#` does
            assert await p.a.listeners("other") == 0
            for i in range(3):
                await p.a.publish("ls.x", i)
            assert [(await sub.get(5)).payload for _ in range(3)] == [0, 1, 2]
            stats = await p.a.stats()
            (mine,) = [s for s in stats.subscriptions if s.pattern == "ls.*"]
            assert "part-b" in mine.owner and mine.qos == "reliable"
            assert mine.delivered >= 3
            assert stats.events_in >= before.events_in + 3
        assert await p.a.listeners("ls.x") == 0
        assert not [s for s in (await p.a.stats()).subscriptions if s.pattern.startswith("ls.")]

    run(pair, body)


def received(ev: Event) -> Event:
    """`ev` as a peer link receives it: its frame, decoded as the daemon decodes one."""
    topic, header, body = wire.unpack_event(ev.to_wire())
    out = Event.from_frames(topic, header, body)
    out.header  # noqa: B018 - checked as on receipt
    return out


def test_forward_publishes_a_received_frame_with_its_meta_patched(pair: Callable[[], Any]) -> None:
    """A peer hop: the event of another board published again here as it came (topic,
    type, qos, body), with a fresh id, the given TTL and the hop's fields in its meta."""

    async def body(p: Pair) -> None:
        far = Event.create("fw.x", {"n": 1}, type="fw.kind", sender="far", ttl=9,
                           meta={"keep": "me"})  # fmt: skip
        far_rt = Event.create("fw.rt", b"\x00raw%b", sender="far", qos="realtime")
        async with p.b.subscribe("fw.#", "reliable") as sub:
            await sub.ready()
            for i in range(3):  # the same shape again: the header comes from its template
                hop = {"origin": "far-board", "peer_id": far.id, "via": "link", "i": i}
                out = await p.a.forward(received(far), ttl=8, meta=hop)
                assert out.id != far.id
                ev = await sub.get(5)
                assert ev.id == out.id and ev.payload == {"n": 1} and ev.type == "fw.kind"
                assert ev.meta == {"keep": "me", **hop}
                assert (ev.ttl, ev.sender, ev.qos) == (8, "part-a", "reliable")
            await p.a.forward(received(far_rt), ttl=3, meta={"via": "link"})
            ev = await sub.get(5)
            assert (ev.topic, ev.payload, ev.qos) == ("fw.rt", b"\x00raw%b", "realtime")
            assert ev.meta == {"via": "link"} and ev.ttl == 3
        with pytest.raises(ProtocolError, match="invalid ttl"):
            await p.a.forward(received(far), ttl=300, meta={})

    run(pair, body)


def test_a_subscription_takes_only_its_classes(pair: Callable[[], Any]) -> None:
    async def body(p: Pair) -> None:
        async with (
            p.b.subscribe("cls.#", "reliable", classes=["reliable"]) as rel,
            p.b.subscribe("cls.#", "realtime", classes=("realtime", "batched")) as rest,
            p.b.subscribe("cls.#", "reliable") as every,
        ):
            for s in (rel, rest, every):
                await s.ready()
            sent = [("realtime", 0), ("reliable", 1), ("batched", 2), ("reliable", 3)]
            for qos, i in sent:
                await p.a.publish(f"cls.{qos}", i, qos=qos)
            assert [(await every.get(5)).payload for _ in sent] == [0, 1, 2, 3]
            assert [(await rel.get(5)).payload for _ in range(2)] == [1, 3]
            assert sorted([(await rest.get(5)).payload for _ in range(2)]) == [0, 2]
            await p.a.publish("cls.reliable", "last")  # nothing else is queued before it
            assert (await rel.get(5)).payload == "last"
            with pytest.raises(TimeoutError):
                await rest.get(0.3)
        with pytest.raises(ProtocolError, match="invalid classes"):
            p.b.subscribe("cls.#", "reliable", classes=["sometimes"])

    run(pair, body)


def test_batch_takes_what_is_queued_in_order(pair: Callable[[], Any]) -> None:
    async def body(p: Pair) -> None:
        sub = await p.b.subscribe("bt.#", "reliable").ready()
        end = await p.b.subscribe("bt_end", "reliable").ready()
        for i in range(50):
            await p.a.publish("bt.x", i, wait=False)
        await p.a.publish("bt_end", "end")
        # the marker came after the 50, on the same connection: all 50 are queued by now,
        # so each batch is as full as `n` allows
        assert (await end.get(5)).payload == "end"
        sizes: list[int] = []
        got: list[int] = []
        while len(got) < 50:
            evs = await sub.batch(16)
            sizes.append(len(evs))
            got += [e.payload for e in evs]
        assert got == list(range(50))
        assert sizes == [16, 16, 16, 2]
        await sub.close()
        assert await sub.batch(16) == []

    run(pair, body)
