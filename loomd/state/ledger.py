"""Journal bookkeeping (head, counts, bytes) kept in `meta`, and the retention policy."""

from __future__ import annotations

import dataclasses
import logging
import struct
from dataclasses import dataclass

import lmdb

from loomd.state.records import SEQ, entry_ts

log = logging.getLogger(__name__)

LEDGER_KEY = b"journal"
# head, entries, bytes. `head` is kept here, not only derived from the last key, because
# retention may empty the journal and seqs must still continue after a reopen.
_LEDGER = struct.Struct(">QQQ")
_KEY_SIZE = SEQ.size
# Bounded retention work per write batch, so a lowered limit or a long idle period
# cannot turn one commit into a long stall; the writer comes back for the rest.
TRIM_BUDGET = 2048


@dataclass(slots=True)
class Ledger:
    """What the journal holds. The writer edits a copy inside a txn and publishes it
    by swapping the reference after the commit, so readers see a consistent snapshot."""

    head: int = 0  # highest seq ever committed (0 if none)
    first_seq: int = 1  # lowest retained seq; head + 1 when empty
    first_ts: int = 0  # ts_ns of that entry; 0 when empty
    entries: int = 0
    nbytes: int = 0  # keys + values

    def copy(self) -> Ledger:
        return dataclasses.replace(self)

    def pack(self) -> bytes:
        return _LEDGER.pack(self.head, self.entries, self.nbytes)

    def record_append(self, seq: int, ts_ns: int, raw_size: int) -> None:
        if not self.entries:
            self.first_seq, self.first_ts = seq, ts_ns
        self.head = seq
        self.entries += 1
        self.nbytes += _KEY_SIZE + raw_size


def load_ledger(
    txn: lmdb.Transaction[bytes], journal: lmdb._Database, meta: lmdb._Database
) -> Ledger:
    ledger = Ledger()
    cur = txn.cursor(db=journal)
    last = 0
    if cur.first():
        ledger.first_seq = SEQ.unpack(cur.key())[0]
        ledger.first_ts = entry_ts(cur.value())
        cur.last()
        last = SEQ.unpack(cur.key())[0]
    raw = txn.get(LEDGER_KEY, db=meta)
    if raw is not None:
        head, ledger.entries, ledger.nbytes = _LEDGER.unpack(raw)
        ledger.head = max(head, last)
    elif last:
        # No bookkeeping but entries exist (written by something else): count once.
        log.warning("journal bookkeeping missing, recounting the journal")
        ledger.head = last
        for key, value in txn.cursor(db=journal):
            ledger.entries += 1
            ledger.nbytes += len(key) + len(value)
    if not ledger.entries:
        ledger.first_seq, ledger.first_ts = ledger.head + 1, 0
    return ledger


@dataclass(frozen=True, slots=True)
class Retention:
    max_bytes: int
    max_age_ns: int
    budget: int = TRIM_BUDGET

    def due(self, ledger: Ledger, now_ns: int) -> bool:
        return ledger.entries > 0 and (
            ledger.nbytes > self.max_bytes or now_ns - ledger.first_ts > self.max_age_ns
        )


def trim(
    txn: lmdb.Transaction[memoryview],
    journal: lmdb._Database,
    ledger: Ledger,
    now_ns: int,
    retention: Retention,
) -> bool:
    """Drop the oldest entries while over size or age, at most `budget` of them.

    Edits `ledger` in place; returns True when more is due (the budget ran out)."""
    if not retention.due(ledger, now_ns):
        return False
    cutoff = now_ns - retention.max_age_ns
    cur = txn.cursor(db=journal)
    positioned = cur.first()
    dropped = 0
    while positioned and dropped < retention.budget:
        value = cur.value()
        if ledger.nbytes <= retention.max_bytes and entry_ts(value) >= cutoff:
            break
        size = _KEY_SIZE + len(value)
        # delete() moves the cursor to the next entry; a falsy key means we ran off the end.
        cur.delete()
        ledger.entries -= 1
        ledger.nbytes -= size
        dropped += 1
        positioned = bool(cur.key())
    if positioned and ledger.entries:
        ledger.first_seq = SEQ.unpack(cur.key())[0]
        ledger.first_ts = entry_ts(cur.value())
    else:
        ledger.entries, ledger.nbytes = 0, 0
        ledger.first_seq, ledger.first_ts = ledger.head + 1, 0
    return retention.due(ledger, now_ns)
