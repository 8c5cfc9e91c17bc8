"""SDK <-> daemon over real ipc sockets: pub/sub, request/reply, reconnect, bad input, floods."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import cbor2
import psutil
import pytest
import uvloop
import zmq

from loomd.bus import wire
from loomd.bus.envelope import Event
from loomd.errors import RequestTimeout
from loomd.sdk import Client, connect
from tests.conftest import LoomdProcess

T = TypeVar("T")


def arun(fn: Callable[[], Awaitable[T]]) -> T:
    return uvloop.run(fn())  # type: ignore[arg-type]


async def status(bus: Client) -> dict[str, Any]:
    st = (await bus.status())["status"]["components"]
    return {**st["bus"]["status"], "state": st["state"]["status"]}


def test_pub_sub_every_qos_and_raw_bytes(daemon: LoomdProcess) -> None:
    async def main() -> None:
        async with (
            connect(daemon.endpoint, name="sub") as sb,
            connect(daemon.endpoint, name="pub") as pb,
        ):
            rt = await sb.subscribe("sensor.*.temp", "realtime").ready()
            rel = await sb.subscribe("control.#", "reliable").ready()
            bat = await sb.subscribe("telemetry.#", "batched").ready()
            await pb.publish("sensor.kitchen.temp", {"c": 21.5}, qos="realtime")
            await pb.publish("sensor.kitchen.humidity", {"rh": 40}, qos="realtime")  # no match
            pcm = os.urandom(640)
            await pb.publish("sensor.hall.temp", pcm, qos="realtime")
            await pb.publish("control.lights.on", {"room": "hall"})  # reliable, durable
            for i in range(5):
                await pb.publish("telemetry.cpu", i, qos="batched")
            e1, e2 = await rt.get(5), await rt.get(5)
            assert (e1.topic, e1.payload) == ("sensor.kitchen.temp", {"c": 21.5})
            assert e2.payload == pcm and e2.header["enc"] == "raw"
            c = await rel.get(5)
            assert (c.topic, c.payload, c.sender) == ("control.lights.on", {"room": "hall"}, "pub")
            got = [(await bat.get(5)).payload for _ in range(5)]
            assert got == [0, 1, 2, 3, 4]
            st = await status(pb)
            assert st["state"]["journal_entries"] >= 1  # control.# is durable by default

    arun(main)


def test_request_reply_and_timeout(daemon: LoomdProcess) -> None:
    async def main() -> None:
        async with (
            connect(daemon.endpoint, name="agent") as agent,
            connect(daemon.endpoint) as caller,
        ):
            inbox = await agent.subscribe("agent.calc.inbox", "reliable").ready()

            async def serve() -> None:
                async for req in inbox:
                    await agent.reply(req, {"sum": sum(req.payload)})

            task = asyncio.create_task(serve())
            try:
                reply = await caller.request("agent.calc.inbox", [1, 2, 3], timeout=5)
                assert reply.payload == {"sum": 6}
                assert reply.topic.startswith("thread.") and reply.topic.endswith(".reply")
                with pytest.raises(RequestTimeout):
                    await caller.request("agent.nobody.inbox", [1], timeout=0.3)
            finally:
                task.cancel()

    arun(main)


def test_reconnect_across_daemon_restart(daemon: LoomdProcess) -> None:
    async def main() -> None:
        async with (
            connect(daemon.endpoint, heartbeat_s=0.2) as sb,
            connect(daemon.endpoint, heartbeat_s=0.2) as pb,
        ):
            sub = await sb.subscribe("control.door.#", "reliable").ready()
            await pb.publish("control.door.front", "before")
            assert (await sub.get(5)).payload == "before"
            boot = sb.boot_id
            await asyncio.to_thread(daemon.restart)
            # published while the subscriber may not be resubscribed yet: durable, so replayed
            await asyncio.wait_for(pb.publish("control.door.front", "after"), 10)
            ev = await sub.get(10)
            assert ev.payload == "after"
            async with asyncio.timeout(10):
                await sb.reconnected.wait()
                await pb.reconnected.wait()
            assert sb.boot_id != boot and sb.reconnects >= 1
            live = await sb.subscribe("sensor.#", "realtime").ready()
            await pb.publish("sensor.x.y", "live2", qos="realtime")
            assert (await live.get(5)).payload == "live2"

    arun(main)


def test_fuzzed_frames_are_rejected_and_the_bus_keeps_working(daemon: LoomdProcess) -> None:
    async def main() -> None:
        async with connect(daemon.endpoint, name="watch") as watch:
            errors = await watch.subscribe("loomd.error", "realtime").ready()
            good = await watch.subscribe("fuzz.ok", "reliable").ready()
            ctx = zmq.Context.instance()
            raw = ctx.socket(zmq.DEALER)
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(daemon.endpoint)
            rng = random.Random(1234)
            t, h, b = Event.create("fuzz.ok", {"n": 1}, qos="realtime").frames()
            bad_messages: list[list[bytes]] = [
                [wire.pack_event(t, b"\xff\xfe garbage", b"")],  # header not CBOR
                [wire.pack_event(t, h[:-3], b)],  # truncated CBOR header
                [wire.pack_event(t, cbor2.dumps([1, 2]), b"")],  # header not a map
                [wire.pack_event(t, cbor2.dumps({"v": 99}), b"")],  # unknown protocol version
                [wire.pack_event(t, h, b)[:12]],  # frame cut inside the header
                [wire.pack_event(t, h, b), b"extra"],  # a second frame
                [wire.pack_event(b"fuzz..bad", h, b)],  # invalid topic
                [wire.pack_event(b"\xff\xfe", h, b)],  # topic not UTF-8
                [wire.pack_event(t, h, b"x" * (2 << 20))],  # over max_frame_bytes (1 MiB)
                [b"\x02not cbor at all"],  # control, malformed
                [wire.pack_control({"no": "op"})],  # control without op
                [b"\x09whatever"],  # unknown frame kind
                [b""],  # empty frame
            ]
            for _ in range(300):
                n = rng.choice([1, 1, 1, 2, 3])
                bad_messages.append([rng.randbytes(rng.randint(0, 64)) for _ in range(n)])
            for msg in bad_messages:
                raw.send_multipart(msg)
            alive = Event.create("fuzz.ok", "still alive", qos="realtime")  # no hello: no acks
            raw.send(alive.to_wire())
            ev = await good.get(10)
            assert ev.payload == "still alive"
            err = await errors.get(5)
            assert err.payload["code"] == "protocol"
            st = await status(watch)
            rejected = st["rejected"]
            assert sum(rejected.values()) >= 11
            for reason in (
                "malformed header",
                "unsupported protocol version",
                "bad frame count",
                "invalid topic",
                "frame too large",
                "malformed control message",
                "truncated frame",
                "unknown frame kind",
            ):
                assert rejected.get(reason, 0) >= 1, (reason, rejected)
            # the raw client got error replies, and the daemon still serves everyone
            assert raw.poll(5000)
            reply = wire.unpack_control(raw.recv())
            assert reply["ok"] is False and reply["code"] == "protocol"
            raw.close(0)
            assert daemon.proc is not None and daemon.proc.poll() is None

    arun(main)


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 1e6


def _stalled_subscriber(endpoint: str, pattern: str, qos: str) -> zmq.Socket[bytes]:
    """A client that subscribes and then never reads: the worst consumer there is."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100)
    sock.connect(endpoint)
    sock.send(
        wire.pack_control(
            {"op": "sub", "sid": 1, "pattern": pattern, "qos": qos, "window": 64, "rid": 1}
        )
    )
    assert sock.poll(5000)
    assert wire.unpack_control(sock.recv())["ok"]
    return sock


