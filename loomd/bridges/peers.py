"""The `peers` component: loomd-to-loomd links over ZeroMQ TCP with CurveZMQ.

Each board has a Curve key pair (made at first start in `<state_dir>/peers/`, mode 0600).
A board that listens (`[peers] listen`, off by default) accepts only the public keys in its
authorized-keys folder (`<name>.key` files, like ssh's authorized_keys), checked by our own
ZAP handler, which counts and logs every refusal with the address. A board dials the
others it names in `[[peers.links]]` (endpoint and the peer's public key: the dialer checks
the server too).

One connection carries both directions. The dialer says HELLO with its device id and the
patterns it wants to receive; the listener answers with its own HELLO. Events travel as
`[b"E", seq, topic, header, body]`; reliable ones (seq > 0) are acknowledged with
`[b"A", seq]` once the receiving bus accepted them (journaled first when durable), re-sent
after `RESEND_S` without an ack, and bounded by a window (credit): when it is full the
forwarder stops taking from its reliable subscription, which pushes back on publishers.
Realtime events are sent without blocking; what the socket cannot take is dropped, counted.

Loop guards: every forwarded event carries `meta.origin` (the device it started on) and
`meta.peer_id` (its first id); a board drops what comes back to its origin, drops ids it has
seen (a ring or a mesh delivers each event once per board), never sends an event back over
the link it came in on, and decrements the TTL per hop.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from loomd.bridges.peer_frames import guards, read_guards
from loomd.bridges.peer_keys import load_or_make_keys, read_authorized
from loomd.bridges.settings import PeersSettings
from loomd.bus import wire, zmqio
from loomd.bus.api import BusSubscription
from loomd.bus.envelope import DEFAULT_TTL, Event, QoS
from loomd.bus.subscriber import SlowConsumer
from loomd.bus.topics import matches
from loomd.component import Command, Component, StatusBlock
from loomd.errors import LoomdError, ProtocolError
from loomd.messages import ErrorCode
from loomd.metrics import Family

__all__ = ["PeersComponent", "PeersStatus", "load_or_make_keys"]

SEQ = struct.Struct(">Q")
ACKS = SEQ  # an ack frame: b"A" + one or more sequence numbers
RECV_BATCH = 256
BATCH = 256  # frames per ZeroMQ message at most
LEN = struct.Struct(">I")
NO_SEQ = bytes(8)
WINDOW = 1024  # reliable events sent and not yet acknowledged, per peer
RESEND_S = 2.0
SEEN_MAX = 65536
HWM = 10000
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


@dataclass
class Peer:
    """One connected board (either side of a connection)."""

    name: str  # the link name (dialer) or the key's name (listener)
    try_send: Any  # (frame) -> bool, never blocks
    device: str = ""
    wants: tuple[str, ...] = ()  # patterns it asked for
    accepts: tuple[str, ...] = ()  # patterns we take from it
    next_seq: int = 1
    unacked: OrderedDict[int, tuple[bytes, float]] = field(default_factory=OrderedDict)
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    received: int = 0
    dropped: int = 0
    looped: int = 0
    resent: int = 0
    subs: list[BusSubscription] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    hello_at: float = 0.0
    accept_cache: dict[str, bool] = field(default_factory=dict)
    outq: list[bytes] = field(default_factory=list)
    ackq: list[int] = field(default_factory=list)
    flush_due: bool = False
    inq: deque[tuple[Event, int, dict[str, Any], int]] = field(default_factory=deque)
    deliverer: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "connected": bool(self.hello_at),
            "sent": self.sent,
            "received": self.received,
            "unacked": len(self.unacked),
            "dropped": self.dropped,
            "looped": self.looped,
            "resent": self.resent,
        }


@dataclass(frozen=True)
class PeersStatus(StatusBlock):
    public_key: str
    listening: str
    refused: int
    peers: dict[str, dict[str, Any]]

    def lines(self) -> list[str]:
        out = [
            f"key {self.public_key}, "
            + (f"listening on {self.listening}" if self.listening else "not listening")
            + f", {self.refused} refused"
        ]
        for name, p in self.peers.items():
            out.append(
                f"{name} ({p['device'] or '?'}): {'up' if p['connected'] else 'down'}, "
                f"sent {p['sent']}, received {p['received']}, unacked {p['unacked']}, "
                f"dropped {p['dropped']}, looped {p['looped']}"
            )
        return out


class _Pipe:
    """A plain ZeroMQ socket watched by the event loop (as the bus does, loomd.bus.zmqio):
    its fd is edge-triggered, so after any send or receive we re-check by draining again."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[bytes], on: Any, users: bool = False
    ) -> None:
        self.loop, self.sock, self.on = loop, sock, on
        self.users = users  # read the ZAP user id (the key's name) of each message
        self.user = ""
        self.fd = zmqio.socket_fd(sock)
        self.due = False
        loop.add_reader(self.fd, self.drain)
        self.kick()

    def drain(self) -> None:
        self.due = False
        for _ in range(RECV_BATCH):
            try:
                frames = self._recv_users() if self.users else zmqio.recv_frames(self.sock)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # closed
            self.on(self, frames)
        self.kick()  # more may wait: after the others have run

    def _recv_users(self) -> list[bytes]:
        f = self.sock.recv(zmq.NOBLOCK, copy=False)
        out = [f.bytes]
        while f.more:
            f = self.sock.recv(zmq.NOBLOCK, copy=False)
            out.append(f.bytes)
        self.user = str(f.get("User-Id") or "")
        return out

    def kick(self) -> None:
        if not self.due:
            self.due = True
            self.loop.call_soon(self.drain)

    def try_send(self, frames: list[bytes]) -> bool:
        """Send without blocking; False when the pipe is full or the peer is gone."""
        try:
            zmqio.send_frames(self.sock, frames)
        except zmq.ZMQError:
            return False
        finally:
            self.kick()  # a send may have consumed the fd's edge for pending input
        return True

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.sock.close(linger=0)


