"""Where the bridge's outbound subscriptions resume after the daemon dies: nothing the bus
accepted is lost between the bus and the outbox.

The window: a durable event is in the journal once its publisher has the ack, but it
reaches the LMDB outbox only after the bridge took it from its subscription and the state
writer committed the entry. Killed in between, a plain subscription starts live after the
restart and the event is gone. So each outbound map with QoS >= 1 and a reliable bus
subscription keeps a *mark* in LMDB (namespace `mqtt.marks`): the journal seq up to which
every event was handled (queued in the outbox, or filtered). The mark is written through
the same state writer after the outbox entries it covers (the writer commits in order), so
a committed mark never runs ahead of the outbox; at start the subscription replays the
journal from it (`since=`). A mark that lags only repeats messages (QoS 1 is at least once).

While the outbox is full the map stops taking events (`Outbox.room`): they stay in the
journal (the broker detaches a durable subscriber that falls behind) instead of being
dropped as overflow.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["NAMESPACE", "BusMarks", "handled_upto"]

NAMESPACE = "mqtt.marks"
log = logging.getLogger("loomd.mqtt")


def handled_upto(sub: Any) -> int:
    """The journal seq up to which every durable event of `sub` was taken (call it after
    the taken ones were handled): one before the first event still queued, else the last
    the subscription was given. -1 when that is not known (a non-durable event heads the
    queue) or `sub` is not a broker's reliable subscription: the mark stays where it is."""
    queue = getattr(sub, "reliable", None)
    if queue is None:
        return -1
    if not len(queue):
        return int(getattr(sub, "last_journal_seq", -1))
    seq = int(queue.peek()[0])
    return seq - 1 if seq > 0 else -1


class BusMarks:
    """The marks, one LMDB key per map; at most one write in flight per map (a newer mark
    follows when it commits), so a burst costs a few writes, not one per event."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self.done: dict[str, int] = {}  # handled up to (in memory)
        self.written: dict[str, int] = {}  # committed
        self._writing: set[str] = set()
        self.write_errors = 0

    def since(self, key: str) -> int | None:
        """The seq to replay after (None: no mark yet, start live)."""
        value = self.kv.get(key)
        if isinstance(value, int) and value >= 0:
            self.done[key] = self.written[key] = value
            return value
        return None

    def advance(self, key: str, seq: int) -> None:
        if seq <= self.done.get(key, -1):
            return
        self.done[key] = seq
        self._write(key)

    def _write(self, key: str) -> None:
        if key in self._writing:
            return
        seq = self.done[key]
        self._writing.add(key)
        fut = self.kv.put_nowait(key, seq)

        def committed(f: asyncio.Future[None]) -> None:
            self._writing.discard(key)
            if f.cancelled() or f.exception() is not None:
                self.write_errors += 1
                log.error("mqtt: mark of %s not written: %s", key, f.exception())
                return  # the next event writes it again
            self.written[key] = seq
            if self.done[key] > seq:
                self._write(key)  # queued after the outbox entries it covers

        fut.add_done_callback(committed)

    def behind(self) -> int:
        """Maps whose newest mark is not committed yet."""
        return sum(1 for k, v in self.done.items() if self.written.get(k, -1) < v)
