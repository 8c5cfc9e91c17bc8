"""A full map grows up to its cap, then fails writes with StateFullError and stays usable.
A failing op fails alone; the writer keeps going."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from loomd.errors import StateError, StateFullError
from loomd.state import State

from .helpers import LOOPS, arun

MIB = 1 << 20
BLOB = b"z" * 100_000  # 25 overflow pages each


@pytest.mark.parametrize("loop", LOOPS)
def test_map_grows_then_fails_full_and_recovers(tmp_path: Path, loop: str) -> None:
    async def main() -> None:
        # no room kept for the journal: this is about the map itself filling up
        async with State(tmp_path, map_size_mb=1, max_map_size_mb=2, journal_reserve_mb=0) as st:
            kv = st.kv("big")
            assert st.stats()["map_size"] == 1 * MIB
            stored: list[str] = []
            with pytest.raises(StateFullError) as caught:
                for i in range(100):
                    await kv.put(f"b{i:03d}", BLOB)
                    stored.append(f"b{i:03d}")
            assert "state.max_map_size_mb = 2" in str(caught.value)
            assert "2 MiB" in str(caught.value)
            assert st.stats()["map_size"] == 2 * MIB  # grew once, to the cap
            assert len(stored) > 10  # more than a 1 MiB map holds

            # Still full for big writes, but reads and the rest of the store work.
            with pytest.raises(StateFullError):
                await kv.put("again", BLOB)
            with pytest.raises(StateFullError):
                await st.journal.append(b"t", b"", BLOB)[1]
            assert kv.get(stored[0]) == BLOB
            assert len(kv.keys()) == len(stored)
            assert st.stats()["errors"] == 3

            # A mixed batch at the cap: the op that cannot fit fails alone.
            huge = kv.put_nowait("huge", BLOB * 3)
            small = kv.put_nowait("small", 1)
            gone = [asyncio.ensure_future(kv.delete(k)) for k in stored[:6]]
            with pytest.raises(StateFullError):
                await huge
            await small
            assert all(await asyncio.gather(*gone))

            # Space freed: big writes fit again. LMDB reuses pages freed by a transaction
            # only once a later one has committed (the previous snapshot stays intact for
            # crash safety), so with the 0 ms commit window one small write goes first.
            await kv.put("tick", 0)
            await kv.put("again", BLOB)
            assert kv.get("again") == BLOB
            seq = await st.journal.append(b"t", b"", BLOB)[1]
            assert st.journal.read(seq - 1)[0].body == BLOB
            assert st.stats()["map_size"] == 2 * MIB

    arun(main, loop=loop)


def test_full_map_is_kept_after_reopen(tmp_path: Path) -> None:
    async def fill() -> None:
        async with State(tmp_path, map_size_mb=1, max_map_size_mb=4) as st:
            kv = st.kv("big")
            for i in range(25):  # ~2.5 MB: needs two doublings
                await kv.put(f"b{i}", BLOB)
            assert st.stats()["map_size"] == 4 * MIB

    async def check() -> None:
        # Opened with a smaller configured size: LMDB keeps the size on disk.
        async with State(tmp_path, map_size_mb=1, max_map_size_mb=4) as st:
            assert st.stats()["map_size"] == 4 * MIB
            assert len(st.kv("big").keys()) == 25

    arun(fill)
    arun(check)


def test_failing_op_fails_alone_and_the_writer_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with State(tmp_path) as st:
            j = st.journal
            kv = st.kv("k")
            before = [j.append(b"ok", b"", b"%d" % i) for i in range(10)]
            # A str topic gets past the cheap checks in append() and only fails when the
            # writer encodes it, inside a batch with good ops around it.
            bad_seq, bad = j.append("not-bytes", b"", b"")  # type: ignore[arg-type]
            put = kv.put_nowait("k", "v")
            after = [j.append(b"ok", b"", b"%d" % i) for i in range(10)]
            with pytest.raises(StateError) as caught:
                await bad
            assert isinstance(caught.value.__cause__, TypeError)
            good = await asyncio.gather(*(f for _, f in before + after))
            assert good == [s for s, _ in before + after]
            await put
            assert kv.get("k") == "v"
            # the failed seq is a hole, not a reuse
            seqs = [e.seq for e in j.read(0, limit=100)]
            assert bad_seq not in seqs and seqs == sorted(seqs) and len(seqs) == 20
            assert st.stats()["errors"] == 1
            assert await j.append(b"ok", b"", b"later")[1] == bad_seq + 11

    arun(main)


def test_reads_from_another_thread_survive_map_growth(tmp_path: Path) -> None:
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = 0

    async def main() -> None:
        nonlocal reads
        async with State(tmp_path, map_size_mb=1, max_map_size_mb=64) as st:
            kv = st.kv("grow")
            await kv.put("anchor", b"a")

            def reader() -> None:
                nonlocal reads
                try:
                    while not stop.is_set():
                        assert kv.get("anchor") == b"a"
                        for _key, value in kv.items("b"):
                            assert value == BLOB
                        st.journal.read(0, limit=4)
                        reads += 1
                except BaseException as exc:
                    failures.append(exc)

            thread = threading.Thread(target=reader)
            thread.start()
            try:
                for i in range(20):  # ~10 MB: the map doubles 1 -> 16 MiB under the reader
                    await asyncio.gather(*(kv.put(f"b{i}.{k}", BLOB) for k in range(5)))
            finally:
                stop.set()
                await asyncio.to_thread(thread.join)
            assert st.stats()["map_size"] == 16 * MIB
            assert len(kv.keys("b")) == 100

    arun(main)
    assert not failures, failures
    assert reads > 0
