"""The in-process broker: subscriptions, fan-out by QoS class, durability, credits, counters.

Everything here runs on the event loop thread. Socket clients and in-process
agents are both just subscriptions with a sink; the broker never touches a socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loomd.bus.envelope import DEFAULT_TTL, Event, QoS
from loomd.bus.qos import BatchedQueue, RealtimeQueue, ReliableQueue
from loomd.bus.settings import BusSettings
from loomd.bus.topics import TopicTrie, matches, validate_pattern
from loomd.errors import LoomdError
from loomd.messages import BusStats, ErrorCode, ErrorEvent, SubscriptionStats

log = logging.getLogger(__name__)

AckCallback = Callable[[str | None], None]  # called with None when accepted, else an error code
MAX_TOPIC_STATS = 1024
REPLAY_CHUNK = 256
OTHER_TOPICS = "_other"


class JournalLike(Protocol):
    def append(
        self, topic: bytes, header: bytes, body: bytes
    ) -> tuple[int, asyncio.Future[int]]: ...

    def read(self, after_seq: int, limit: int = 256) -> list[Any]: ...

    @property
    def head(self) -> int: ...


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
class TopicStats:
    events_in: int = 0
    events_out: int = 0
    dropped: int = 0


@dataclass(slots=True)
class SubStats:
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class Subscriber:
    """One pattern, one QoS class, one queue. In-process subscriptions are async iterators."""

    def __init__(
        self,
        broker: Broker,
        sid: int,
        pattern: str,
        qos: QoS,
        sink: Sink | None,
        owner: str,
        budget: Budget | None = None,
        max_age_ms: int | None = None,
        holds: bool = True,
    ) -> None:
        self.broker = broker
        self.sid = sid
        self.pattern = pattern
        self.qos = qos
        self.sink = sink
        self.owner = owner
        self.stats = SubStats()
        self.closed = False
        self.evicted: str | None = None  # why the broker shed it, if it did
        self.seq = 0  # per-subscription counter for reliable, non-durable deliveries
        self.last_journal_seq = 0  # highest durable seq handed to this subscription
        self.catching_up = False
        lim = broker.limits
        self.budget = budget or Budget(lim.pending_bytes)
        self.bytes = 0  # queued here (also counted in the shared budget)
        self.progress_at = broker.clock()  # last time the consumer took something
        self.max_age_ns = max_age_ms * 1_000_000 if max_age_ms else 0
        # May its full queue hold back reliable publishers (for up to slow_consumer_ms)?
        # Not for a client that was just evicted: it gets the hard bounds only.
        self.holds = holds
        self.realtime: RealtimeQueue[Event] | None = None
        self.batched: BatchedQueue[tuple[int, Event]] | None = None
        self.reliable: ReliableQueue[tuple[int, Event]] | None = None
        self._ready: deque[tuple[int, Event]] = deque()  # released batches
        self._batch_timer: asyncio.TimerHandle | None = None
        self._oldest = lim.realtime_policy == "drop_oldest"
        if qos is QoS.REALTIME:
            self.realtime = RealtimeQueue(lim.realtime_queue, lim.realtime_policy)
        elif qos is QoS.BATCHED:
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
            if self.reliable is not None:  # only a reliable one can hold publishers back
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


class Broker:
    """Routes events to subscriptions. Reliable publishes get an ack callback once durable
    (journaled topics) and once no target reliable queue is over its limit (credit)."""

    def __init__(
        self,
        limits: BusSettings,
        journal: JournalLike | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.limits = limits
        self.journal = journal
        self.clock = clock
        self.loop = loop or asyncio.get_running_loop()
        self._trie: TopicTrie[Subscriber] = TopicTrie()
        self.reconfigure(limits)
        self._subs: dict[int, Subscriber] = {}
        self._next_sid = 1
        self._parked: list[tuple[list[Subscriber], AckCallback]] = []
        self.topics: dict[str, TopicStats] = {}
        self.drops: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.events_in = 0
        self.events_out = 0
        self._replaying: set[Subscriber] = set()
        self._error_budget = _RateLimit(20, 1.0, clock)
        self._stall_timer: asyncio.TimerHandle | None = None
        self.shed_counts: dict[str, int] = {"detached": 0, "evicted": 0}

    def reconfigure(self, limits: BusSettings) -> None:
        """Apply new limits: durable patterns at once, queue sizes to new subscriptions."""
        self.limits = limits
        self._durable: TopicTrie[int] = TopicTrie()
        for i, pattern in enumerate(limits.durable):
            self._durable.add(pattern, i)
        self._durable_cache: dict[str, bool] = {}

    # -- subscriptions ------------------------------------------------------------------------
    def default_qos(self, pattern: str) -> QoS:
        """The configured class for a subscription that names none (wildcards: realtime)."""
        qos = None if "*" in pattern or "#" in pattern else self.limits.qos_for(pattern)
        return QoS(qos) if qos else QoS.REALTIME

    def subscribe(
        self,
        pattern: str,
        qos: QoS | str | None = None,
        *,
        sink: Sink | None = None,
        owner: str = "local",
        after_seq: int | None = None,
        budget: Budget | None = None,
        max_age_ms: int | None = None,
        holds: bool = True,
    ) -> Subscriber:
        validate_pattern(pattern)
        q = QoS(qos) if qos else self.default_qos(pattern)
        if after_seq is not None and q is not QoS.RELIABLE:
            raise LoomdError(f"replay (after={after_seq}) needs a reliable subscription, not {q}")
        if max_age_ms is not None and q is not QoS.REALTIME:
            raise LoomdError(f"max_age_ms applies to realtime subscriptions, not {q}")
        sub = Subscriber(self, self._next_sid, pattern, q, sink, owner, budget, max_age_ms, holds)
        self._next_sid += 1
        self._subs[sub.sid] = sub
        self._trie.add(pattern, sub)
        if after_seq is not None and self.journal is not None:
            if after_seq > self.journal.head:  # a seq from before the state was wiped
                log.warning(
                    "subscription %d asked for seq %d > head %d: live from head",
                    sub.sid,
                    after_seq,
                    self.journal.head,
                )
                after_seq = self.journal.head
            sub.last_journal_seq = after_seq
            if after_seq < self.journal.head:
                sub.catching_up = True
                self.continue_replay(sub)
        elif self.journal is not None:
            sub.last_journal_seq = self.journal.head
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub.closed:
            return
        sub.shutdown()
        self._trie.remove(sub.pattern, sub)
        self._subs.pop(sub.sid, None)
        self._replaying.discard(sub)
        self.release_credits()

    # -- slow consumers -----------------------------------------------------------------------
    def shed(self, sub: Subscriber, reason: str) -> None:
        """A reliable subscriber that cannot keep up stops costing others. If everything it
        holds is in the journal it is *detached*: its queue is dropped and it catches up
        from the journal at its own pace, publishers unaffected. Otherwise (non-durable
        events would be lost) it is *evicted*: unsubscribed, counted, reported as
        `loomd.error`, and its client told, so the SDK resubscribes."""
        if sub.closed or sub.reliable is None:
            return
        items = sub.clear()
        first_durable = next((seq for seq, _ in items if seq > 0), None)
        transient = any(seq <= 0 for seq, _ in items)
        if not transient and first_durable is not None and self.journal is not None:
            self.shed_counts["detached"] += 1
            # everything before its first queued durable event was taken; re-read from there
            sub.last_journal_seq = first_durable - 1
            sub.catching_up = True
            log.info(
                "subscriber %d (%s, %s) %s: detached to catch up from the journal at seq %d",
                sub.sid,
                sub.owner,
                sub.pattern,
                reason,
                sub.last_journal_seq,
            )
            self.continue_replay(sub)
        else:
            self.shed_counts["evicted"] += 1
            for _, ev in items:
                sub.drop("evicted", ev.topic)
            sub.evicted = reason
            log.warning(
                "subscriber %d (%s, %s) evicted: %s", sub.sid, sub.owner, sub.pattern, reason
            )
            self.error(
                ErrorCode.SLOW_CONSUMER,
                f"subscription {sub.pattern!r} of {sub.owner} evicted: {reason}",
                owner=sub.owner,
                pattern=sub.pattern,
                lost=len(items),
            )
            sink = sub.sink
            self.unsubscribe(sub)
            if sink is not None:
                sink.evicted(sub, reason)
        self.release_credits()

    def _watch_stalls(self) -> None:
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(
                self.limits.slow_consumer_ms / 2000, self._check_stalls
            )

    def _check_stalls(self) -> None:
        """Parked acks wait on pressured subscribers; one that consumed nothing for
        slow_consumer_ms is shed (heartbeats alone do not keep it)."""
        self._stall_timer = None
        cutoff = self.clock() - self.limits.slow_consumer_ms / 1000
        stalled = {
            s
            for subs, _ in self._parked
            for s in subs
            if not s.closed
            and s.reliable is not None
            and s.reliable.pressured
            and s.progress_at < cutoff
        }
        for s in stalled:
            self.shed(s, "slow_consumer")
        self.release_credits()
        if self._parked:
            self._watch_stalls()

    def subscriptions(self) -> Iterable[Subscriber]:
        return self._subs.values()

    def listeners(self, topic: str) -> int:
        """How many subscriptions an event published on `topic` now would reach."""
        return len(self._trie.match(topic))

    def summary(self) -> BusStats:
        """The counters and every subscription, typed (`Bus.stats()`)."""
        return BusStats(
            self.events_in,
            self.events_out,
            dict(self.drops),
            tuple(SubscriptionStats.from_payload(s.info()) for s in self._subs.values()),
        )

    # -- publishing ---------------------------------------------------------------------------
    def is_durable(self, topic: str) -> bool:
        hit = self._durable_cache.get(topic)
        if hit is None:
            hit = bool(self._durable.match(topic))
            if len(self._durable_cache) > 4096:
                self._durable_cache.clear()
            self._durable_cache[topic] = hit
        return hit

    def publish(self, ev: Event, on_ack: AckCallback | None = None) -> None:
        """Route one event. `on_ack` (reliable publishers) is called exactly once."""
        self.events_in += 1
        topic = ev.topic
        st = self.topics.get(topic) or self._topic_stats(topic)
        st.events_in += 1
        hdr = ev._hdr  # decoded already for anything that came off a socket
        if (hdr.get("ttl", DEFAULT_TTL) if hdr is not None else ev.ttl) <= 0:
            st.dropped += 1
            self.drops["ttl"] = self.drops.get("ttl", 0) + 1
            if on_ack is not None:
                on_ack("ttl_expired")
            return
        durable = self._durable_cache.get(topic)
        if durable is None:
            durable = self.is_durable(topic)
        if durable and self.journal is not None:
            try:
                seq, fut = self.journal.append(ev.topic_bytes(), ev.header_bytes(), ev.body_bytes())
            except LoomdError as exc:
                self._journal_failed(ev, exc, on_ack)
                return
            fut.add_done_callback(lambda f: self._committed(ev, seq, f, on_ack))
            return
        self._route(ev, 0, on_ack)

    async def publish_wait(self, ev: Event) -> None:
        """Publish and wait for the ack (durable + credit); raise on error."""
        fut: asyncio.Future[str | None] = self.loop.create_future()

        def done(err: str | None) -> None:
            if not fut.done():
                fut.set_result(err)

        self.publish(ev, done)
        err = await fut
        if err is not None:
            raise LoomdError(f"publish on {ev.topic} failed: {err}")

    def _committed(
        self, ev: Event, seq: int, fut: asyncio.Future[int], on_ack: AckCallback | None
    ) -> None:
        exc = fut.exception()
        if exc is not None:
            self._journal_failed(ev, exc, on_ack)
            return
        self._route(ev, seq, on_ack)

    def _journal_failed(self, ev: Event, exc: BaseException, on_ack: AckCallback | None) -> None:
        self.count_drop(ev.topic, "journal")
        log.error("journal write failed for %s: %s", ev.topic, exc)
        self.error(ErrorCode.JOURNAL, f"journal write failed for {ev.topic}: {exc}")
        if on_ack is not None:
            on_ack("journal_failed")

    def _route(self, ev: Event, seq: int, on_ack: AckCallback | None) -> None:
        blocked: list[Subscriber] | None = None
        for sub in self._trie.match(ev.topic):
            if seq:
                if sub.catching_up or seq <= sub.last_journal_seq:
                    continue  # the replay reads it from the journal
                sub.last_journal_seq = seq
            if sub.push(ev, seq):
                if sub.overflowing():
                    self.shed(sub, "over_budget")
                    continue
                if sub.catching_up or not sub.holds:
                    continue  # its backlog is its own: only the hard bounds apply
                if blocked is None:
                    blocked = []
                blocked.append(sub)
        if on_ack is not None:
            if blocked:
                self._parked.append((blocked, on_ack))
                self._watch_stalls()
            else:
                on_ack(None)

    def release_credits(self) -> None:
        """Ack parked publishes whose target queues have drained below their limits."""
        if not self._parked:
            return
        still: list[tuple[list[Subscriber], AckCallback]] = []
        ready: list[AckCallback] = []
        for subs, cb in self._parked:
            if any(
                s.reliable is not None
                and s.reliable.pressured
                and not s.closed
                and not s.catching_up
                for s in subs
            ):
                still.append((subs, cb))
            else:
                ready.append(cb)
        self._parked = still
        for cb in ready:
            cb(None)

    def parked(self) -> int:
        return len(self._parked)

    # -- durable replay -----------------------------------------------------------------------
    def continue_replay(self, sub: Subscriber) -> None:
        """Feed a resuming reliable subscription from the journal, a chunk at a time."""
        if self.journal is None or sub.closed or sub in self._replaying:
            return
        self._replaying.add(sub)
        self.loop.call_soon(self._replay_step, sub)

    def _replay_step(self, sub: Subscriber) -> None:
        self._replaying.discard(sub)
        if sub.closed or self.journal is None:
            return
        assert sub.reliable is not None
        # One chunk per loop turn: a replay (a resubscribing, or detached, subscriber far
        # behind) never holds the loop for more than REPLAY_CHUNK journal entries.
        if len(sub.reliable) < sub.reliable.limit and not sub.budget.over:
            entries = self.journal.read(sub.last_journal_seq, REPLAY_CHUNK)
            for entry in entries:
                sub.last_journal_seq = entry.seq
                topic = entry.topic.decode()
                if matches(sub.pattern, topic):
                    sub.push(Event.from_frames(entry.topic, entry.header, entry.body), entry.seq)
            if len(entries) == REPLAY_CHUNK and len(sub.reliable) < sub.reliable.limit:
                self.continue_replay(sub)
                return
        if sub.last_journal_seq >= self.journal.head:
            sub.catching_up = False  # caught up: live delivery from here, no gap, no overlap
            log.debug("subscription %d caught up at seq %d", sub.sid, sub.last_journal_seq)
        # else: take() calls continue_replay when the queue drains

    # -- counters -----------------------------------------------------------------------------
    def _topic_stats(self, topic: str) -> TopicStats:
        st = self.topics.get(topic)
        if st is None:
            if len(self.topics) >= MAX_TOPIC_STATS:
                topic = OTHER_TOPICS
                st = self.topics.get(topic)
            if st is None:
                st = self.topics[topic] = TopicStats()
        return st

    def count_drop(self, topic: str, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n
        self._topic_stats(topic).dropped += n

    def count_out_one(self, ev: Event) -> None:
        self.events_out += 1
        self._topic_stats(ev.topic).events_out += 1

    def count_out(self, items: list[tuple[int, Event]], sign: int = 1) -> None:
        self.events_out += sign * len(items)
        for _, ev in items:
            self._topic_stats(ev.topic).events_out += sign

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    # -- system events ------------------------------------------------------------------------
    def error(self, code: ErrorCode, message: str, *, component: str = "", **details: Any) -> None:
        """Publish a `loomd.error` event (rate limited so a flood of bad input stays cheap)."""
        if not self._error_budget.take():
            self.count_drop(ErrorEvent.TOPIC, "error_rate")
            return
        out = ErrorEvent(code, message, component, details).event()
        self.publish(
            Event.create(out.topic, out.payload, type=out.type, sender="loomd", qos=ErrorEvent.QOS)
        )

    def stats(self) -> dict[str, Any]:
        return {
            "events_in": self.events_in,
            "events_out": self.events_out,
            "drops": dict(self.drops),
            "rejected": dict(self.rejected),
            "parked_acks": len(self._parked),
            "subscriptions": [s.info() for s in self._subs.values()],
            "topics": {
                t: {"in": s.events_in, "out": s.events_out, "dropped": s.dropped}
                for t, s in self.topics.items()
            },
        }


class _RateLimit:
    """Token bucket: `rate` events per `per` seconds."""

    def __init__(self, rate: int, per: float, clock: Callable[[], float]) -> None:
        self.rate, self.per, self.clock = rate, per, clock
        self.tokens = float(rate)
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate / self.per)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