class PeersComponent(Component[PeersSettings]):
    summary = "loomd-to-loomd links over ZeroMQ TCP with CurveZMQ"

    async def start(self) -> None:
        s = self.settings
        self.device = self.ctx.device_id
        self.public, self.secret = await asyncio.to_thread(
            load_or_make_keys, self.ctx.state_dir / "peers"
        )
        self.zctx = zmq.Context()
        self.loop = asyncio.get_running_loop()
        self.peers: dict[str, Peer] = {}  # by name
        self.by_route: dict[bytes, Peer] = {}
        self.seen: OrderedDict[bytes, None] = OrderedDict()
        self.refused = 0
        self.counts: dict[str, int] = {}
        self.pipes: list[_Pipe] = []
        self.router: _Pipe | None = None
        self._authorized: dict[bytes, str] = {}
        self._authorized_at = 0.0
        if s.listen:
            zap = self.zctx.socket(zmq.REP)
            zap.linger = 0
            zap.bind(ZAP_ENDPOINT)
            self.pipes.append(_Pipe(self.loop, zap, self._on_zap))
            r = self.zctx.socket(zmq.ROUTER)
            r.linger = 0
            r.curve_server = True
            r.curve_secretkey = self.secret
            r.curve_publickey = self.public
            r.zap_domain = b"loomd"
            r.sndhwm = r.rcvhwm = HWM
            r.router_mandatory = True
            r.router_handover = True  # a dialer that reconnects keeps its route (its id)
            try:
                r.bind(s.listen)
            except zmq.ZMQError as exc:
                r.close()
                raise LoomdError(f"peers.listen {s.listen}: {exc}") from None
            self.router = _Pipe(self.loop, r, self._on_routed, users=True)
            self.pipes.append(self.router)
            self.log.info("peers: listening on %s", s.listen)
        for link in s.links:
            self._dial(link.name, link.endpoint, link.public_key, link.send, link.receive)
        self.spawn(self._resend, "resend", restart=True)

    async def stop(self) -> None:
        for p in self.peers.values():
            if p.deliverer is not None:
                p.deliverer.cancel()  # what it did not publish is not acked: re-sent later
            for sub in p.subs:
                await sub.close()
        for pipe in self.pipes:
            pipe.close()
        self.zctx.destroy(linger=0)

    # -- authentication -----------------------------------------------------------------------
    def _keys(self) -> dict[bytes, str]:
        now = time.monotonic()
        if now - self._authorized_at > 1.0:  # the folder may change under us: re-read, rarely
            self._authorized = read_authorized(Path(self.settings.authorized_keys_dir))
            self._authorized_at = now
        return self._authorized

    def _on_zap(self, pipe: _Pipe, frames: list[bytes]) -> None:
        """A ZAP request (RFC 27): allow the keys of the authorized-keys folder."""
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        creds = frames[6:]
        user = ""
        if mechanism == b"CURVE" and creds:
            user = self._keys().get(z85.encode(creds[0]), "")
        if user:
            pipe.try_send([version, request_id, b"200", b"OK", user.encode(), b""])
            return
        self.refused += 1
        shown = z85.encode(creds[0]).decode() if creds else "-"
        where = address.decode(errors="replace")
        self.ctx.error(
            ErrorCode.PEERS_REFUSED, f"peers: refused {where}: unknown key {shown}", address=where
        )
        pipe.try_send([version, request_id, b"400", b"unknown key", b"", b""])

    # -- the two ends of a connection ---------------------------------------------------------
    def _dial(
        self, name: str, endpoint: str, server_key: str, send: Iterable[str], receive: Iterable[str]
    ) -> None:
        d = self.zctx.socket(zmq.DEALER)
        d.linger = 0
        d.curve_serverkey = server_key.encode()
        d.curve_publickey = self.public
        d.curve_secretkey = self.secret
        d.sndhwm = d.rcvhwm = HWM
        d.reconnect_ivl = 100
        d.reconnect_ivl_max = 5000
        d.routing_id = f"{self.device}/{name}".encode()[:255]
        d.connect(endpoint)
        peer = Peer(name, None, accepts=tuple(receive))
        pipe = _Pipe(self.loop, d, lambda _p, frames: self._on_frame(peer, frames[0]))
        self.pipes.append(pipe)
        peer.try_send = lambda frame: pipe.try_send([frame])
        self.peers[name] = peer
        self._start_forwarding(peer, tuple(send))
        hello = self._hello(tuple(receive))

        async def greet() -> None:
            # HELLO until answered: a DEALER queues while the TCP/Curve handshake is pending.
            while not peer.hello_at:
                pipe.try_send([hello])
                await asyncio.sleep(2.0)

        self.spawn(greet, f"hello-{name}", restart=True)

    def _hello(self, wants: tuple[str, ...]) -> bytes:
        return b"H" + json.dumps({"device": self.device, "wants": list(wants)}).encode()

    def _on_routed(self, pipe: _Pipe, frames: list[bytes]) -> None:
        if len(frames) != 2:  # [route, frame]: anything else is not ours
            self._count("malformed")
            return
        route, frame = frames
        peer = self.by_route.get(route)
        if peer is None:
            peer = self._accept(route, pipe)
        self._on_frame(peer, frame)

    def _accept(self, route: bytes, pipe: _Pipe) -> Peer:
        # ZAP checked its key; the user id is the key file's name (not what the peer claims)
        name = pipe.user or route.hex()
        peer = Peer(name, None, accepts=self.settings.receive)
        peer.try_send = lambda frame: pipe.try_send([route, frame])
        old = self.peers.get(name)
        if old is not None:  # the same board from a new route
            for t in old.tasks:
                t.cancel()
            for sub in old.subs:
                self.spawn(sub.close, f"close-{name}", critical=False)
            peer.unacked, peer.next_seq = old.unacked, old.next_seq
            self.by_route = {k: v for k, v in self.by_route.items() if v is not old}
        self.peers[name] = peer
        self.by_route[route] = peer
        return peer

    def _on_frame(self, peer: Peer, frame: bytes) -> None:
        kind = frame[:1]
        if kind == b"B":  # several frames: events read in place, anything else copied out
            at, size = 1, len(frame)
            while at + 4 <= size:
                (n,) = LEN.unpack_from(frame, at)
                start, at = at + 4, at + 4 + n
                if at > size:
                    break
                if n and frame[start] == 0x46:  # b"F"
                    self._on_event(peer, frame, start, at)
                else:
                    self._on_frame(peer, frame[start:at])
            if at != size:
                self._count("malformed")
        elif kind == b"F" or kind == b"E":
            self._on_event(peer, frame, 0, len(frame))
        elif kind == b"A":
            for (seq,) in ACKS.iter_unpack(frame[1:]):
                peer.unacked.pop(seq, None)
            if len(peer.unacked) < WINDOW:
                peer.credit.set()
        elif kind == b"H":
            info = json.loads(frame[1:])
            first = not peer.hello_at
            peer.device = str(info.get("device", ""))
            peer.hello_at = time.monotonic()
            if self.router is not None and peer in self.by_route.values():
                # listener side: answer, and send what the dialer asked for
                peer.try_send(self._hello(()))
                if first:
                    peer.wants = tuple(str(p) for p in info.get("wants", ()))
                    self._start_forwarding(peer, peer.wants)
            self.log.info("peers: %s (%s) is up", peer.name, peer.device)

    # -- events in ----------------------------------------------------------------------------
    def _on_event(self, peer: Peer, frame: bytes, start: int, end: int) -> None:
        """The event frame at `frame[start:end]`: checked, then published unless a loop
        guard, its TTL or what this board accepts from the peer stops it."""
        try:
            (seq,) = SEQ.unpack_from(frame, start + 1)
            if frame[start] == 0x46:  # [F, seq, origin, peer_id, event frame]
                origin_b, pid, at = read_guards(frame, start + 9, end)
                origin = origin_b.decode()
            else:  # [E, seq, event frame]: the loop guards are in the event's meta
                origin, pid, at = "", b"", start + 9
            topic, header, body = wire.unpack_event(frame, at, end)
            ev = Event.from_frames(topic, header, body)
            h = ev.header  # decoded and checked now, not in the middle of routing
        except (ProtocolError, ValueError, IndexError, struct.error) as exc:
            self._count("malformed")
            self.log.warning("peers: malformed event from %s: %s", peer.name, exc)
            return
        if not pid:
            meta = h.get("meta") or {}
            origin = str(meta.get("origin", ""))
            pid = meta.get("peer_id") or h.get("id") or b""
        if origin == self.device or pid in self.seen:
            peer.looped += 1
        elif (ttl := h.get("ttl", DEFAULT_TTL)) <= 1:
            self._count("ttl")
        elif not self._accepts(peer, ev.topic):
            self._count("not_accepted")
        else:
            seen = self.seen
            seen[pid] = None
            if len(seen) > SEEN_MAX:
                seen.popitem(last=False)
            peer.inq.append(
                (ev, ttl - 1, {"origin": origin, "peer_id": pid, "via": peer.name}, seq)
            )
            if peer.deliverer is None or peer.deliverer.done():
                peer.deliverer = self.loop.create_task(self._deliver(peer))
            return
        if seq:
            self._ack(peer, seq)  # a duplicate is acked again: the first ack was lost

    async def _deliver(self, peer: Peer) -> None:
        """Publish what arrived, in order, one task per burst (not per event): a publish
        the broker accepts at once completes without suspending. The event goes on as it
        came, the hop's guards patched into its header (`Bus.forward`: no decode, no
        encode). The ack goes back once the bus accepted it (journaled first when durable)."""
        bus = self.ctx.bus
        while peer.inq:
            ev, ttl, meta, seq = peer.inq.popleft()
            try:
                await bus.forward(ev, ttl=ttl, meta=meta)
            except LoomdError as exc:
                self.seen.pop(meta["peer_id"], None)
                self._count("bus_refused")
                self.log.warning("peers: bus refused an event from %s: %s", peer.name, exc)
                continue  # no ack: the sender re-sends it
            peer.received += 1
            if seq:
                self._ack(peer, seq)

    def _accepts(self, peer: Peer, topic: str) -> bool:
        hit = peer.accept_cache.get(topic)
        if hit is None:
            hit = any(matches(p, topic) for p in peer.accepts)
            if len(peer.accept_cache) > 4096:
                peer.accept_cache.clear()
            peer.accept_cache[topic] = hit
        return hit

    # -- events out ---------------------------------------------------------------------------
    def _start_forwarding(self, peer: Peer, patterns: tuple[str, ...]) -> None:
        for pattern in patterns:
            for qos in (QoS.RELIABLE, QoS.REALTIME):
                sub = self._subscribe(pattern, qos)
                peer.subs.append(sub)
                task = self.spawn(
                    lambda sub=sub, qos=qos: self._forward(peer, sub, qos),  # type: ignore[misc]
                    f"fwd-{peer.name}-{pattern}-{qos}",
                    restart=True,
                )
                peer.tasks.append(task)

    async def _forward(self, peer: Peer, sub: BusSubscription, qos: QoS) -> None:
        """Forward one subscription's events. One the bus shed (full while the peer's window
        was, longer than `slow_consumer_ms`: its events are counted `evicted` drops) is
        made again: the link goes on once the peer acks again."""
        while True:
            try:
                await self._forward_from(peer, sub, qos)
                return  # closed: the component stops or the peer was replaced
            except SlowConsumer as exc:
                self._count("evicted")
                self.log.warning("peers: %s: %s; subscribing again", peer.name, exc)
                peer.subs.remove(sub)
                sub = self._subscribe(sub.pattern, qos)
                peer.subs.append(sub)

    def _subscribe(self, pattern: str, qos: QoS) -> BusSubscription:
        """Each class is carried by its own subscription, which takes that class only: the
        reliable one reliable events, the realtime one realtime and batched events."""
        only = (QoS.RELIABLE,) if qos is QoS.RELIABLE else (QoS.REALTIME, QoS.BATCHED)
        return self.ctx.bus.subscribe(pattern, qos, classes=only)

    async def _forward_from(self, peer: Peer, sub: BusSubscription, qos: QoS) -> None:
        """Take what the subscription has, a batch at a time (a reliable one: no more than
        the peer's window has room for), and send each event's own frame (kept from the
        socket it came in on, or encoded once) as it is; the hop's fields travel beside it,
        not in a re-encoded header."""
        reliable = qos == QoS.RELIABLE
        here = self.device
        while True:
            room = WINDOW - len(peer.unacked) if reliable else BATCH
            if room <= 0:
                peer.credit.clear()
                await peer.credit.wait()
                continue
            evs = await sub.batch(min(room, BATCH))
            if not evs:
                return  # closed
            for ev in evs:
                h = ev.header
                meta = h.get("meta")
                if meta:
                    origin = meta.get("origin")
                    if meta.get("via") == peer.name or (peer.device and origin == peer.device):
                        continue  # never back where it came from
                    hop = guards(str(origin or here), meta.get("peer_id") or h.get("id") or b"")
                else:
                    hop = guards(here, h.get("id") or b"")
                if h.get("ttl", DEFAULT_TTL) <= 1:
                    self._count("ttl")
                    continue
                if reliable:
                    while len(peer.unacked) >= WINDOW:  # other patterns share the window
                        self._flush_soon(peer)  # what is taken so far goes meanwhile
                        peer.credit.clear()
                        await peer.credit.wait()
                    seq = peer.next_seq
                    peer.next_seq = seq + 1
                    frame = b"".join((b"F", SEQ.pack(seq), hop, ev.to_wire()))
                    peer.unacked[seq] = (frame, time.monotonic())
                else:
                    frame = b"".join((b"F", NO_SEQ, hop, ev.to_wire()))
                peer.outq.append(frame)
            self._flush_soon(peer)

    # Frames leave once per loop iteration, many per ZeroMQ message: each message costs a
    # Curve encryption and a syscall (~50 us here), so batching is what makes a link fast.
    def _ack(self, peer: Peer, seq: int) -> None:
        peer.ackq.append(seq)
        self._flush_soon(peer)

    def _flush_soon(self, peer: Peer) -> None:
        if not peer.flush_due:
            peer.flush_due = True
            self.loop.call_soon(self._flush, peer)

    def _flush(self, peer: Peer) -> None:
        peer.flush_due = False
        acks, peer.ackq = peer.ackq, []
        if acks:
            peer.try_send(b"A" + struct.pack(f">{len(acks)}Q", *acks))
        q, peer.outq = peer.outq, []
        for i in range(0, len(q), BATCH):
            chunk = q[i : i + BATCH]
            if len(chunk) == 1:
                frame = chunk[0]
            else:
                parts = [b"B"]
                for f in chunk:
                    parts += (LEN.pack(len(f)), f)
                frame = b"".join(parts)
            if peer.try_send(frame):
                peer.sent += len(chunk)
            else:
                # reliable ones stay in `unacked` and are re-sent; realtime ones are gone
                peer.dropped += sum(1 for f in chunk if f[1:9] == NO_SEQ)

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(RESEND_S / 2)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                for seq, (frame, at) in list(peer.unacked.items()):
                    if now - at < RESEND_S:
                        break
                    peer.unacked[seq] = (frame, now)
                    peer.unacked.move_to_end(seq)
                    peer.resent += 1
                    peer.try_send(frame)

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    # -- the operator's view ------------------------------------------------------------------
    def status(self) -> PeersStatus:
        return PeersStatus(
            public_key=self.public.decode(),
            listening=self.settings.listen,
            refused=self.refused,
            peers={name: p.view() for name, p in self.peers.items()},
        )

    def metrics(self) -> Iterable[Family]:
        yield Family(
            "loomd_peers_refused_total", "counter", "Connections refused (unknown key).",
            [({}, float(self.refused))],
        )  # fmt: skip
        for what in ("sent", "received", "dropped", "looped", "resent"):
            yield Family(
                f"loomd_peers_{what}_total", "counter", f"Events {what}, per peer.",
                [({"peer": n}, float(getattr(p, what))) for n, p in self.peers.items()],
            )  # fmt: skip

    def commands(self) -> Mapping[str, Command]:
        return {"key": Command(self._key, "this board's public key (z85)")}

    async def _key(self) -> dict[str, Any]:
        return {"public_key": self.public.decode()}
