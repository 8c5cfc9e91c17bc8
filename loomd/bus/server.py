"""The daemon's socket side: one ZeroMQ ROUTER per endpoint, one Session per client.

Sockets are drained in batches from a single loop callback (`_pump`) driven by the
socket's file descriptor: ZeroMQ's FD is edge-triggered, so after every round the
pump re-checks `EVENTS` and reschedules itself instead of waiting for a new edge.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq

from loomd import __version__
from loomd.bus import wire
from loomd.bus.broker import Broker, Subscriber
from loomd.bus.envelope import Event, QoS, check_header
from loomd.bus.topics import validate_topic
from loomd.bus.zmqio import readable, recv_frames, send_frames, socket_fd
from loomd.errors import LoomdError, ProtocolError

log = logging.getLogger(__name__)

BATCH = 512  # messages per socket per pump round...
PUMP_BYTES = 256 * 1024  # ...or this many bytes (batches hold many events): bounds loop lag
DELIVERY_BATCH = 256  # deliveries packed into one frame per send...
BATCH_BYTES = 64 * 1024  # ...up to this size
SNDHWM = 100  # messages per client pipe, each way: with BATCH_BYTES, ~6.4 MB per client
RETRY_S = 0.002  # back-off when a client's pipe is full
HARD_LIMIT_FACTOR = 4  # libzmq disconnects peers above this multiple of max_frame_bytes

ControlHandler = Callable[["Session", dict[str, Any]], Awaitable[dict[str, Any]]]


class Session:
    """One connected client (SDK agent or loomctl), keyed by its ZeroMQ routing id."""

    def __init__(self, server: BusServer, sock: zmq.Socket[bytes], ident: bytes) -> None:
        self.server = server
        self.sock = sock
        self.ident = ident
        self.name = ""
        self.last_seen = time.monotonic()
        self.subs: dict[int, Subscriber] = {}  # client sid -> subscription
        self.sent: dict[int, int] = {}  # daemon sid -> deliveries sent (reliable)
        self.acked: dict[int, int] = {}  # daemon sid -> deliveries acked (reliable)
        self.windows: dict[int, int] = {}
        self.pub_fifo: deque[list[Any]] = deque()  # reliable publishes awaiting their ack
        self.pub_acked = 0
        self.pub_errors: list[tuple[int, str]] = []
        self.alive = True
        self.greeted = False  # said hello to *this* daemon: its reliable acks count from there

    def wake(self, sub: Subscriber) -> None:
        self.server.mark_dirty(sub)

    def ack_callback(self) -> Callable[[str | None], None]:
        cell: list[Any] = [None, False]
        self.pub_fifo.append(cell)

        def done(err: str | None) -> None:
            cell[0], cell[1] = err, True
            self.server.mark_acks(self)

        return done

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subscriptions": len(self.subs),
            "idle_s": round(time.monotonic() - self.last_seen, 1),
            "unacked_publishes": len(self.pub_fifo),
        }


class BusServer:
    def __init__(
        self,
        broker: Broker,
        endpoints: list[str],
        *,
        max_frame_bytes: int = 1 << 20,
        socket_mode: int = 0o660,
        client_timeout_s: float = 15.0,
        credit_window: int = 1024,
        control: ControlHandler | None = None,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.broker = broker
        self.endpoints = endpoints
        self.max_frame_bytes = max_frame_bytes
        self.socket_mode = socket_mode
        self.client_timeout_s = client_timeout_s
        self.credit_window = credit_window
        self.control = control
        self.ctx = ctx or zmq.Context.instance()
        self.loop = broker.loop
        self.boot_id = os.urandom(8).hex()
        self.sessions: dict[bytes, Session] = {}
        self._socks: list[zmq.Socket[bytes]] = []
        self._ipc_paths: list[Path] = []
        self._dirty: set[Subscriber] = set()
        self._ack_dirty: set[Session] = set()
        self._scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._sub_session: dict[int, tuple[Session, int]] = {}  # daemon sid -> (session, csid)
        self.latency: Callable[[int], None] | None = None  # ns from publish to hand-off
        self.accepting = True  # False once the daemon stops: publishes are not taken

    def stop_intake(self) -> None:
        """Take no more publishes. Unacked reliable ones stay with their clients, which
        re-send them to the next daemon; queued deliveries and acks still go out."""
        self.accepting = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> BusServer:
        try:
            for ep in self.endpoints:
                self._bind(ep)
        except BaseException:
            self._close_sockets()
            raise
        self._sweeper = asyncio.create_task(self._sweep(), name="loomd.bus.sweeper")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._flush()
        self._close_sockets()

    def _bind(self, ep: str) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.RCVHWM, SNDHWM)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes * HARD_LIMIT_FACTOR)
        if ep.startswith("ipc://"):
            path = Path(ep[len("ipc://") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            sock.bind(ep)
            os.chmod(path, self.socket_mode)
            self._ipc_paths.append(path)
        else:
            sock.bind(ep)
        self._socks.append(sock)
        self.loop.add_reader(socket_fd(sock), self._schedule)
        log.info("bus listening on %s", ep)

    def _close_sockets(self) -> None:
        for sock in self._socks:
            try:
                self.loop.remove_reader(socket_fd(sock))
            except (zmq.ZMQError, ValueError):
                pass
            sock.close(linger=0)
        self._socks.clear()
        for path in self._ipc_paths:
            path.unlink(missing_ok=True)
        self._ipc_paths.clear()

    @property
    def bound(self) -> list[str]:
        return [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in self._socks]

    # -- the pump -----------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._pump)

    def mark_dirty(self, sub: Subscriber) -> None:
        self._dirty.add(sub)
        self._schedule()

    def mark_acks(self, session: Session) -> None:
        self._ack_dirty.add(session)
        self._schedule()

    def _pump(self) -> None:
        self._scheduled = False
        for sock in self._socks:
            budget = PUMP_BYTES
            for _ in range(BATCH):
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    break
                self._handle(sock, frames)
                budget -= len(frames[-1])
                if budget <= 0:
                    break
        self._flush()
        for sock in self._socks:
            if readable(sock):
                self._schedule()
                break

    def _handle(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
        ident = frames[0]
        session = self.sessions.get(ident)
        if session is None:
            session = self.sessions[ident] = Session(self, sock, ident)
        session.last_seen = time.monotonic()
        try:
            if len(frames) != 2:
                raise ProtocolError("bad frame count", f"{len(frames) - 1} frames (expected 1)")
            data = frames[1]
            kind = data[0] if data else -1
            if kind == wire.EVENT:
                self._on_publish(session, data)
            elif kind == wire.BATCH:
                self._on_batch(session, data)
            elif kind == wire.CONTROL:
                self._on_control(session, data)
            else:
                raise ProtocolError("unknown frame kind", f"{kind}")
        except ProtocolError as exc:
            self._reject(session, exc)

    def _reject(self, session: Session, exc: ProtocolError, rid: Any = None) -> None:
        self.broker.count_rejected(exc.reason)
        self.broker.error("protocol", str(exc), client=session.name or session.ident.hex())
        log.debug("rejected frame from %s: %s", session.ident.hex(), exc)
        self._reply(session, {"rid": rid, "ok": False, "code": "protocol", "error": str(exc)})

    def _on_batch(self, session: Session, data: bytes) -> None:
        for item in wire.unpack_batch(data):
            try:
                if not item or item[0] != wire.EVENT:
                    raise ProtocolError("unknown frame kind", "a batch holds only events")
                self._on_publish(session, item)
            except ProtocolError as exc:  # one bad event does not cost the rest of the batch
                self._reject(session, exc)

    def _on_publish(self, session: Session, data: bytes) -> None:
        if not self.accepting:
            self.broker.drops["shutdown"] = self.broker.drops.get("shutdown", 0) + 1
            return
        if len(data) > self.max_frame_bytes:
            raise ProtocolError(
                "frame too large", f"{len(data)} bytes > bus.max_frame_bytes {self.max_frame_bytes}"
            )
        topic_b, header, body = wire.unpack_event(data)
        try:
            topic = topic_b.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid topic", "not UTF-8") from exc
        validate_topic(topic)
        hdr = check_header(header)
        ev = Event.received(topic, topic_b, header, body, hdr, data)
        if hdr.get("qos") == QoS.RELIABLE:
            if not session.greeted:
                # Acks count publishes from the client's hello on. A client we do not know
                # (we restarted, or swept its session) must resync first and re-send this.
                self._reply(session, {"op": "resync", "ok": False, "error": "hello first"})
                return
            self.broker.publish(ev, session.ack_callback())
        else:
            self.broker.publish(ev)

    def _on_control(self, session: Session, raw: bytes) -> None:
        msg = wire.unpack_control(raw)
        if not isinstance(msg.get("op"), str):
            raise ProtocolError("malformed control message", "expected a map with an 'op'")
        op, rid = msg["op"], msg.get("rid")
        try:
            handler = getattr(self, f"_op_{op}", None)
            if handler is not None:
                result = handler(session, msg)
                if rid is not None:
                    self._reply(session, {"rid": rid, "ok": True, **result})
            elif self.control is not None:
                self._spawn(self._run_control(session, msg))
            else:
                raise LoomdError(f"unknown op {op!r}")
        except ProtocolError as exc:
            self._reject(session, exc, rid)
        except LoomdError as exc:
            self._reply(session, {"rid": rid, "ok": False, "code": exc.code, "error": str(exc)})

    async def _run_control(self, session: Session, msg: dict[str, Any]) -> None:
        assert self.control is not None
        rid = msg.get("rid")
        try:
            result = await self.control(session, msg)
            reply = {"rid": rid, "ok": True, **result}
        except LoomdError as exc:
            reply = {"rid": rid, "ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # a control bug must not take the bus down
            log.exception("control op %r failed", msg.get("op"))
            reply = {
                "rid": rid,
                "ok": False,
                "code": "internal",
                "error": f"{type(exc).__name__}: {exc}",
            }
        self._reply(session, reply)
        self._flush()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- core control ops ---------------------------------------------------------------------
    def _op_hello(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        session.name = str(msg.get("name") or "")[:64]
        # A (re)greeting client re-sends every unacked publish: count acks afresh.
        session.greeted = True
        session.pub_fifo = deque()
        session.pub_acked = 0
        session.pub_errors = []
        self._ack_dirty.discard(session)
        return {
            "boot_id": self.boot_id,
            "version": __version__,
            "credit_window": self.credit_window,
            "max_frame_bytes": self.max_frame_bytes,
        }

    def _op_ping(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "subs": len(session.subs)}

    def _op_sub(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        csid, pattern, qos = msg.get("sid"), msg.get("pattern"), msg.get("qos")
        after = msg.get("after")
        if type(csid) is not int or not isinstance(pattern, str):
            raise ProtocolError(
                "malformed control message", "sub needs an int 'sid' and a 'pattern'"
            )
        if qos is not None and qos not in ("realtime", "batched", "reliable"):
            raise LoomdError(f"unknown qos {qos!r}: expected realtime, batched or reliable")
        if after is not None and type(after) is not int:
            raise ProtocolError("malformed control message", "'after' must be an int")
        old = session.subs.pop(csid, None)
        if old is not None:
            self._drop_sub(session, old)
        sub = self.broker.subscribe(
            pattern, qos, sink=session, owner=session.name or session.ident.hex(), after_seq=after
        )
        session.subs[csid] = sub
        self._sub_session[sub.sid] = (session, csid)
        if sub.qos is QoS.RELIABLE:
            window = msg.get("window")
            session.windows[sub.sid] = window if type(window) is int and window > 0 else 1024
            session.sent[sub.sid] = session.acked[sub.sid] = 0
        head = self.broker.journal.head if self.broker.journal is not None else 0
        return {"sid": csid, "qos": str(sub.qos), "head": head}

    def _op_unsub(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        sub = session.subs.pop(msg.get("sid"), None)  # type: ignore[arg-type]
        if sub is not None:
            self._drop_sub(session, sub)
        return {}

    def _op_ack(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        sub = session.subs.get(msg.get("sid"))  # type: ignore[arg-type]
        n = msg.get("n")
        if sub is not None and type(n) is int and n <= session.sent.get(sub.sid, 0):
            session.acked[sub.sid] = max(session.acked.get(sub.sid, 0), n)
            self.mark_dirty(sub)
        return {}

    def _op_bye(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        self.drop_session(session)
        return {}

    def _drop_sub(self, session: Session, sub: Subscriber) -> None:
        self.broker.unsubscribe(sub)
        self._sub_session.pop(sub.sid, None)
        self._dirty.discard(sub)
        for d in (session.sent, session.acked, session.windows):
            d.pop(sub.sid, None)

    def drop_session(self, session: Session) -> None:
        if not session.alive:
            return
        session.alive = False
        for sub in list(session.subs.values()):
            self._drop_sub(session, sub)
        session.subs.clear()
        self.sessions.pop(session.ident, None)
        self._ack_dirty.discard(session)

    # -- sending ------------------------------------------------------------------------------
    def _reply(self, session: Session, msg: dict[str, Any]) -> None:
        try:
            send_frames(session.sock, [session.ident, wire.pack_control(msg)])
        except zmq.ZMQError as exc:
            log.debug("reply to %s lost: %s", session.ident.hex(), exc)

    def _flush(self) -> None:
        if self._ack_dirty:
            sessions, self._ack_dirty = self._ack_dirty, set()
            for s in sessions:
                self._flush_acks(s)
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        backlog = False
        for sub in dirty:
            owner = self._sub_session.get(sub.sid)
            if owner is None or sub.closed:
                continue
            if not self._flush_sub(owner[0], owner[1], sub):
                self._dirty.add(sub)
                backlog = True
        if backlog and self._retry is None:
            self._retry = self.loop.call_later(RETRY_S, self._on_retry)

    def _on_retry(self) -> None:
        self._retry = None
        self._schedule()

    def _flush_sub(self, session: Session, csid: int, sub: Subscriber) -> bool:
        """Send what the subscription has; False if the client's pipe is full (retry later)."""
        reliable = sub.qos is QoS.RELIABLE
        room = 1 << 30
        if reliable:
            room = session.windows[sub.sid] - (session.sent[sub.sid] - session.acked[sub.sid])
            if room <= 0:
                return True  # the client's ack re-marks it dirty
        sock, ident = session.sock, session.ident
        hist = self.latency
        while room > 0 and sub.pending():
            items = sub.take(min(room, DELIVERY_BATCH))
            frames = wire.deliveries(items, csid)
            start = 0
            while start < len(frames):  # split so one message stays under BATCH_BYTES
                end, size = start, 0
                while end < len(frames) and (
                    end == start or size + len(frames[end]) <= BATCH_BYTES
                ):
                    size += len(frames[end])
                    end += 1
                chunk = frames[start:end]
                try:
                    send_frames(
                        sock, [ident, chunk[0] if len(chunk) == 1 else wire.pack_batch(chunk)]
                    )
                except zmq.Again:
                    sub.unpop(items[start:])
                    return False
                except zmq.ZMQError as exc:
                    if exc.errno == errno.EHOSTUNREACH:  # the client is gone
                        sub.unpop(items[start:])
                        self.drop_session(session)
                        return True
                    raise
                if reliable:
                    session.sent[sub.sid] += end - start
                    room -= end - start
                start = end
            if hist is not None:
                now = time.time_ns()
                for _, ev in items[:: max(1, len(items) // 16)]:  # up to 16 samples a batch
                    hist(now - ev.ts)
        return True

    def _flush_acks(self, session: Session) -> None:
        fifo = session.pub_fifo
        n0 = session.pub_acked
        while fifo and fifo[0][1]:
            err = fifo.popleft()[0]
            session.pub_acked += 1
            if err is not None:
                session.pub_errors.append((session.pub_acked, err))
        if session.pub_acked != n0 and session.alive:
            msg: dict[str, Any] = {"op": "ack", "n": session.pub_acked}
            if session.pub_errors:
                msg["errors"] = session.pub_errors
                session.pub_errors = []
            self._reply(session, msg)

    # -- housekeeping -------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.client_timeout_s / 3))
            cutoff = time.monotonic() - self.client_timeout_s
            for session in [s for s in self.sessions.values() if s.last_seen < cutoff]:
                log.info(
                    "client %s silent for %.0f s: dropped",
                    session.name or session.ident.hex(),
                    self.client_timeout_s,
                )
                self.drop_session(session)
                self.broker.error(
                    "client_timeout", f"client {session.name or session.ident.hex()} timed out"
                )

    def stats(self) -> dict[str, Any]:
        return {"clients": len(self.sessions), "endpoints": self.bound}
