"""The daemon's socket side: one ZeroMQ ROUTER per endpoint, one Session per client.

Sockets are drained in batches from a single loop callback (`_pump`) driven by the
socket's file descriptor: ZeroMQ's FD is edge-triggered, so after every round the
pump re-checks `EVENTS` and reschedules itself instead of waiting for a new edge.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq

from loomd.bus import wire
from loomd.bus.access import AccessOps, IdentityQuota, seed_routing_ids
from loomd.bus.acl import CALLER, Acl
from loomd.bus.broker import Broker
from loomd.bus.conns import ConnectionGuard, CurveSetup
from loomd.bus.envelope import Event, QoS, check_header
from loomd.bus.ops import CoreOps
from loomd.bus.session import Session
from loomd.bus.subscriber import Subscriber
from loomd.bus.topics import validate_topic
from loomd.bus.zmqio import readable, recv_message, send_frames, socket_fd
from loomd.errors import LoomdError, ProtocolError
from loomd.messages import ErrorCode

log = logging.getLogger(__name__)

BATCH = 512  # messages per socket per pump round...
PUMP_BYTES = 256 * 1024  # ...or this many bytes (batches hold many events): bounds loop lag
# Work per pump round: a client's frames that would take longer wait in its inbox (in
# order) for the next round, so one client's expensive publishes (a batch of 50 events,
# each matched against thousands of patterns) cannot hold the loop for everyone else.
PUMP_SLICE_S = 0.005
DELIVERY_BATCH = 256  # deliveries packed into one frame per send...
BATCH_BYTES = 64 * 1024  # ...up to this size
SNDHWM = 100  # messages per client pipe, each way: with BATCH_BYTES, ~6.4 MB per client
# A client whose pipe is full is retried after RETRY_MIN_S while it drains (some sends
# went through), after a delay that doubles up to RETRY_MAX_S while it does not, and
# at once when it sends anything (an ack or a ping means it is reading again). A ROUTER
# has no per-peer "writable" signal to wait on; the back-off keeps a deaf client from
# costing a busy loop (it was a 2 ms poll: ~18 % CPU of an idle daemon).
RETRY_MIN_S = 0.002
RETRY_MAX_S = 0.1
HARD_LIMIT_FACTOR = 4  # libzmq disconnects peers above this multiple of max_frame_bytes
FLUSH_BUDGET = 4096  # deliveries per flush round: then inbound I/O gets its turn (loop lag)
PEER_CHECK_GAP_S = 0.05  # an event frame after this much silence has its peer checked

ControlHandler = Callable[[Session | None, dict[str, Any]], Awaitable[dict[str, Any]]]


class BusServer(AccessOps, CoreOps):
    def __init__(
        self,
        broker: Broker,
        endpoints: list[str],
        *,
        max_frame_bytes: int = 1 << 20,
        socket_mode: int = 0o660,
        client_timeout_s: float = 15.0,
        credit_window: int = wire.DEFAULT_CREDIT_WINDOW,
        max_subscriptions: int = 256,
        max_clients: int = 1000,
        max_clients_per_uid: int = 256,
        max_subscriptions_per_identity: int = 1024,
        max_match_cost: tuple[int, int] = (16384, 65536),  # per client, per identity
        pending_bytes: int = 16 << 20,
        curve: CurveSetup | None = None,
        control: ControlHandler | None = None,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        acl: Acl | None = None,
    ) -> None:
        self.broker = broker
        self.acl = acl or Acl()
        self.max_match_cost, ident = max_match_cost
        self.quota = IdentityQuota(max_clients_per_uid, max_subscriptions_per_identity, ident)
        self._unix: set[int] = set()  # id() of the ipc sockets: peers have credentials
        self.endpoints = endpoints
        self.max_frame_bytes = max_frame_bytes
        self.socket_mode = socket_mode
        self.client_timeout_s = client_timeout_s
        self.credit_window = credit_window
        self.max_subscriptions = max_subscriptions
        self.pending_bytes = pending_bytes
        self.curve = curve
        self.control = control
        self.conns = ConnectionGuard(self, max_clients, max_clients_per_uid)
        self.refused: dict[str, int] = {}  # quota refusals, by quota
        self._numbers = itertools.count(1)
        self.ctx = ctx or zmq.Context.instance()
        self.loop = broker.loop
        self.boot_id = os.urandom(8).hex()
        self.sessions: dict[bytes, Session] = {}
        self._socks: list[zmq.Socket[bytes]] = []
        self._ipc_paths: list[Path] = []
        self._dirty: set[Subscriber] = set()
        self._ack_dirty: set[Session] = set()
        self._ctl_held: set[Session] = set()  # sessions with control replies held back
        self._scheduled = False
        self._inboxes: dict[Session, None] = {}  # sessions with frames put off, in order
        self._slice_end = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._retry_at = 0.0
        self._flush_left = FLUSH_BUDGET
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
        seed_routing_ids()
        try:
            for ep in self.endpoints:
                self._bind(ep)
        except BaseException:
            self._close_sockets()
            raise
        self._sweeper = asyncio.create_task(self._sweep(), name="loomd.bus.sweeper")
        return self

    def refuse(self, quota: str) -> None:
        self.refused[quota] = self.refused.get(quota, 0) + 1

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
        self.conns.close()

    def _bind(self, ep: str) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.RCVHWM, SNDHWM)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes * HARD_LIMIT_FACTOR)
        if ep.startswith("tcp://") and self.curve is not None:
            self.curve.apply(sock)
        self.conns.watch(sock)
        if ep.startswith("ipc://"):
            path = Path(ep[len("ipc://") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            sock.bind(ep)
            self._unix.add(id(sock))
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
            self.conns.unwatch(sock)
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
        # acks and replies that became due since the last round (a journal commit landed)
        # go out before this round's intake: they are cheap, and one client's flood must
        # not add its slices to another client's durable ack
        self._flush_control()
        # put-off work first (one slice), then what is new (another): every round reads
        # each socket, so a cheap ping behind an expensive client waits a slice or two
        self._slice_end = time.perf_counter() + PUMP_SLICE_S
        if self._inboxes:
            self._drain_inboxes(self._slice_end)
        self._slice_end = time.perf_counter() + PUMP_SLICE_S
        for sock in self._socks:
            budget = PUMP_BYTES
            for _ in range(BATCH):
                try:
                    frames, first = recv_message(sock)
                except zmq.Again:
                    break
                self._handle(sock, frames, first)
                budget -= len(frames[-1])
                if budget <= 0 or time.perf_counter() > self._slice_end:
                    break
        self._flush()
        for sock in self._socks:
            if self._inboxes or readable(sock):
                self._schedule()
                break

    def _drain_inboxes(self, until: float) -> None:
        for session in list(self._inboxes):
            del self._inboxes[session]
            while session.alive and session.inbox:
                self._dispatch(session, session.take_inbox())  # one at least per turn
                if time.perf_counter() > until:
                    break
            if session.alive and session.inbox:
                self._inboxes[session] = None  # its turn is over: to the back of the line
                return
            session.inbox.clear()

    def _put_off(self, session: Session, frames: list[bytes], *, first: bool = False) -> bool:
        if ok := session.put_off(frames, first=first):
            self._inboxes[session] = None
        return ok

    def _handle(self, sock: zmq.Socket[bytes], frames: list[bytes], first: Any = None) -> None:
        ident = frames[0]
        session = self.sessions.get(ident)
        if session is None:
            session = self._new_session(sock, ident, first)
            if session is None:
                return
        else:
            now = time.monotonic()
            data = frames[-1]
            # A vanished client's routing id presented again by someone else: the peer
            # (pid on the unix socket, key over Curve) must be the one that opened it.
            # Checked on control frames and after a silence (a flood pays nothing).
            gap = now - session.last_seen > PEER_CHECK_GAP_S
            if (gap or (data and data[0] == wire.CONTROL)) and not self.same_peer(session, first):
                return
        session.last_seen = time.monotonic()
        if session.retry_s:  # it talks, so it reads: try its pipe again now
            session.retry_s = session.blocked_until = 0.0
            self._dirty.update(session.subs.values())
        if session.ctl_backlog:
            self._ctl_held.add(session)
        try:
            if len(frames) != 2:
                raise ProtocolError("bad frame count", f"{len(frames) - 1} frames (expected 1)")
            data = frames[1]
            # size first, for every kind (control frames and frames before hello too):
            # nothing below does work on more than max_frame_bytes
            if len(data) > self.max_frame_bytes:
                self._drain_one(session)  # what it sent before first: acks stay in order
                self._too_large(session, data)
                return
        except ProtocolError as exc:
            self._reject(session, exc)
            return
        if session.inbox and not self._put_off(session, [data]):
            self._drain_one(session)  # full: what it sent before runs first (order is kept)
        if not session.inbox:
            self._dispatch(session, data)

    def _drain_one(self, session: Session) -> None:
        while session.inbox:
            self._dispatch(session, session.take_inbox())

    def _dispatch(self, session: Session, data: bytes) -> None:
        try:
            kind = data[0] if data else -1
            if kind == wire.EVENT:
                try:
                    self._on_publish(session, data)
                except ProtocolError as exc:
                    self._reject_event(session, data, exc)
            elif kind == wire.BATCH:
                self._on_batch(session, data)
            elif kind == wire.CONTROL:
                self._on_control(session, data)
            else:
                raise ProtocolError("unknown frame kind", f"{kind}")
        except ProtocolError as exc:
            self._reject(session, exc)

    def _on_batch(self, session: Session, data: bytes) -> None:
        items = wire.unpack_batch(data)
        for i, item in enumerate(items):
            late = i and time.perf_counter() > self._slice_end  # the rest: a later round
            if late and self._put_off(session, items[i:], first=True):
                return
            if not item or item[0] != wire.EVENT:
                self._reject(
                    session, ProtocolError("unknown frame kind", "a batch holds only events")
                )
                continue
            try:
                self._on_publish(session, item)
            except ProtocolError as exc:  # one bad event does not cost the rest of the batch
                self._reject_event(session, item, exc)

    def _on_publish(self, session: Session, data: bytes) -> None:
        if not self.accepting:
            self.broker.drops["shutdown"] = self.broker.drops.get("shutdown", 0) + 1
            return
        topic_b, header, body = wire.unpack_event(data)
        try:
            topic = topic_b.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid topic", "not UTF-8") from exc
        validate_topic(topic)
        grants = session.caller.grants
        if not grants.everything and not (grants.verdicts.get(topic) or grants.may_publish(topic)):
            self.forbid_event(session, topic, header)
            return
        hdr = check_header(header)
        ev = Event.received(topic, topic_b, header, body, hdr, data)
        ev.caller = session.caller
        if hdr.get("qos", QoS.RELIABLE) == QoS.RELIABLE:
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
        if rid is not None and not (type(rid) is int and 0 <= rid <= wire.MAX_I64):
            raise ProtocolError("malformed control message", "'rid' must be an int in 0..2**63-1")
        try:
            handler = getattr(self, f"_op_{op}", None)
            if handler is not None:
                result = handler(session, msg)
                if rid is not None:
                    self._reply(session, {"rid": rid, "ok": True, **result})
            elif self.control is not None:
                if self.check_control(session, op, rid):
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
        CALLER.set(session.caller)  # this task's own context: commands see who asks
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
        # Not _flush() here: this send, outside the pump, can swallow the socket's
        # edge-triggered fd notification of input that arrived meanwhile; the pump
        # flushes and then re-checks the sockets for input.
        self._schedule()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_evicted(self, session: Session, sub: Subscriber, reason: str) -> None:
        """The broker shed one of this client's subscriptions: forget it and say so (the
        SDK resubscribes: from the journal for durable ones, live for the rest)."""
        entry = self._sub_session.get(sub.sid)
        if entry is None:
            return
        csid = entry[1]
        session.evicted_at = time.monotonic()
        if session.subs.get(csid) is sub:
            del session.subs[csid]
        self._drop_sub(session, sub)
        lost = sum(n for r, n in sub.stats.dropped.items() if r == "evicted")
        self._reply(session, {"op": "evicted", "sid": csid, "reason": reason, "lost": lost})
        self._schedule()  # sent from a broker timer too: the send can swallow the fd's edge

    def unsubscribe_forbidden(self, session: Session, csid: int) -> None:
        sub = session.subs.pop(csid, None)
        if sub is not None:
            self._drop_sub(session, sub)
            self._reply(session, {"op": "evicted", "sid": csid, "reason": "forbidden", "lost": 0})

    def _drop_sub(self, session: Session, sub: Subscriber) -> None:
        self.broker.unsubscribe(sub)
        if self._sub_session.pop(sub.sid, None) is not None:
            self.release_quota(session, sub)
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
        if self.sessions.pop(session.ident, None) is session:
            self.quota.session_dropped(session.caller.identity)
        self._ack_dirty.discard(session)
        self._ctl_held.discard(session)

    # -- sending ------------------------------------------------------------------------------
    def _reply(self, session: Session, msg: dict[str, Any]) -> None:
        """A reply or ack is never lost to a full pipe: held until the client reads."""
        state = session.send_control(msg)
        if state == "held":
            self._ctl_held.add(session)
            self._arm_retry(time.monotonic() + RETRY_MIN_S)
        elif state == "overflow":
            why = f"client {session.label} reads none of its replies"
            log.warning("%s: dropped", why)
            self.broker.error(ErrorCode.SLOW_CONSUMER, why)
            self.drop_session(session)

    def _flush_held(self) -> None:
        held, self._ctl_held = self._ctl_held, set()
        for session in held:
            before = len(session.ctl_backlog)
            if session.alive and not session.flush_control():
                self._ctl_held.add(session)
                moved = len(session.ctl_backlog) < before
                self._arm_retry(time.monotonic() + (RETRY_MIN_S if moved else RETRY_MAX_S))

    def _flush_control(self) -> None:
        if self._ctl_held:
            self._flush_held()
        if self._ack_dirty:
            sessions, self._ack_dirty = self._ack_dirty, set()
            for s in sessions:
                self._flush_acks(s)

    def _flush(self) -> None:
        self._flush_control()
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        now = time.monotonic()
        wake_at = None
        self._flush_left, end = FLUSH_BUDGET, time.perf_counter() + PUMP_SLICE_S
        for sub in dirty:
            if self._flush_left <= 0 or time.perf_counter() > end:  # the rest next round,
                self._flush_left = 0  # after the sockets are read (deliveries, or time)
                self._dirty.add(sub)
                continue
            owner = self._sub_session.get(sub.sid)
            if owner is None or sub.closed:
                continue
            session = owner[0]
            if session.blocked_until > now:  # its pipe was full: wait out the back-off
                self._dirty.add(sub)
            elif self._flush_sub(session, owner[1], sub):
                session.retry_s = 0.0
                continue
            else:  # the pipe is full now: back off (doubling while it does not drain)
                self._dirty.add(sub)
                if session.blocked_until <= now:
                    if session.progressed:
                        session.retry_s = RETRY_MIN_S
                    else:
                        session.retry_s = min(RETRY_MAX_S, max(RETRY_MIN_S, session.retry_s * 2))
                    session.blocked_until = now + session.retry_s
            session.progressed = False
            if wake_at is None or session.blocked_until < wake_at:
                wake_at = session.blocked_until
        if wake_at is not None:
            self._arm_retry(wake_at)
        if self._flush_left <= 0 and self._dirty:
            self._schedule()

    def _arm_retry(self, at: float) -> None:
        if self._retry is not None:
            if self._retry_at <= at:
                return
            self._retry.cancel()
        self._retry_at = at
        self._retry = self.loop.call_later(max(0.0, at - time.monotonic()), self._on_retry)

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
            if self._flush_left <= 0:
                self._dirty.add(sub)  # more next round
                return True
            items = sub.take(min(room, DELIVERY_BATCH))
            self._flush_left -= len(items)
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
                session.progressed = True
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
        msg = session.settled_ack()
        if msg is not None and session.alive:
            self._reply(session, msg)

    # -- housekeeping -------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.client_timeout_s / 3))
            cutoff = time.monotonic() - self.client_timeout_s
            for session in [s for s in self.sessions.values() if s.last_seen < cutoff]:
                log.info(
                    "client %s silent for %.0f s: dropped", session.label, self.client_timeout_s
                )
                self.drop_session(session)
                self.broker.error(ErrorCode.CLIENT_TIMEOUT, f"client {session.label} timed out")
