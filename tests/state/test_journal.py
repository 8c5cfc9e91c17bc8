"""The journal: seqs, durable acks in order, paging, retention by size and age."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loomd.state import JournalEntry, State

from .helpers import LOOPS, FakeClock, arun, wait_until

ENTRY_OVERHEAD = 8 + 16  # key + (ts, topic length, header length)


@pytest.mark.parametrize("loop", LOOPS)
def test_seqs_are_monotonic_and_continue_after_reopen(tmp_path: Path, loop: str) -> None:
    clock = FakeClock()

    async def run(first: int, n: int) -> None:
        async with State(tmp_path, clock=clock) as st:
            j = st.journal
            assert j.head == first - 1
            assert j.first_seq == 1
            order: list[int] = []
            pairs = [j.append(b"t.a", b"h%d" % i, b"b%d" % i) for i in range(n)]
            assert [seq for seq, _ in pairs] == list(range(first, first + n))
            for _, fut in pairs:
                fut.add_done_callback(lambda f: order.append(f.result()))
            assert await asyncio.gather(*(f for _, f in pairs)) == [s for s, _ in pairs]
            assert order == [s for s, _ in pairs]  # settled in seq order
            assert j.head == first + n - 1

    arun(lambda: run(1, 300), loop=loop)
    arun(lambda: run(301, 50), loop=loop)

    async def check() -> None:
        async with State(tmp_path, clock=clock) as st:
            entries = st.journal.read(0, limit=1000)
            assert [e.seq for e in entries] == list(range(1, 351))
            assert entries[0] == JournalEntry(1, clock.now_ns, b"t.a", b"h0", b"b0")
            assert entries[300].body == b"b0" and entries[300].header == b"h0"

    arun(check)


def test_read_pages(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path) as st:
            j = st.journal
            assert j.read(0) == []
            assert (j.head, j.first_seq) == (0, 1)
            seqs = [j.append(b"p", b"", bytes([i])) for i in range(100)]
            await asyncio.gather(*(f for _, f in seqs))
            got: list[JournalEntry] = []
            after = 0
            while page := j.read(after, limit=7):
                assert len(page) <= 7
                got.extend(page)
                after = page[-1].seq
            assert [e.seq for e in got] == list(range(1, 101))
            assert [e.body for e in got] == [bytes([i]) for i in range(100)]
            assert [e.seq for e in j.read(95)] == [96, 97, 98, 99, 100]
            assert j.read(100) == []
            assert j.read(-5, limit=2)[0].seq == 1
            assert j.read(0, limit=0) == []
            big = b"\x00" * 70_000  # beyond one page: an LMDB overflow value
            _, fut = j.append(b"topic.big", b"\xa1hdr", big)
            seq = await fut
            [entry] = j.read(seq - 1)
            assert (entry.seq, entry.topic, entry.header, entry.body) == (
                seq,
                b"topic.big",
                b"\xa1hdr",
                big,
            )

    arun(main)


def test_retention_by_size(tmp_path: Path) -> None:
    body = b"x" * 10_000
    n = 400  # ~4 MB against a 1 MiB cap

    async def main() -> None:
        async with State(tmp_path, journal_max_mb=1) as st:
            j = st.journal
            futs = []
            for i in range(n):
                futs.append(j.append(b"t", b"", body)[1])
                if i % 50 == 49:  # several batches, so retention runs between them
                    await asyncio.gather(*futs)
            await asyncio.gather(*futs)
            stats = st.stats()
            entries = j.read(0, limit=n)
            assert stats["journal_bytes"] <= 1 << 20
            assert stats["journal_entries"] == len(entries) > 50
            assert stats["journal_bytes"] == sum(
                ENTRY_OVERHEAD + len(e.topic) + len(e.header) + len(e.body) for e in entries
            )
            assert entries[0].seq == j.first_seq > 1
            assert entries[-1].seq == j.head == n

    arun(main)

    async def reopened() -> None:
        async with State(tmp_path, journal_max_mb=1) as st:
            stats = st.stats()
            assert stats["journal_head"] == n
            assert stats["journal_entries"] == len(st.journal.read(0, limit=n))

    arun(reopened)


def test_retention_by_age(tmp_path: Path) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with State(tmp_path, journal_max_age_s=60, clock=clock) as st:
            j = st.journal
            await asyncio.gather(*(j.append(b"old", b"", b"o")[1] for _ in range(10)))
            clock.advance(30)
            await asyncio.gather(*(j.append(b"mid", b"", b"m")[1] for _ in range(5)))
            assert j.first_seq == 1
            clock.advance(31)  # the first ten are now 61 s old, the next five 31 s
            seq = await j.append(b"new", b"", b"n")[1]
            assert seq == 16
            assert j.first_seq == 11
            assert [e.topic for e in j.read(0)] == [b"mid"] * 5 + [b"new"]
            clock.advance(3600)  # everything expires on the next commit
            await j.append(b"newer", b"", b"n")[1]
            assert [e.seq for e in j.read(0)] == [17]

    arun(main)


def test_emptied_journal_keeps_its_seq_after_reopen(tmp_path: Path) -> None:
    clock = FakeClock()

    async def fill() -> None:
        async with State(tmp_path, journal_max_age_s=1, clock=clock) as st:
            await asyncio.gather(*(st.journal.append(b"t", b"", b"")[1] for _ in range(5)))

    async def trim_all() -> None:
        clock.advance(10)
        async with State(tmp_path, journal_max_age_s=1, clock=clock) as st:
            await st.kv("x").put("k", 1)  # any commit applies retention
            j = st.journal
            assert (j.head, j.first_seq, j.read(0)) == (5, 6, [])

    async def check() -> None:
        async with State(tmp_path, journal_max_age_s=1, clock=clock) as st:
            j = st.journal
            assert (j.head, j.first_seq) == (5, 6)
            seq, fut = j.append(b"t", b"", b"")
            assert seq == 6 and await fut == 6

    arun(fill)
    arun(trim_all)
    arun(check)


def test_retention_backlog_is_worked_off_in_bounded_steps(tmp_path: Path) -> None:
    clock = FakeClock()
    n = 5000  # more than one batch's trim budget (2048)

    async def fill() -> None:
        async with State(tmp_path, clock=clock) as st:
            j = st.journal
            await asyncio.gather(*(j.append(b"t", b"", b"e")[1] for _ in range(n)))

    async def expire() -> None:
        clock.advance(120)
        async with State(tmp_path, journal_max_age_s=60, clock=clock) as st:
            j = st.journal
            seq = await j.append(b"t", b"", b"fresh")[1]
            # the first commit dropped at most one budget; the writer finishes unprompted
            await wait_until(lambda: j.first_seq == seq)
            assert [e.body for e in j.read(0)] == [b"fresh"]
            assert st.stats()["journal_entries"] == 1
            assert st.stats()["commits"] >= 3

    arun(fill)
    arun(expire)
