"""One subscription in the broker: a pattern, a QoS class and its queue, with its own
counters, credit window, replay position and budget; in process it is an async iterator,
for a socket client it wakes the client's session (its sink)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from loomd.bus.envelope import Event, QoS
from loomd.bus.qos import BatchedQueue, RealtimeQueue, ReliableQueue
from loomd.errors import LoomdError

if TYPE_CHECKING:
    from loomd.bus.broker import Broker

__all__ = ["Budget", "Sink", "SlowConsumer", "SubStats", "Subscriber"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a subscription's events go when they are ready (a socket session)."""

    def wake(self, sub: Subscriber) -> None: ...

    def evicted(self, sub: Subscriber, reason: str) -> None:
        """The broker shed this subscription (a slow consumer): tell the client."""
        ...


class Budget:
    """Bytes queued for one client, across its subscriptions (a socket session shares one
    between its subscriptions; an in-process subscription has its own)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def over(self) -> bool:
        return self.used > self.limit


class SlowConsumer(LoomdError):
    """An in-process subscription was evicted for not keeping up."""

    code = "evicted"


@dataclass(slots=True)
class SubStats:
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class Subscriber:
    """One pattern, one QoS class, one queue. In-process subscriptions are async iterators."""

    broker: Broker
    sid: int
    pattern: str
    qos: QoS
    sink: Sink | None
    owner: str
    budget: Budget  # its client's bytes: a socket session's, shared; in process its own
    max_age_ms: int | None = None
    # May its full queue hold back reliable publishers (for up to slow_consumer_ms)?
    # Not for a client that was just evicted: it gets the hard bounds only.
    holds: bool = True
    # The publish classes it takes (None: every one); the broker skips the others.
    classes: frozenset[str] | None = None

    def __post_init__(self) -> None:
        self.stats = SubStats()
        self.closed = False
        self.evicted: str | None = None  # why the broker shed it, if it did
        self.seq = 0  # per-subscription counter for reliable, non-durable deliveries
        self.last_journal_seq = 0  # highest durable seq handed to this subscription
        self.catching_up = False
        lim = self.broker.limits
        self.bytes = 0  # queued here (also counted in the shared budget)
        # when its consumer last showed progress: a take (in process; for a socket client
        # a send, which its credit window bounds, so a client that acks nothing stops
        # taking a window later) or an ack from a socket client
        self.progress_at = self.broker.clock()
        self.max_age_ns = self.max_age_ms * 1_000_000 if self.max_age_ms else 0
        self.realtime: RealtimeQueue[Event] | None = None
        self.batched: BatchedQueue[tuple[int, Event]] | None = None
        self.reliable: ReliableQueue[tuple[int, Event]] | None = None
        self._ready: deque[tuple[int, Event]] = deque()  # released batches
        self._batch_timer: asyncio.TimerHandle | None = None
        self._oldest = lim.realtime_policy == "drop_oldest"
        if self.qos is QoS.REALTIME:
            self.realtime = RealtimeQueue(lim.realtime_queue, lim.realtime_policy)
        elif self.qos is QoS.BATCHED:
            self.batched = BatchedQueue(
                lim.batch_max, lim.batch_interval_ms / 1000, lim.batch_budget
            )
        else:
            self.reliable = ReliableQueue(lim.reliable_queue)
        self._waiter: asyncio.Future[None] | None = None

    # -- queue side ---------------------------------------------------------------------------
    def depth(self) -> int:
        q = self.realtime or self.batched or self.reliable
        return len(q or ()) + len(self._ready)

    def drop(self, reason: str, topic: str, n: int = 1) -> None:
        self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + n
        self.broker.count_drop(topic, reason, n)

    def _add_bytes(self, n: int) -> None:
        self.bytes += n
        self.budget.used += n

    def push(self, ev: Event, seq: int) -> bool:
        """Queue one event; return True if the reliable queue is now over its limit."""
        size = ev.size
        q = self.realtime
        budget = self.budget
        if q is not None:
            if self._oldest:
                old_one = q.append(ev)
                if old_one is not None:
                    self.drop("queue_full", old_one.topic)
                    size -= old_one.size
            else:
                for old in q.push_evict(ev):  # (keep_latest) this topic's previous event
                    self.drop("queue_full", old.topic)
                    size -= old.size
            self.bytes += size
            budget.used += size
            if budget.used > budget.limit:  # the client's byte budget: shed from this queue
                while budget.used > budget.limit:
                    old_ev = q.pop_first()
                    if old_ev is None:
                        break
                    self._add_bytes(-old_ev.size)
                    self.drop("over_budget", old_ev.topic)
            self._wake()
            return False
        if self.batched is not None:
            if self.budget.used + size > self.budget.limit:
                self.drop("over_budget", ev.topic)
                return False
            now = self.broker.clock()
            if self.batched.push((seq, ev), now):
                self.drop("sampled", ev.topic)
            else:
                self._add_bytes(size)
            if self.batched.due(now):
                self._release_batch()
            elif self._batch_timer is None:
                deadline = self.batched.deadline()
                if deadline is not None:
                    delay = max(0.0, deadline - now)
                    self._batch_timer = self.broker.loop.call_later(delay, self._on_batch_timer)
            return False
        assert self.reliable is not None
        if not seq:
            self.seq += 1
            seq = -self.seq  # negative: a per-subscription counter, not a journal seq
        self.reliable.push((seq, ev))
        self._add_bytes(size)
        self._wake()
        return self.reliable.pressured

    def overflowing(self) -> bool:
        """A reliable queue past its hard bounds: the client's byte budget, or four times
        the soft limit (publishers that cannot be slowed, such as realtime ones)."""
        r = self.reliable
        return r is not None and (self.budget.over or len(r) >= 4 * r.limit)

    def _on_batch_timer(self) -> None:
        self._batch_timer = None
        if self.batched is not None and not self.closed:
            self._release_batch()

    def _release_batch(self) -> None:
        assert self.batched is not None
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        ready = self._ready
        ready.extend(self.batched.take())
        excess = len(ready) - max(self.batched.budget, self.batched.batch_max)  # stalled reader
        for _ in range(excess):
            ev = ready.popleft()[1]
            self._add_bytes(-ev.size)
            self.drop("queue_full", ev.topic)
        self._wake()

    def pending(self) -> int:
        """How many events can be taken right now."""
        if self.realtime is not None:
            return len(self.realtime)
        if self.reliable is not None:
            return len(self.reliable)
        return len(self._ready)

    def take(self, n: int) -> list[tuple[int, Event]]:
        """Remove up to n deliverable events as (seq, event)."""
        if self.realtime is not None:
            out = [(0, ev) for ev in self.realtime.pop_many(n)]
            if self.max_age_ns and out:
                out = self._fresh(out)
        elif self.reliable is not None:
            was_pressured = self.reliable.pressured
            out = self.reliable.pop_many(n)
            if was_pressured and not self.reliable.pressured:
                self.broker.release_credits()
            if self.catching_up and len(self.reliable) <= self.reliable.limit // 2:
                self.broker.continue_replay(self)
        else:
            out = [self._ready.popleft() for _ in range(min(n, len(self._ready)))]
        if out:
            if self.reliable is not None:  # taken (in process) or sent into its window
                self.progress_at = self.broker.clock()
            n = 0
            for item in out:
                n += item[1].size
            self.bytes -= n
            self.budget.used -= n
            self.stats.delivered += len(out)
            self.broker.count_out(out)
        return out

    def _fresh(self, items: list[tuple[int, Event]]) -> list[tuple[int, Event]]:
        """Drop realtime events older than the subscription's max_age (counted `too_old`)."""
        cutoff = time.time_ns() - self.max_age_ns
        keep = []
        for item in items:
            ev = item[1]
            if ev.ts < cutoff:
                self._add_bytes(-ev.size)
                self.drop("too_old", ev.topic)
            else:
                keep.append(item)
        return keep

    def unpop(self, items: list[tuple[int, Event]]) -> None:
        """Put events back at the head (a socket refused them); never reorders."""
        self._add_bytes(sum(ev.size for _, ev in items))
        if self.reliable is not None:
            self.reliable.unpop(items)
        elif self.realtime is not None:
            lost = self.realtime.unpop([ev for _, ev in items])
            if lost:
                self.drop("queue_full", items[0][1].topic, lost)
                # which ones went is not known here; the budget is recounted below
                self._recount()
        else:
            self._ready.extendleft(reversed(items))
        self.stats.delivered -= len(items)
        self.broker.count_out(items, -1)

    def _recount(self) -> None:
        q = self.realtime
        held = sum(ev.size for ev in q.items()) if q is not None else self.bytes
        self._add_bytes(held - self.bytes)

    def clear(self) -> list[tuple[int, Event]]:
        """Empty the reliable queue (the broker sheds it); returns what was queued."""
        items = self.reliable.clear() if self.reliable is not None else []
        self._add_bytes(-self.bytes)
        return items

    def shutdown(self) -> None:
        """Called by the broker on unsubscribe: stop timers, release the budget, wake."""
        self.closed = True
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        self._add_bytes(-self.bytes)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake(self) -> None:
        if self.sink is not None:
            self.sink.wake(self)
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- in-process consumer side -------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self.closed:
                if self.evicted is not None:
                    raise SlowConsumer(f"subscription {self.pattern!r} evicted: {self.evicted}")
                raise StopAsyncIteration
            rt = self.realtime
            if rt is not None and not self.max_age_ns:  # hot path: one event
                ev = rt.pop_first()
                if ev is not None:
                    size = ev.size
                    self.bytes -= size
                    self.budget.used -= size
                    self.stats.delivered += 1
                    self.broker.count_out_one(ev)
                    return ev
            items = self.take(1)
            if items:
                return items[0][1]
            if rt is not None and len(rt):
                continue  # everything taken was too old: look again
            self._waiter = self.broker.loop.create_future()
            await self._waiter
            self._waiter = None

    async def get(self, timeout: float | None = None) -> Event:
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def batch(self, n: int = 256) -> list[Event]:
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        if n <= 1:
            return [first]
        return [first, *(ev for _, ev in self.take(n - 1))]

    async def ready(self) -> Subscriber:
        """In process a subscription is live as soon as it exists (the SDK's waits for the
        daemon): here for the one `Bus` API."""
        return self

    async def close(self) -> None:
        self.broker.unsubscribe(self)

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.broker.unsubscribe(self)

    def info(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "pattern": self.pattern,
            "qos": str(self.qos),
            "owner": self.owner,
            "depth": self.depth(),
            "bytes": self.bytes,
            "delivered": self.stats.delivered,
            "dropped": dict(self.stats.dropped),
        }
