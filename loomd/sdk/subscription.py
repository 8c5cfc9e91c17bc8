"""One subscription of the SDK client: an async iterator of events with its own credit
window, acks, resume point (durable topics) and resubscription after an eviction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loomd.bus.envelope import Event, QoS
from loomd.errors import RemoteError

if TYPE_CHECKING:
    from loomd.sdk.client import Client

__all__ = ["Subscription"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Subscription:
    """An async iterator of events for one pattern, created by `Client.subscribe`."""

    client: Client
    sid: int
    pattern: str
    qos: QoS | None  # None: the daemon's default for the pattern (its reply names it)
    window: int
    last_seq: int | None  # highest durable journal seq consumed (resume point): `since` first
    max_age_ms: int | None = None
    classes: frozenset[str] | None = None  # the publish classes it takes (None: all)

    def __post_init__(self) -> None:
        self._max_age_ns = self.max_age_ms * 1_000_000 if self.max_age_ms else 0
        self.too_old = 0  # dropped here for max_age_ms (also counted in `dropped`)
        self.evictions = 0  # times the daemon shed it as a slow consumer (then resubscribed)
        self.gen = 0  # bumped at every (re)subscribe: acks count only this generation
        self.received = 0
        self.consumed = 0
        self.acked = 0
        self.dropped = 0
        self.closed = False
        self._queue: deque[tuple[int, int, Event]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[dict[str, Any]] = self.client.loop.create_future()

    def _sub_msg(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "op": "sub",
            "sid": self.sid,
            "pattern": self.pattern,
            "window": self.window,
        }
        if self.qos is not None:
            msg["qos"] = str(self.qos)
        if self.last_seq is not None:
            msg["after"] = self.last_seq
        if self.max_age_ms is not None:
            msg["max_age_ms"] = self.max_age_ms
        if self.classes is not None:
            msg["classes"] = sorted(self.classes)
        return msg

    def _resubscribed(self) -> None:
        self.gen += 1
        self.received = self.consumed = self.acked = 0
        # durable items will be replayed from last_seq: drop the local copies
        self._queue = deque(item for item in self._queue if item[1] <= 0)

    def _on_reply(self, reply: dict[str, Any]) -> None:
        if not reply.get("ok", False):
            # refused (a quota, a bad pattern): the subscription never existed
            err = RemoteError(str(reply.get("code", "error")), str(reply.get("error", "")))
            self.closed = True
            self.client._subs.pop(self.sid, None)
            if not self._ready.done():
                self._ready.set_exception(err)
                self._ready.exception()  # retrieved: the caller may never call ready()
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            log.warning("subscription %r refused: %s", self.pattern, err)
            return
        if self.qos is None:
            self.qos = QoS(reply.get("qos", "realtime"))
        if self.qos is QoS.RELIABLE and self.last_seq is None:
            self.last_seq = int(reply.get("head", 0))
        if not self._ready.done():
            self._ready.set_result(reply)

    def _deliver(self, seq: int, ev: Event) -> None:
        self.received += 1
        q = self._queue
        q.append((self.gen, seq, ev))
        if self.qos is not QoS.RELIABLE and len(q) > self.client.local_queue:
            q.popleft()
            self.dropped += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def ready(self) -> Subscription:
        """Wait until the daemon confirmed the subscription."""
        await self.client._wait(self._ready, self.client.timeout, "subscribe")
        return self

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            while not self._queue:
                if self.closed:
                    raise StopAsyncIteration
                self._waiter = self.client.loop.create_future()
                await self._waiter
                self._waiter = None
            ev = self._pop()
            if ev is not None:
                return ev

    def _pop(self) -> Event | None:
        """Consume the first queued event; None if it was too old (dropped, counted)."""
        gen, seq, ev = self._queue.popleft()
        if self._max_age_ns and time.time_ns() - ev.ts > self._max_age_ns:
            # max_age_ms holds to the application: an event that grew too old in the pipes
            # after the daemon let it go is dropped here too, and counted
            self.dropped += 1
            self.too_old += 1
            return None
        if seq > 0:
            self.last_seq = seq
        if gen == self.gen:
            self.consumed += 1
            # Ack every quarter window: the daemon keeps sending while less than a full
            # window is unacknowledged, so this never stalls, and costs 1 message per W/4.
            if self.qos is QoS.RELIABLE and self.consumed - self.acked >= max(1, self.window // 4):
                self.acked = self.consumed
                self.client._send_ctl({"op": "ack", "sid": self.sid, "n": self.consumed})
        return ev

    async def get(self, timeout: float | None = None) -> Event:
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def batch(self, n: int = 256) -> list[Event]:
        """Wait for an event, then return it with those queued behind it, up to `n`."""
        try:
            out = [await self.__anext__()]
        except StopAsyncIteration:
            return []
        while len(out) < n and self._queue:
            ev = self._pop()
            if ev is not None:
                out.append(ev)
        return out

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.client._subs.pop(self.sid, None)
        self.client._send_ctl({"op": "unsub", "sid": self.sid})
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aenter__(self) -> Subscription:
        return await self.ready()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