def test_realtime_flood_into_stalled_subscriber_is_bounded_and_counted(
    daemon: LoomdProcess,
) -> None:
    async def main() -> None:
        stalled = _stalled_subscriber(daemon.endpoint, "flood.#", "realtime")
        async with connect(daemon.endpoint, name="flooder") as pb:
            before = _rss_mb(daemon.pid())
            body = os.urandom(1024)
            sent = 0
            for i in range(60_000):
                await pb.publish("flood.rt", body, qos="realtime")
                sent += 1
                if i % 500 == 0:
                    await pb.call("ping")  # pace to what the daemon takes: never blocks it
            await pb.call("ping")
            st = await status(pb)
            sub = next(s for s in st["subscriptions"] if s["pattern"] == "flood.#")
            assert sub["depth"] <= 1024  # bus.realtime_queue
            assert sub["dropped"].get("queue_full", 0) > 0
            assert st["drops"]["queue_full"] == sub["dropped"]["queue_full"]
            # 60 MB went through; the daemon holds at most its queue plus the socket buffers
            assert _rss_mb(daemon.pid()) - before < 40
        stalled.close(0)

    arun(main)


def test_reliable_flood_slows_the_publisher_and_drops_nothing(daemon: LoomdProcess) -> None:
    # slow_consumer_ms: a consumer that takes nothing for that long is shed (tests/hostile),
    # and after max_hold_ms without an ack it no longer holds publishers back; here both
    # are long and it starts reading after 2 s, so it is only slow: the publisher is held.
    # The bound is generous: on a starved machine (CI, 2 shared cores) pacing 2000 events
    # can take many seconds, and shedding is not what this test is about.
    daemon.write_config(
        "[bus]\nreliable_queue = 500\ncredit_window = 100\nslow_consumer_ms = 120000\n"
        "max_hold_ms = 120000\n"
    )
    daemon.restart()

    async def main() -> None:
        async with (
            connect(daemon.endpoint, name="consumer") as cb,
            connect(daemon.endpoint, name="producer") as pb,
        ):
            sub = cb.subscribe("work.#", "reliable", window=50)
            await sub.ready()

            # The subscriber does not read yet: the daemon fills 50 in flight + 500 queued,
            # then withholds credits; 100 more are in the publisher's window.
            async def produce() -> int:
                for i in range(2000):
                    await pb.publish("work.item", i, wait=False)
                await pb.flush()
                return 2000

            before = _rss_mb(daemon.pid())
            producer = asyncio.create_task(produce())
            done, _ = await asyncio.wait({producer}, timeout=2.0)  # a deadline, not a sleep
            assert not done, "the publisher should be held back by credits"
            assert len(pb._unacked) == pb.credit_window == 100
            st = await status(cb)
            assert sum(st["drops"].values()) == 0
            got = []
            async with asyncio.timeout(30):
                while len(got) < 2000:
                    got.append((await sub.get()).payload)
            assert await producer == 2000
            assert got == list(range(2000))  # nothing lost, in order
            assert _rss_mb(daemon.pid()) - before < 20  # held back, not buffered
            st = await status(cb)
            assert sum(st["drops"].values()) == 0

    arun(main)


