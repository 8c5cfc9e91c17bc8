"""The journal: the durable log of bus topics, one seq per entry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from loomd.errors import StateError
from loomd.state.env import Env
from loomd.state.records import SEQ, JournalEntry, decode_entry
from loomd.state.writer import APPEND, Then, Writer


class Journal:
    """Appends go through the writer; reads are direct, short read txns."""

    def __init__(self, env: Env, writer: Writer, clock: Callable[[], int]) -> None:
        self._env = env
        self._writer = writer
        self._clock = clock
        # Seqs are handed out here, in the loop thread, so a publisher knows its seq
        # before the commit and futures settle in seq order (the queue is FIFO).
        self._next_seq = writer.ledger.head + 1
        self._submit = writer.submit  # the one way onto the writer's queue

    def append(self, topic: bytes, header: bytes, body: bytes) -> tuple[int, asyncio.Future[int]]:
        """Queue an entry; returns its seq now and a future that resolves with it once
        durable. Call from the event loop thread. A failed append (StateFullError,
        StateError) leaves its seq unused: seqs are monotonic, not necessarily dense."""
        if self._writer.closing:
            raise StateError("state is closed")
        seq = self._next_seq
        self._next_seq = seq + 1
        size = len(topic) + len(header) + len(body)
        return seq, self._submit(APPEND, seq, (self._clock(), topic, header, body), size)

    def append_then(self, topic: bytes, header: bytes, body: bytes, then: Then) -> int:
        """Like `append`, but `then(seq or exception)` is called in the writer's settle
        callback, the loop turn the commit lands in (the bus acks and routes there)."""
        if self._writer.closing:
            raise StateError("state is closed")
        seq = self._next_seq
        self._next_seq = seq + 1
        size = len(topic) + len(header) + len(body)
        self._writer.submit_then(APPEND, seq, (self._clock(), topic, header, body), size, then)
        return seq

    def read(self, after_seq: int, limit: int = 256) -> list[JournalEntry]:
        """Committed entries with seq > after_seq, oldest first, at most `limit`."""
        if limit <= 0:
            return []
        start = SEQ.pack(max(after_seq + 1, 0))
        raws: list[tuple[bytes, bytes]] = []
        with self._env.reading() as txn:
            cur = txn.cursor(db=self._env.journal)
            if cur.set_range(start):
                for item in cur:
                    raws.append(item)
                    if len(raws) >= limit:
                        break
        # Decoded outside the txn: the map guard is held no longer than the copy.
        return [decode_entry(SEQ.unpack(key)[0], raw) for key, raw in raws]

    @property
    def head(self) -> int:
        """Highest committed seq (0 if nothing was ever appended). It moves when the txn
        commits, before that batch's futures settle, so an entry at or below `head` is
        always readable (the broker's replay-to-live switch relies on it)."""
        return self._writer.ledger.head

    @property
    def first_seq(self) -> int:
        """Lowest retained seq (head + 1 when empty)."""
        return self._writer.ledger.first_seq
