"""The MQTT outbox: outbound QoS >= 1 messages in LMDB until the broker acknowledges them.

Entries are keyed by a zero-padded sequence number in the state namespace `mqtt.outbox`,
so a scan returns them in the order they were queued. Writes go through the state writer
(group commit, off the event loop); deletes of acknowledged entries are batched into one
commit. The outbox is bounded by count and age: a new entry over the count limit is
refused (counted as overflow), entries older than the age limit that were never handed to
the client are expired (counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["Entry", "Outbox"]

NAMESPACE = "mqtt.outbox"
DELETE_GROUP_S = 0.05  # acknowledged entries are deleted in one commit per this much time
log = logging.getLogger("loomd.mqtt")


@dataclass(slots=True)
class Entry:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    ts: float  # time.time() when queued
    mid: int | None = None  # paho's message id once handed to the client
    written: asyncio.Future[None] | None = None  # done when the LMDB write committed


def _key(seq: int) -> str:
    return f"{seq:016x}"


class Outbox:
    def __init__(self, kv: Any, max_messages: int, max_age_s: float) -> None:
        self.kv = kv
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.unsent: OrderedDict[int, Entry] = OrderedDict()  # not yet handed to the client
        self.next_seq = 1
        self.overflow = 0
        self.expired = 0
        self.added = 0
        self.removed = 0
        self.write_errors = 0
        self.emptied_at = 0.0  # time.time() when the last entry left
        self._doomed: list[str] = []
        self._deleting: asyncio.Event = asyncio.Event()
        self.room = asyncio.Event()  # set while a new entry fits
        self.room.set()

    def load(self) -> int:
        """Read what a previous run left (call off the loop: it scans LMDB)."""
        for key, value in self.kv.items():
            seq = int(key, 16)
            topic, payload, qos, retain, ts = value
            self.entries[seq] = self.unsent[seq] = Entry(seq, topic, payload, qos, retain, ts)
            self.next_seq = max(self.next_seq, seq + 1)
        return len(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.max_messages

    async def wait_for_room(self) -> None:
        """Until a new entry fits (an ack or an expiry makes room)."""
        while self.full:
            self.room.clear()
            await self.room.wait()

    def oldest_age_s(self) -> float:
        if not self.entries:
            return 0.0
        return max(0.0, time.time() - next(iter(self.entries.values())).ts)

    def add(self, topic: str, payload: bytes, qos: int, retain: bool) -> Entry | None:
        """Queue one message (durable once the state writer commits); None when full."""
        if len(self.entries) >= self.max_messages:
            self.overflow += 1
            return None
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        e = Entry(seq, topic, payload, qos, retain, time.time())
        fut = self.kv.put_nowait(_key(seq), [topic, payload, qos, retain, e.ts])
        fut.add_done_callback(self._written)
        e.written = fut
        self.entries[seq] = self.unsent[seq] = e
        self.added += 1
        return e

    def _written(self, fut: asyncio.Future[None]) -> None:
        # The message is still sent from memory; only a daemon restart could lose it now.
        if not fut.cancelled() and fut.exception() is not None:
            self.write_errors += 1
            log.error("mqtt outbox: LMDB write failed: %s", fut.exception())

    def remove(self, seq: int) -> None:
        """The broker acknowledged it: delete (batched with others into one commit)."""
        if self.entries.pop(seq, None) is None:
            return
        self.unsent.pop(seq, None)
        self.removed += 1
        self.room.set()
        if not self.entries:
            self.emptied_at = time.time()
        self._doomed.append(_key(seq))
        self._deleting.set()

    def expire(self) -> int:
        """Drop unsent entries older than the age limit; return how many."""
        cut = time.time() - self.max_age_s
        n = 0
        for seq, e in list(self.unsent.items()):
            if e.ts >= cut:
                break
            del self.unsent[seq]
            self.entries.pop(seq, None)
            self._doomed.append(_key(seq))
            n += 1
        if n:
            self.expired += n
            self._deleting.set()
            self.room.set()
        return n

    async def run_deletes(self) -> None:
        """Background: commit the deletes of acknowledged entries, many per transaction:
        the first waits DELETE_GROUP_S for the ones after it, so a message's PUBACK does not
        cost a commit (a writer wake-up and an fsync) while the next messages are under
        way. A crash in that window re-sends those few acknowledged messages after the
        restart (at least once, as after a broker restart); a clean stop commits them."""
        while True:
            await self._deleting.wait()
            await asyncio.sleep(DELETE_GROUP_S)
            self._deleting.clear()
            keys, self._doomed = self._doomed, []
            if keys:
                await asyncio.gather(*(self.kv.delete(k) for k in keys))

    async def flush(self) -> None:
        keys, self._doomed = self._doomed, []
        if keys:
            await asyncio.gather(*(self.kv.delete(k) for k in keys))