def _kill_cycles() -> int:
    return int(os.environ.get("LOOMD_KILL_CYCLES", "20"))


class Tally:
    """A set of event ids that wakes waiters whenever it grows."""

    def __init__(self) -> None:
        self.ids: set[bytes] = set()
        self.grew = asyncio.Event()

    def add(self, eid: bytes) -> None:
        self.ids.add(eid)
        self.grew.set()

    async def until(self, done: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.grew.clear()
                await self.grew.wait()


async def _produce(pb: Client, stop: asyncio.Event, acked: Tally, cycle: int) -> None:
    n = 0
    while not stop.is_set():
        ev = await pb.publish("control.stream", {"cycle": cycle, "n": n}, wait=False)
        pb._unacked[-1][1].add_done_callback(
            lambda f, i=ev.id: None if f.cancelled() or f.exception() else acked.add(i)
        )
        n += 1
        if n % 64 == 0:
            await asyncio.sleep(0)  # yield to the loop so acks come in


@pytest.mark.slow
def test_kill9_loses_no_acknowledged_event(daemon: LoomdProcess) -> None:
    """kill -9 during a stream of acknowledged reliable publishes, restart, repeat: every
    acknowledged event is in the journal and reaches the resuming subscriber."""

    async def main() -> None:
        acked, received = Tally(), Tally()
        async with connect(daemon.endpoint, heartbeat_s=0.2, timeout=20, name="survivor") as sb:
            sub = await sb.subscribe("control.stream", "reliable").ready()

            async def consume() -> None:
                async for ev in sub:
                    received.add(ev.id)

            consumer = asyncio.create_task(consume())
            try:
                for cycle in range(_kill_cycles()):
                    async with connect(
                        daemon.endpoint, heartbeat_s=0.2, timeout=20, name=f"pub{cycle}"
                    ) as pb:
                        stop = asyncio.Event()
                        producer = asyncio.create_task(_produce(pb, stop, acked, cycle))
                        target = len(acked.ids) + 300
                        await acked.until(lambda t=target: len(acked.ids) >= t, 20)
                        await asyncio.to_thread(daemon.kill9)
                        stop.set()
                        snapshot = set(acked.ids)  # acknowledged before the kill
                        await asyncio.to_thread(daemon.start)
                        await asyncio.wait_for(producer, 10)
                        await pb.flush(timeout=20)  # unacked ones are re-sent after reconnect
                    await received.until(lambda s=snapshot: s <= received.ids, 30)
                await received.until(lambda: acked.ids <= received.ids, 30)
            finally:
                consumer.cancel()
        assert acked.ids and acked.ids <= received.ids

    arun(main)


def test_tcp_endpoint_on_loopback(loomd_proc: LoomdProcess) -> None:
    """TCP needs CurveZMQ: an authorized client key gets in; the server key is the one the
    daemon created in its keys folder."""
    import zmq.auth

    from tests.conftest import free_port

    port = free_port()
    keys = loomd_proc.root / "state" / "curve"
    (keys / "authorized").mkdir(parents=True)
    mine = loomd_proc.root / "client-keys"
    mine.mkdir()
    pub_file, secret_file = zmq.auth.create_certificates(str(mine), "agent")
    shutil.copy(pub_file, keys / "authorized" / "agent.key")
    loomd_proc.write_config(f"[bus]\ntcp_enabled = true\ntcp_port = {port}\n")
    loomd_proc.start()
    server_pub, _ = zmq.auth.load_certificate(str(keys / "server.key"))
    pub, secret = zmq.auth.load_certificate(secret_file)
    assert secret is not None

    async def main() -> None:
        curve = (server_pub, pub, secret)
        async with (
            connect(f"tcp://127.0.0.1:{port}", curve=curve) as tb,
            connect(loomd_proc.endpoint) as ib,
        ):
            sub = await tb.subscribe("net.#", "reliable").ready()
            await ib.publish("net.hello", {"via": "ipc"})
            ev = await sub.get(5)
            assert ev.payload == {"via": "ipc"}
            st = await status(tb)
            assert f"tcp://127.0.0.1:{port}" in st["endpoints"]
            assert st["quotas"]["tcp_auth"] == "curve"

    arun(main)


def test_tcp_without_auth_must_be_asked_for_and_warns(loomd_proc: LoomdProcess) -> None:
    from tests.conftest import free_port

    port = free_port()
    loomd_proc.write_config(f'[bus]\ntcp_enabled = true\ntcp_port = {port}\ntcp_auth = "none"\n')
    loomd_proc.start()

    async def main() -> None:
        async with connect(f"tcp://127.0.0.1:{port}") as tb:
            assert (await status(tb))["quotas"]["tcp_auth"] == "none"

    arun(main)
    assert "has NO authentication" in loomd_proc.log.read_text()


def test_batched_flood_into_stalled_subscriber_is_sampled_and_bounded(
    loomd_proc: LoomdProcess,
) -> None:
    loomd_proc.write_config(
        "[bus]\nbatch_max = 100\nbatch_interval_ms = 60000\nbatch_budget = 1000\n"
    )
    loomd_proc.start()

    async def main() -> None:
        stalled = _stalled_subscriber(loomd_proc.endpoint, "metrics.#", "batched")
        async with connect(loomd_proc.endpoint, name="telemetry") as pb:
            before = _rss_mb(loomd_proc.pid())
            body = os.urandom(1024)
            for i in range(30_000):
                await pb.publish("metrics.cpu", body, qos="batched")
                if i % 500 == 0:
                    await pb.call("ping")
            await pb.call("ping")
            st = await status(pb)
            sub = next(s for s in st["subscriptions"] if s["pattern"] == "metrics.#")
            # 30k events in one interval against a budget of 1000: most are sampled out;
            # the client never reads, so released batches wait in the daemon, bounded
            assert sub["depth"] <= 1000 + 1000
            assert sub["dropped"].get("sampled", 0) > 0
            assert st["topics"]["metrics.cpu"]["dropped"] == sub["dropped"]["sampled"]
            assert _rss_mb(loomd_proc.pid()) - before < 40
        stalled.close(0)

    arun(main)


def test_max_age_holds_to_the_application(daemon: LoomdProcess) -> None:
    """A realtime subscription's max_age_ms: events that grew older than it after the daemon
    let them go (in the pipes, in the SDK's queue while the application was busy) are
    dropped at delivery too, and counted; fresh ones still arrive."""

    async def main() -> None:
        async with connect(daemon.endpoint) as bus:
            sub = await bus.subscribe("age.#", "realtime", max_age_ms=50).ready()
            for i in range(20):
                await bus.publish("age.x", i, qos="realtime")
            async with asyncio.timeout(5):  # all 20 reached the SDK's queue, fresh
                while sub.received < 20:  # noqa: ASYNC110 - the SDK counter, with a deadline
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.12)  # the application is busy: they age past 50 ms
            await bus.publish("age.x", "fresh", qos="realtime")
            assert (await sub.get(5)).payload == "fresh"
            assert sub.too_old == 20 and sub.dropped == 20

    arun(main)


