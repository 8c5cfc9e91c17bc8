"""Peer links between real loomd hosts on loopback: ZeroMQ TCP, CurveZMQ, ZAP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loomd.bridges.peers import PeersComponent, load_or_make_keys
from loomd.host import Host
from loomd.sdk import connect
from tests.bridges.conftest import running, wait_for
from tests.conftest import free_port

PEERS = ("state", "bus", "peers")


class Board:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.root = root / name
        self.port = free_port()
        self.public = load_or_make_keys(self.root / "state" / "peers")[0].decode()
        self.keys_dir = self.root / "peers.d"
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.links: list[str] = []
        self.listen = False
        self.receive: list[str] = []

    def authorize(self, other: Board) -> None:
        (self.keys_dir / f"{other.name}.key").write_text(other.public + "\n")

    def link(self, other: Board, send: list[str], receive: list[str]) -> None:
        self.links.append(
            f'[[peers.links]]\nname = "{other.name}"\n'
            f'endpoint = "tcp://127.0.0.1:{other.port}"\npublic_key = "{other.public}"\n'
            f"send = {send!r}\nreceive = {receive!r}\n".replace("'", '"')
        )

    def section(self) -> str:
        head = (
            "[peers]\nenabled = true\n"
            f'authorized_keys_dir = "{self.keys_dir}"\n'
            f"receive = {self.receive!r}\n".replace("'", '"')
        )
        if self.listen:
            head += f'listen = "tcp://127.0.0.1:{self.port}"\n'
        return head + "".join(self.links)


@contextlib.asynccontextmanager
async def boards(*bs: Board) -> AsyncIterator[list[Host]]:
    async with contextlib.AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(
                running(b.root, b.section(), device_id=b.name, names=PEERS)
            )
            for b in bs
        ]
        yield hosts


def peers_of(host: Host) -> PeersComponent:
    c = host.get("peers")
    assert isinstance(c, PeersComponent), host.status()
    return c


async def up(host: Host, name: str) -> None:
    c = peers_of(host)
    await wait_for(lambda: name in c.peers and bool(c.peers[name].hello_at), 15)


async def test_two_boards_share_topics_both_ways(short_tmp: Path) -> None:
    hub, sat = Board(short_tmp, "hub"), Board(short_tmp, "sat")
    hub.listen, hub.receive = True, ["audio.in.#"]
    hub.authorize(sat)
    sat.link(hub, send=["audio.in.#"], receive=["voice.say"])
    async with boards(hub, sat) as (h, s):
        await up(s, "hub")
        await up(h, "sat")
        async with (
            h.get("bus").ctx.bus.subscribe("audio.in.#", "reliable") as at_hub,  # type: ignore[union-attr]
            s.get("bus").ctx.bus.subscribe("voice.say", "reliable") as at_sat,  # type: ignore[union-attr]
        ):
            sb, hb = peers_of(s).ctx.bus, peers_of(h).ctx.bus
            for i in range(50):
                await sb.publish("audio.in.kitchen", bytes([i]) * 10)
            got = [(await at_hub.get(10)).payload for _ in range(50)]
            assert got == [bytes([i]) * 10 for i in range(50)]
            await hb.publish("voice.say", {"text": "hello"})
            ev = await at_sat.get(10)
            assert ev.payload == {"text": "hello"} and ev.meta["origin"] == "hub"
            assert ev.meta["via"] == "hub"
            # not asked for, not sent: the hub's other topics stay home
            await hb.publish("private.x", 1)
            await hb.publish("voice.say", {"text": "again"})
            assert (await at_sat.get(10)).payload == {"text": "again"}
        await wait_for(lambda: not peers_of(s).peers["hub"].unacked)


async def test_a_forwarded_event_reaches_a_socket_subscriber_with_the_hop_in_its_meta(
    short_tmp: Path,
) -> None:
    """The hub publishes what the satellite forwards as it came, its header patched
    (`Bus.forward`): a client on the hub's socket gets the payload, the type, one TTL
    less and the loop guards in the meta; each class over its own subscription."""
    hub, sat = Board(short_tmp, "hub"), Board(short_tmp, "sat")
    hub.listen, hub.receive = True, ["fw.#"]
    hub.authorize(sat)
    sat.link(hub, send=["fw.#"], receive=[])
    async with boards(hub, sat) as (_, s):
        await up(s, "hub")
        async with connect(f"ipc://{hub.root}/run/bus.sock", name="watcher") as client:
            rel = await client.subscribe("fw.#", "reliable").ready()
            rt = await client.subscribe("fw.rt", "realtime").ready()
            sb = peers_of(s).ctx.bus
            sent = [await sb.publish("fw.x", {"i": i}, type="fw.kind", ttl=9) for i in range(20)]
            for ev in sent:
                got = await rel.get(10)
                assert (got.payload, got.type, got.ttl) == (ev.payload, "fw.kind", 8)
                assert got.meta == {"origin": "sat", "peer_id": ev.id, "via": "sat"}
                assert got.sender == "peers" and got.id != ev.id
            one = await sb.publish("fw.rt", b"now", qos="realtime")
            got = await rt.get(10)
            assert (got.payload, got.qos, got.meta["peer_id"]) == (b"now", "realtime", one.id)
        links = [x for x in (await sb.stats()).subscriptions if x.owner == "peers"]
        # the realtime forwarder took no reliable event (its class only): nothing dropped
        assert all(x.delivered <= 1 and not x.dropped for x in links if x.qos == "realtime")


async def test_an_unknown_key_is_refused_counted_and_logged(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub, stranger = Board(short_tmp, "hub"), Board(short_tmp, "stranger")
    hub.listen, hub.receive = True, ["#"]
    stranger.link(hub, send=["#"], receive=["#"])  # it knows the hub's key; the hub not its
    caplog.set_level(logging.ERROR, logger="loomd.peers")
    async with boards(hub, stranger) as (h, x):
        await wait_for(lambda: peers_of(h).refused >= 1, 15)
        assert not peers_of(x).peers["hub"].hello_at
        assert "stranger" not in peers_of(h).peers
    assert any("refused 127.0.0.1" in r.getMessage() for r in caplog.records), caplog.text


async def test_a_ring_of_three_delivers_each_event_once_per_board_and_stops(
    short_tmp: Path,
) -> None:
    a, b, c = Board(short_tmp, "a"), Board(short_tmp, "b"), Board(short_tmp, "c")
    for x, y in ((a, b), (b, c), (c, a)):  # x dials y; both forward everything
        y.listen, y.receive = True, ["ring.#"]
        y.authorize(x)
        x.link(y, send=["ring.#"], receive=["ring.#"])
    async with boards(a, b, c) as hosts:
        for h, nxt in zip(hosts, "bca", strict=True):
            await up(h, nxt)
        buses = [peers_of(h).ctx.bus for h in hosts]
        subs = [bus.subscribe("ring.#", "reliable") for bus in buses]
        try:
            for bus, name in zip(buses, "abc", strict=True):
                await bus.publish(f"ring.from.{name}", name)
            seen: list[list[str]] = [[], [], []]
            for i, sub in enumerate(subs):
                while len(seen[i]) < 3:
                    seen[i].append((await sub.get(10)).payload)
            # a last event around the ring: anything still looping would arrive before it
            await buses[0].publish("ring.end", "end")
            for i, sub in enumerate(subs):
                ev = await sub.get(10)
                while ev.payload != "end":
                    seen[i].append(ev.payload)
                    ev = await sub.get(10)
            for got in seen:
                assert sorted(got) == ["a", "b", "c"], seen
            guarded = sum(p.looped for h in hosts for p in peers_of(h).peers.values())
            assert guarded >= 1  # the mesh offered duplicates and the guards dropped them
        finally:
            for sub in subs:
                await sub.close()


async def test_a_forwarder_the_bus_sheds_subscribes_again_and_the_link_goes_on(
    short_tmp: Path,
) -> None:
    """The hub is down: the satellite's window fills (1024 unacked), its forwarder stops
    taking, the bus sheds the full subscription (`evicted`, counted). The forwarder
    subscribes again; once the hub is up, the window's events are re-sent and new events
    flow again."""
    from loomd.bridges.peers import WINDOW

    hub, sat = Board(short_tmp, "hub"), Board(short_tmp, "sat")
    hub.listen, hub.receive = True, ["peer.#"]
    hub.authorize(sat)
    sat.link(hub, send=["peer.#"], receive=[])
    small = "[bus]\nreliable_queue = 32\n"  # shed at 4 x 32 queued
    async with running(sat.root, small + sat.section(), device_id="sat", names=PEERS) as s:
        p = peers_of(s)
        sb = p.ctx.bus
        for i in range(WINDOW + 200):
            await sb.publish("peer.x", i.to_bytes(4, "big"), wait=False)
            if i % 16 == 0:
                await asyncio.sleep(0)  # the forwarder takes them until the window is full
        async with asyncio.timeout(15):  # the bus sheds the full subscription, counted
            while not (await sb.stats()).drops.get("evicted", 0):  # noqa: ASYNC110 - bus counters, polled with a deadline
                await asyncio.sleep(0.01)
        assert len(p.peers["hub"].unacked) == WINDOW
        async with running(hub.root, hub.section(), device_id="hub", names=PEERS) as h:
            async with peers_of(h).ctx.bus.subscribe("peer.#", "reliable") as at_hub:
                await up(s, "hub")
                got = {(await at_hub.get(15)).payload for _ in range(WINDOW)}
                assert got == {i.to_bytes(4, "big") for i in range(WINDOW)}  # re-sent
                await wait_for(lambda: p.counts.get("evicted", 0) >= 1, 15)  # subscribed again
                await sb.publish("peer.x", b"after")
                while (ev := await at_hub.get(15)).payload != b"after":
                    assert len(ev.payload) == 4  # events queued after the shedding
            await wait_for(lambda: not p.peers["hub"].unacked, 15)
        live = [x for x in (await sb.stats()).subscriptions if x.owner == "peers"]
        assert {(x.pattern, x.qos) for x in live} == {
            ("peer.#", "reliable"),
            ("peer.#", "realtime"),
        }
