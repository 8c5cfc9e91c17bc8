"""The agent author's client: `async with loomd.sdk.connect() as bus: ...`.

One DEALER socket to the daemon. `ZMQ_IMMEDIATE` keeps nothing queued for a dead
connection, so after a daemon restart the client knows exactly what the new daemon
has not seen: it re-sends its subscriptions (durable reliable ones resume from the
last journal sequence it consumed) and its unacknowledged reliable publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
from collections import deque
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from loomd.bus import cbor, wire
from loomd.bus.api import Bus, SubSpec, reply_to
from loomd.bus.envelope import Event, QoS
from loomd.bus.topics import validate_pattern
from loomd.bus.zmqio import readable, recv_frame, send_frame, socket_fd, writable
from loomd.errors import LoomdError, NotRunning, ProtocolError, RemoteError, RequestTimeout
from loomd.heap import freeze_heap
from loomd.messages import BusStats
from loomd.sdk.endpoint import check_reachable, default_endpoint, to_endpoint
from loomd.sdk.replies import Replies
from loomd.sdk.subscription import Subscription

log = logging.getLogger(__name__)

RECV_BATCH = 1024
OUTBOX_MAX = 256  # events per outgoing batch frame
OUTBOX_BYTES = 64 * 1024
CTL_RETRY_S = 0.005  # a control message that found the pipe full is retried this often


class Client(Bus[Subscription]):
    def __init__(
        self,
        endpoint: str | None = None,
        *,
        name: str = "",
        timeout: float = 5.0,
        heartbeat_s: float = 1.0,
        reconnect_max_s: float = 2.0,
        local_queue: int = 10000,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: tuple[bytes, bytes, bytes] | None = None,
        freeze_gc: bool = False,
    ) -> None:
        """`curve`: (server public key, client public key, client secret key), Z85 as
        `zmq.auth.load_certificate` returns them, for a TCP endpoint with CurveZMQ; the
        client's public key must be in the daemon's authorized keys folder.
        `freeze_gc`: once connected, move what is alive then (imports, the start's objects)
        out of the cyclic collector's way, once per process (`loomd.heap.freeze_heap`): for a
        process that is one long-running agent (`run_agent` does it)."""
        self.endpoint = to_endpoint(endpoint or default_endpoint())
        self.name = name or f"sdk-{os.getpid()}"
        self.timeout = timeout
        self.heartbeat_s = heartbeat_s
        self.reconnect_max_s = reconnect_max_s
        self.local_queue = local_queue
        self.ctx = ctx or zmq.Context.instance()
        self.loop = asyncio.get_running_loop()
        self.boot_id: str | None = None
        self.curve = curve
        self.freeze_gc = freeze_gc
        self.credit_window = wire.DEFAULT_CREDIT_WINDOW
        self.max_frame_bytes = 1 << 20  # until the hello says
        self.secret = os.urandom(16)  # proves to the daemon that a session is ours
        self.connected = False
        self.reconnects = 0
        self.reconnected = asyncio.Event()  # set after each resync with a (new) daemon
        self.dropped = 0  # realtime publishes dropped locally (daemon away or pipe full)
        self._sock: zmq.Socket[bytes] | None = None
        self._fd = -1
        self._rids = itertools.count(1)
        self._sids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._subs: dict[int, Subscription] = {}
        self._unacked: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        self._unsent = 0  # tail of _unacked that could not be sent (daemon away)
        self._acked_base = 0  # ack counter value matching the head of _unacked
        self._credit: asyncio.Event = asyncio.Event()
        self._credit.set()
        self._scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._kick = asyncio.Event()
        self._holding = False  # during a resync: reliable publishes wait for the re-send
        self._need_resync = False  # the daemon does not know us (it said "resync")
        self._outbox: list[bytes] = []
        self._outbox_reliable = 0
        self._outbox_bytes = 0
        self._monitor: zmq.Socket[bytes] | None = None
        self._ctl_pending: deque[bytes] = deque(maxlen=1024)
        self._ctl_retry: asyncio.TimerHandle | None = None
        self._replies: Replies | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Client:
        check_reachable(self.endpoint)
        sock = self.ctx.socket(zmq.DEALER)
        # No ZMQ_IDENTITY: the daemon refuses client-chosen routing ids (another client
        # could squat them); libzmq assigns one per connection, and the session secret
        # below ties the session to this client.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        # HWMs count messages and a message is a batch of up to 64 KiB: ~6 MB each way
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.setsockopt(zmq.RCVHWM, 20000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.reconnect_max_s * 1000))
        # a frame of the daemon's is at most a batch of max_frame_bytes deliveries
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
        if self.curve is not None:
            server_key, public, secret = self.curve
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.connect(self.endpoint)
        self._sock = sock
        self._fd = socket_fd(sock)
        self.loop.add_reader(self._fd, self._schedule)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self.loop.add_reader(socket_fd(self._monitor), self._on_monitor)
        try:
            hello = await self._hello(first=True)
        except BaseException:
            self._close_socket()
            raise
        self.connected = True
        self._on_hello(hello)
        if self.freeze_gc:
            freeze_heap()
        task = asyncio.create_task(self._heartbeat(), name="loomd.sdk.heartbeat")
        self._tasks.add(task)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.connected:
            self._send_ctl({"op": "bye"})
        for sub in list(self._subs.values()):
            sub.closed = True
            if sub._waiter is not None and not sub._waiter.done():
                sub._waiter.set_result(None)
        for _, fut in self._unacked:
            if not fut.done():
                fut.set_exception(LoomdError("client closed before the daemon acknowledged"))
                fut.exception()  # mark retrieved: nobody may be awaiting it
        self._close_socket()

    def _close_socket(self) -> None:
        if self._ctl_retry is not None:
            self._ctl_retry.cancel()
            self._ctl_retry = None
        if self._monitor is not None:
            with contextlib.suppress(ValueError, OSError, zmq.ZMQError):
                self.loop.remove_reader(socket_fd(self._monitor))
            assert self._sock is not None
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self._fd)
            self._sock.close(linger=0)
            self._sock = None

    async def _writable(self, timeout: float) -> bool:
        """Wait (bounded) until the connection is up: with ZMQ_IMMEDIATE a send before
        that would fail. libzmq has no awaitable 'connected' signal, so poll EVENTS."""
        assert self._sock is not None
        deadline = self.loop.time() + timeout
        delay = 0.001
        while not writable(self._sock):
            if self.loop.time() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    async def _hello(self, first: bool = False) -> dict[str, Any]:
        if not await self._writable(self.timeout):
            raise (NotRunning if first else RequestTimeout)(
                f"loomd did not accept a connection on {self.endpoint} within {self.timeout:g} s"
            )
        try:
            return await self.call("hello", name=self.name, secret=self.secret)
        except RequestTimeout as exc:
            if first:
                raise NotRunning(
                    f"loomd did not answer on {self.endpoint} within {self.timeout:g} s"
                ) from exc
            raise

    def _on_hello(self, hello: dict[str, Any]) -> None:
        self.boot_id = str(hello["boot_id"])
        window = hello.get("credit_window")
        if type(window) is int and 0 < window <= 100_000:
            self.credit_window = window
        size = hello.get("max_frame_bytes")
        if type(size) is int and size > 0:
            self.max_frame_bytes = size

    # -- publishing ---------------------------------------------------------------------------
    def _deliver(self, ev: Event, reliable: bool, wait: bool) -> Awaitable[None] | None:
        """Realtime/batched: never waits (dropped and counted if the daemon is away).
        Reliable: waits for a credit, then (wait=True) for the daemon's durable ack. A frame
        over the daemon's size limit raises here, before anything is sent."""
        frame = ev.to_wire()
        if len(frame) > self.max_frame_bytes:
            raise ProtocolError(
                "frame too large",
                f"{len(frame)} bytes > the daemon's max_frame_bytes {self.max_frame_bytes}",
            )
        if not reliable:
            self._queue_frame(frame, reliable=False)
            return None
        return self._send_reliable(frame, wait)

    async def _send_reliable(self, frame: bytes, wait: bool) -> None:
        while len(self._unacked) >= self.credit_window:
            self._credit.clear()
            await self._credit.wait()
        fut: asyncio.Future[None] = self.loop.create_future()
        self._unacked.append((frame, fut))
        if self._unsent or self._holding:
            self._unsent += 1
        else:
            self._queue_frame(frame, reliable=True)
        if wait:
            await fut

    def _queue_frame(self, frame: bytes, reliable: bool) -> None:
        """Events leave in batches: everything published in one loop turn goes in one frame."""
        if self._outbox and (
            self._outbox_bytes + 4 * len(self._outbox) + len(frame) + 5 > self.max_frame_bytes
        ):
            self._flush_outbox()  # a batch frame must stay under the daemon's size limit
        if not self._outbox:
            self.loop.call_soon(self._flush_outbox)
        self._outbox.append(frame)
        self._outbox_reliable += reliable
        self._outbox_bytes += len(frame)
        if len(self._outbox) >= OUTBOX_MAX or self._outbox_bytes >= OUTBOX_BYTES:
            self._flush_outbox()

    def _flush_outbox(self) -> None:
        box = self._outbox
        if not box or self._sock is None:
            return
        reliable = self._outbox_reliable
        self._outbox, self._outbox_reliable, self._outbox_bytes = [], 0, 0
        frame = box[0] if len(box) == 1 else wire.pack_batch(box)
        if not self._send_event(frame):
            self.dropped += len(box) - reliable  # realtime: the publisher never waits
            self._unsent += reliable  # reliable: re-sent in order once the daemon is back

    def _send_event(self, frame: bytes) -> bool:
        """Send one frame without blocking; False if the pipe is full or the daemon away
        (the caller decides: realtime counts a drop, reliable keeps it unsent)."""
        assert self._sock is not None
        try:
            send_frame(self._sock, frame)
        except zmq.Again:
            return False
        self._schedule()  # a send can swallow the fd's edge: re-check for input
        return True

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every reliable publish so far is acknowledged."""
        futs = [f for _, f in self._unacked]
        if futs:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*futs)

    # -- subscribing --------------------------------------------------------------------------
    def _open(self, spec: SubSpec) -> Subscription:
        validate_pattern(spec.pattern)
        max_age_ms = spec.max_age_ms
        if max_age_ms is not None and (type(max_age_ms) is not int or max_age_ms < 1):
            raise ProtocolError("invalid max_age_ms", f"{max_age_ms!r}: expected an int >= 1")
        sub = Subscription(
            self,
            next(self._sids),
            spec.pattern,
            QoS(spec.qos) if spec.qos else None,
            spec.window or self.credit_window,
            spec.since,
            max_age_ms,
            spec.classes,
        )
        self._subs[sub.sid] = sub
        self._call_nowait(sub._sub_msg(), sub._on_reply)
        return sub

    # -- request / reply ----------------------------------------------------------------------
    async def request(
        self, topic: str, payload: Any = None, *, timeout: float = 5.0, **kw: Any
    ) -> Event:
        """The first reply to a publish on `topic`, on this client's standing reply topic
        (`Replies`): no subscribe and unsubscribe per request."""
        replies = self._replies
        if replies is None:
            replies = self._replies = Replies(self)
        replies.open()  # a subscribe goes out before the publish, on the same socket
        ev = await self.publish(
            topic, payload, thread_id=os.urandom(16), reply_to=replies.topic, wait=False, **kw
        )
        return await replies.wait(ev.id, topic, timeout)

    async def reply(self, request: Event, payload: Any = None, **kw: Any) -> Event:
        return await reply_to(self, request, payload, **kw)

    # -- control ------------------------------------------------------------------------------
    async def call(self, op: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send a control request and return the daemon's answer (raises RemoteError)."""
        fut = self._call_nowait({"op": op, **args})
        reply = await self._wait(fut, timeout or self.timeout, op)
        if not reply.get("ok"):
            raise RemoteError(str(reply.get("code", "error")), str(reply.get("error", "")))
        return reply

    async def status(self) -> dict[str, Any]:
        return await self.call("status")

    async def listeners(self, topic: str) -> int:
        return int((await self.call("bus.listeners", args=[topic]))["listeners"])

    async def stats(self) -> BusStats:
        return BusStats.from_payload((await self.call("bus.stats"))["stats"])

    def _call_nowait(self, msg: dict[str, Any], cb: Any = None) -> asyncio.Future[dict[str, Any]]:
        rid = next(self._rids)
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._calls[rid] = fut
        if cb is not None:
            fut.add_done_callback(lambda f: f.cancelled() or f.exception() or cb(f.result()))
        self._send_ctl({**msg, "rid": rid})
        return fut

    async def _wait(
        self, fut: asyncio.Future[dict[str, Any]], timeout: float, what: str
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            fut.cancel()
            self._calls = {r: f for r, f in self._calls.items() if not f.done()}
            raise RequestTimeout(f"loomd did not answer {what!r} within {timeout:g} s") from None

    def _send_ctl(self, msg: dict[str, Any]) -> bool:
        if self._sock is None:
            return False
        self._flush_outbox()  # control messages never overtake earlier publishes
        frame = wire.pack_control(msg)
        if not self._ctl_pending and self._send_event(frame):
            return True
        # The pipe is full (our own realtime flood, say): a control message is not dropped
        # like a realtime event would be; it waits, in order, and goes out when there is room.
        self._ctl_pending.append(frame)
        if self._ctl_retry is None:
            self._ctl_retry = self.loop.call_later(CTL_RETRY_S, self._send_ctl_pending)
        return False

    def _send_ctl_pending(self) -> None:
        self._ctl_retry = None
        pending = self._ctl_pending
        while pending and self._sock is not None and self._send_event(pending[0]):
            pending.popleft()
        if pending and self._sock is not None:
            self._ctl_retry = self.loop.call_later(CTL_RETRY_S, self._send_ctl_pending)

    # -- receiving ----------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(RECV_BATCH):
            try:
                frame = recv_frame(sock)
            except zmq.Again:
                break
            try:
                self._handle(frame)
            except Exception:  # one bad frame from a newer daemon must not kill the client
                log.exception("bad frame from loomd ignored")
        if readable(sock):
            self._schedule()

    def _handle(self, frame: bytes) -> None:
        kind = frame[0] if frame else -1
        if kind == wire.BATCH or kind == wire.DELIVERY:
            subs = self._subs
            for sid, seq, topic, header, body in wire.deliveries_in(frame):
                sub = subs.get(sid)
                if sub is not None:
                    sub._deliver(seq, Event.from_frames(topic, header, body))
        elif kind == wire.CONTROL:
            msg = wire.unpack_control(frame, cbor.CONTROL_OUT)
            rid = msg.get("rid")
            if rid is not None:
                fut = self._calls.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif msg.get("op") == "ack":
                self._on_ack(int(msg["n"]), msg.get("errors") or [])
            elif msg.get("op") == "resync":
                self._need_resync = True
                self._kick.set()
            elif msg.get("op") == "evicted":
                self._on_evicted(msg)
            elif not msg.get("ok", True):
                log.warning("loomd: %s", msg.get("error"))

    def _on_evicted(self, msg: dict[str, Any]) -> None:
        """The daemon shed a subscription of ours that fell too far behind: resubscribe
        (a reliable one resumes from the last journal seq consumed; what the daemon could
        not keep is counted in `dropped`)."""
        sub = self._subs.get(msg.get("sid"))  # type: ignore[arg-type]
        if sub is None or sub.closed:
            return
        if msg.get("reason") == "forbidden":  # the ACL changed: no longer ours to hold
            why = f"subscription {sub.pattern!r} closed: the ACL no longer allows it"
            sub._on_reply({"ok": False, "code": "forbidden", "error": why})
            return
        lost = msg.get("lost")
        sub.evictions += 1
        sub.dropped += lost if type(lost) is int and lost > 0 else 0
        log.warning(
            "loomd evicted subscription %r (%s): resubscribing", sub.pattern, msg.get("reason")
        )
        # Not at once: a consumer that is still stalled would only be shed again (and each
        # time cost the daemon a replay). 0.2 s, doubling per eviction up to 5 s.
        delay = min(5.0, 0.2 * 2 ** min(sub.evictions - 1, 5))
        self.loop.call_later(delay, self._resubscribe, sub)

    def _resubscribe(self, sub: Subscription) -> None:
        if sub.closed or self._closing or self._subs.get(sub.sid) is not sub:
            return
        sub._resubscribed()
        self._call_nowait(sub._sub_msg(), sub._on_reply)

    def _on_ack(self, n: int, errors: list[Any]) -> None:
        failed = {int(i): str(code) for i, code in errors}
        while self._acked_base < n and self._unacked:
            self._acked_base += 1
            _, fut = self._unacked.popleft()
            if not fut.done():
                code = failed.get(self._acked_base)
                if code is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(RemoteError(code, f"publish rejected: {code}"))
        if self._unsent:
            self._send_unsent()  # the pipe had been full; acks mean it is draining
        if len(self._unacked) < self.credit_window:
            self._credit.set()

    # -- liveness and resync ------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Ping the daemon: keeps our session alive and notices a restart (new boot id) or
        a session the daemon forgot (it reports fewer subscriptions than we hold). A slow
        answer alone (a flood queued ahead of the ping) never triggers a resync."""
        misses = 0
        while True:
            delay = self.heartbeat_s
            if misses:
                # capped exponential backoff with jitter, so a fleet of clients spreads out
                delay = min(self.reconnect_max_s, self.heartbeat_s * 0.25 * 2**misses)
                delay *= random.uniform(0.5, 1.0)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._kick.wait()  # the monitor saw a (re)connect: ping now
            fut = self._call_nowait({"op": "ping"})
            try:
                reply = await self._wait(fut, max(self.heartbeat_s * 3, 1.0), "ping")
            except RequestTimeout:
                misses += 1
                if self.connected:
                    log.warning(
                        "loomd at %s is not answering; will resync when it does", self.endpoint
                    )
                    self.connected = False
                continue
            misses = 0
            # subscriptions the daemon confirmed: replies come in order, so every one asked
            # before this ping has its answer by now; one asked after it (a request's reply
            # topic, made meanwhile) is not counted by the daemon yet and must not be here
            # either (counting it made a spurious resync that lost in-flight replies)
            active = sum(1 for s in self._subs.values() if not s.closed and s._ready.done())
            if (
                self._need_resync
                or reply.get("boot_id") != self.boot_id
                or int(reply.get("subs", active)) < active
            ):
                await self._resync(reply)
            else:
                self.connected = True
                if self._unsent:
                    self._send_unsent()

    def _send_unsent(self) -> None:
        """Retry reliable publishes that found the pipe full, oldest first."""
        if self._holding:
            return  # the resync re-sends everything in order
        self._send_unsent_now()

    def _send_unsent_now(self) -> None:
        # Stop at the first refusal: the daemon counts acks in send order, so what is
        # sent must stay a prefix of _unacked and the unsent ones its tail.
        tail = list(self._unacked)[len(self._unacked) - self._unsent :]
        for frame, _ in tail:
            if not self._send_event(frame):
                break
            self._unsent -= 1

    def _on_monitor(self) -> None:
        mon = self._monitor
        if mon is None:
            return
        while True:
            try:
                msg = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._kick.set()
            elif msg["event"] == zmq.EVENT_DISCONNECTED and self.connected:
                log.info("connection to loomd at %s lost", self.endpoint)
                self.connected = False

    async def _resync(self, ping: dict[str, Any]) -> None:
        self._holding = True
        try:
            await self._resync_held()
        finally:
            self._holding = False

    async def _resync_held(self) -> None:
        self._need_resync = False
        # Unsent realtime events are stale by now; unacked reliable ones are re-sent below.
        self.dropped += len(self._outbox) - self._outbox_reliable
        self._outbox, self._outbox_reliable, self._outbox_bytes = [], 0, 0
        hello = await self._hello()
        self._on_hello(hello)
        for sub in self._subs.values():
            sub._resubscribed()
            self._call_nowait(sub._sub_msg(), sub._on_reply)
        # The new daemon has seen none of our unacked publishes: send them again, in order.
        self._acked_base = 0
        self._unsent = len(self._unacked)
        self._send_unsent_now()
        self.connected = True
        self.reconnects += 1
        self.reconnected.set()
        log.info("reconnected to loomd at %s (boot %s)", self.endpoint, self.boot_id)