FREEZE_PROBE = """
import gc, sys, uvloop
from loomd.sdk import Client

async def main():
    async with Client(sys.argv[1], name="freeze", freeze_gc=sys.argv[2] == "1"):
        print(gc.get_freeze_count())
    async with Client(sys.argv[1], name="again", freeze_gc=sys.argv[2] == "1"):
        print(gc.get_freeze_count())

uvloop.run(main())
"""


@pytest.mark.parametrize("freeze", [True, False])
def test_a_connected_client_freezes_the_start_once_unless_told_not_to(
    daemon: LoomdProcess, freeze: bool
) -> None:
    """What a process's start left alive leaves the collector's generations once, at its
    first connect (a long call loop must not walk it: docs/design/fast-hops-calls.md);
    loomctl's short-lived client (freeze_gc=False) leaves the collector alone."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE, daemon.endpoint, "1" if freeze else "0"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    first, second = int(out[0]), int(out[1])
    if freeze:
        assert first > 1000 and second <= first  # the start's objects, frozen once only
    else:
        assert first == second == 0


def test_requests_share_one_reply_subscription_answered_out_of_order_and_after_its_loss(
    daemon: LoomdProcess,
) -> None:
    """A client's requests share one standing reply subscription: concurrent ones get their
    own answers whatever the order of the replies; a request after that subscription ended
    (closed here, as an eviction or a refusal would) opens it again and gets its answer."""

    async def main() -> None:
        async with (
            connect(daemon.endpoint, name="agent") as agent,
            connect(daemon.endpoint, name="caller") as caller,
        ):
            inbox = await agent.subscribe("agent.rev.inbox", "reliable").ready()

            async def serve() -> None:
                held: list[Event] = []
                async for req in inbox:
                    held.append(req)
                    if len(held) == 3 or req.payload == "alone":
                        for r in reversed(held):  # the last asked is answered first
                            await agent.reply(r, {"echo": r.payload})
                        held.clear()

            task = asyncio.create_task(serve())
            try:
                got = await asyncio.gather(
                    *(caller.request("agent.rev.inbox", i, timeout=5) for i in range(3))
                )
                assert [g.payload for g in got] == [{"echo": 0}, {"echo": 1}, {"echo": 2}]
                replies = [s for s in caller._subs.values() if s.pattern.startswith("thread.")]
                assert len(replies) == 1  # one standing subscription, not one per request
                await replies[0].close()  # lost
                again = await caller.request("agent.rev.inbox", "alone", timeout=5)
                assert again.payload == {"echo": "alone"}
                after = [s for s in caller._subs.values() if s.pattern.startswith("thread.")]
                assert len(after) == 1 and after[0] is not replies[0]
            finally:
                task.cancel()

    arun(main)
