"""The MQTT outbox deletes acknowledged entries in groups: a burst of PUBACKs costs one
commit, not one each; a clean stop commits what is pending; nothing unacknowledged goes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import uvloop

from loomd.bridges import outbox as outbox_mod
from loomd.bridges.outbox import NAMESPACE, Outbox
from loomd.state import State


def test_acknowledged_entries_leave_lmdb_in_one_commit_and_a_stop_commits_the_rest(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with State(tmp_path) as st:
            kv = st.kv(NAMESPACE)
            box = Outbox(kv, 100, 3600.0)
            entries = [box.add(f"t/{i}", b"x", 1, False) for i in range(10)]
            await asyncio.gather(*(e.written for e in entries if e and e.written))
            deleter = asyncio.ensure_future(box.run_deletes())
            try:
                writer = st._writer
                assert writer is not None
                before = writer.commits
                for e in entries[:8]:  # PUBACKs one by one, the writer idle in between
                    assert e is not None
                    box.remove(e.seq)
                    for _ in range(3):  # the deleter's turn, had it anything to submit now
                        await asyncio.sleep(0)
                    async with asyncio.timeout(5):
                        while writer.pending:  # noqa: ASYNC110
                            await asyncio.sleep(0.001)
                async with asyncio.timeout(5):
                    while len(kv.items()) != 2:  # noqa: ASYNC110
                        await asyncio.sleep(outbox_mod.DELETE_GROUP_S / 5)
                # the eight deletes: one group (the writer may split a group it caught half-
                # queued: two at most), not eight commits
                assert writer.commits - before <= 2, writer.commits - before
                assert [k for k, _ in kv.items()] == [
                    outbox_mod._key(e.seq) for e in entries[8:] if e
                ]
                e9 = entries[9]
                assert e9 is not None
                box.remove(e9.seq)
            finally:
                deleter.cancel()
                await asyncio.gather(deleter, return_exceptions=True)
            await box.flush()  # the daemon's stop: what is acknowledged is gone
            e8 = entries[8]
            assert e8 is not None
            assert [k for k, _ in kv.items()] == [outbox_mod._key(e8.seq)]  # unacked: kept

    uvloop.run(main())
