"""The in-process broker: subscriptions, fan-out by QoS class, durability, credits, counters.

Everything here runs on the event loop thread. Socket clients and in-process
agents are both just subscriptions with a sink; the broker never touches a socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from loomd.bus.acl import Acl
from loomd.bus.envelope import DEFAULT_TTL, Event, QoS
from loomd.bus.settings import BusSettings
from loomd.bus.subscriber import Budget, Sink, Subscriber
from loomd.bus.topics import TopicTrie, matches, validate_pattern
from loomd.errors import LoomdError
from loomd.messages import BusStats, ErrorCode, ErrorEvent, SubscriptionStats

log = logging.getLogger(__name__)

AckCallback = Callable[[str | None], None]  # called with None when accepted, else an error code
MAX_TOPIC_STATS = 1024
REPLAY_CHUNK = 256
OTHER_TOPICS = "_other"
FREE_CHUNK = 1024  # shed events freed per loop turn
_topic = attrgetter("topic")


class JournalLike(Protocol):
    def append_then(
        self, topic: bytes, header: bytes, body: bytes, then: Callable[[Any], None]
    ) -> int: ...

    def read(self, after_seq: int, limit: int = 256) -> list[Any]: ...

    @property
    def head(self) -> int: ...


@dataclass(slots=True)
class TopicStats:
    events_in: int = 0
    events_out: int = 0
    dropped: int = 0


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
        self.acl = Acl()  # the rules in force (the bus component sets them; in-process parts)
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
        self._pressured: set[Subscriber] = set()  # reliable queues over their limit
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
        classes: frozenset[str] | None = None,
    ) -> Subscriber:
        validate_pattern(pattern)
        q = QoS(qos) if qos else self.default_qos(pattern)
        if after_seq is not None and q is not QoS.RELIABLE:
            raise LoomdError(f"replay (after={after_seq}) needs a reliable subscription, not {q}")
        if max_age_ms is not None and q is not QoS.REALTIME:
            raise LoomdError(f"max_age_ms applies to realtime subscriptions, not {q}")
        budget = budget or Budget(self.limits.pending_bytes)  # in process: its own
        sub = Subscriber(
            self, self._next_sid, pattern, q, sink, owner, budget, max_age_ms, holds, classes
        )
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
        self._pressured.discard(sub)
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
        # Linear in C only, and the events freed a chunk at a time: a queue at its hard
        # bound holds ~16k of them, and per-event Python here held the loop ~20 ms
        # (what the stalled-subscriber row of bench/hostile.py measured).
        items = sub.clear()
        seqs = list(map(itemgetter(0), items))
        if seqs and min(seqs) > 0 and self.journal is not None:  # all of it in the journal
            self.shed_counts["detached"] += 1
            # everything before its first queued durable event was taken; re-read from there
            sub.last_journal_seq = seqs[0] - 1
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
            for topic, n in Counter(map(_topic, map(itemgetter(1), items))).items():
                sub.drop("evicted", topic, n)
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
        self._free_later(items)
        self.release_credits()

    def _free_later(self, items: list[Any]) -> None:
        """Let go of shed events a chunk per loop turn: freeing ~16k at once held the loop
        another ~7 ms."""
        del items[-FREE_CHUNK:]
        if items:
            self.loop.call_soon(self._free_later, items)

    def _watch_stalls(self) -> None:
        if self._stall_timer is None:
            # a quarter of max_hold_ms: a stale holder lets go within 1.25 x of it
            self._stall_timer = self.loop.call_later(
                min(self.limits.max_hold_ms, self.limits.slow_consumer_ms) / 4000,
                self._check_stalls,
            )

    def holds_back(self, sub: Subscriber, now: float) -> bool:
        """Does `sub` hold publishers' acks now? Only while its reliable queue is over its
        limit *and* its consumer made progress (acked, or took in process) within
        max_hold_ms: a stalled subscriber costs the others at most that long."""
        return (
            sub.reliable is not None
            and sub.reliable.pressured
            and not sub.closed
            and not sub.catching_up
            and now - sub.progress_at < self.limits.max_hold_ms / 1000
        )

    def _check_stalls(self) -> None:
        """Parked acks wait on pressured subscribers; one that acknowledged nothing for
        max_hold_ms no longer holds them, and one silent for slow_consumer_ms is shed."""
        self._stall_timer = None
        cutoff = self.clock() - self.limits.slow_consumer_ms / 1000
        for s in list(self._pressured):
            if s.closed or s.reliable is None or not s.reliable.pressured:
                self._pressured.discard(s)
            elif s.progress_at < cutoff:
                self._pressured.discard(s)
                self.shed(s, "slow_consumer")
        self.release_credits()
        if self._parked or self._pressured:
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
            # routed and acked in the turn the commit lands in (not a future's turn later)
            try:
                self.journal.append_then(
                    ev.topic_bytes(),
                    ev.header_bytes(),
                    ev.body_bytes(),
                    lambda outcome: self._committed(ev, outcome, on_ack),
                )
            except LoomdError as exc:
                self._journal_failed(ev, exc, on_ack)
            return
        self._route(ev, 0, on_ack)

    async def publish_wait(self, ev: Event) -> None:
        """Publish and wait for the ack (durable + credit); raise on error."""
        pending = self.publish_acked(ev)
        if pending is not None:
            await pending

    def publish_acked(self, ev: Event) -> asyncio.Future[None] | None:
        """Publish; None when the ack came at once (routed, no queue holding it back: no
        future, no suspension), else a future the ack settles. Raises or fails with
        `LoomdError` when the publish is refused."""
        fut: asyncio.Future[None] | None = None
        now: list[str | None] = []

        def done(err: str | None) -> None:
            if fut is None:
                now.append(err)
            elif not fut.done():
                if err is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(LoomdError(f"publish on {ev.topic} failed: {err}"))

        self.publish(ev, done)
        if now:
            if now[0] is not None:
                raise LoomdError(f"publish on {ev.topic} failed: {now[0]}")
            return None
        fut = self.loop.create_future()
        return fut

    def _committed(
        self, ev: Event, outcome: int | BaseException, on_ack: AckCallback | None
    ) -> None:
        if isinstance(outcome, BaseException):
            self._journal_failed(ev, outcome, on_ack)
            return
        self._route(ev, outcome, on_ack)

    def _journal_failed(self, ev: Event, exc: BaseException, on_ack: AckCallback | None) -> None:
        self.count_drop(ev.topic, "journal")
        log.error("journal write failed for %s: %s", ev.topic, exc)
        self.error(ErrorCode.JOURNAL, f"journal write failed for {ev.topic}: {exc}")
        if on_ack is not None:
            on_ack("journal_failed")

    def _route(self, ev: Event, seq: int, on_ack: AckCallback | None) -> None:
        blocked: list[Subscriber] | None = None
        qos: str | None = None
        for sub in self._trie.match(ev.topic):
            if seq:
                if sub.catching_up or seq <= sub.last_journal_seq:
                    continue  # the replay reads it from the journal
                sub.last_journal_seq = seq
            if sub.classes is not None:  # it takes some publish classes only
                if qos is None:
                    hdr = ev._hdr  # decoded already for anything that came off a socket
                    qos = hdr.get("qos", QoS.RELIABLE) if hdr is not None else ev.qos
                if qos not in sub.classes:
                    continue
            if sub.push(ev, seq):
                if sub.overflowing():
                    self.shed(sub, "over_budget")
                    continue
                if sub not in self._pressured:
                    self._pressured.add(sub)  # watched: shed if it stays silent
                    self._watch_stalls()
                if not sub.holds or not self.holds_back(sub, self.clock()):
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
        now = self.clock()
        # each queue asked once per call: thousands of parked publishes wait on one or two
        holding: dict[Subscriber, bool] = {}
        for subs, cb in self._parked:
            for s in subs:
                held = holding.get(s)
                if held is None:
                    held = holding[s] = self.holds_back(s, now)
                if held:
                    still.append((subs, cb))
                    break
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
                    ev = Event.from_frames(entry.topic, entry.header, entry.body)
                    if sub.classes is None or ev.qos in sub.classes:
                        sub.push(ev, entry.seq)
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
