"""Durability across SIGKILL: whatever a child saw acknowledged is there after reopen."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from loomd.state import State

from .helpers import arun

CHILD = Path(__file__).with_name("crash_child.py")
REPO = Path(__file__).resolve().parents[2]


def run_child_until(path: Path, run: int, acks: int, deadline_s: float = 15.0) -> str:
    """Start a writer child, SIGKILL it once it has printed `acks` acks, return its stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out = bytearray()
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + deadline_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while out.count(b"\n") < acks + 1:  # +1 for READY
                left = deadline - time.monotonic()
                assert left > 0, f"child too slow: {bytes(out)[-200:]!r}"
                if sel.select(timeout=left):
                    chunk = os.read(fd, 65536)
                    assert chunk, f"child exited early: {proc.communicate()[1].decode()}"
                    out += chunk
        proc.send_signal(signal.SIGKILL)  # mid-stream: the child is writing continuously
        rest, err = proc.communicate(timeout=10)
        out += rest
        assert proc.returncode == -signal.SIGKILL, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out.decode()


def parse(out: str) -> tuple[int, dict[int, int], dict[str, int]]:
    lines = out.split("\n")[:-1]  # the last piece may be cut by the kill
    assert lines[0].startswith("READY ")
    journal: dict[int, int] = {}
    kv: dict[str, int] = {}
    for line in lines[1:]:
        kind, name, value = line.split()
        if kind == "J":
            journal[int(name)] = int(value)
        else:
            kv[name] = int(value)
    return int(lines[0].split()[1]), journal, kv


async def check_acked(
    path: Path, run: int, head_at_start: int, journal: dict[int, int], kv: dict[str, int]
) -> int:
    async with State(path) as st:
        j, store = st.journal, st.kv("crash")
        entries = {e.seq: e for e in j.read(head_at_start, limit=len(journal) + 100_000)}
        for seq, i in journal.items():
            assert seq > head_at_start
            assert entries[seq].body == b"%d" % i
            assert entries[seq].header == b"r%d" % run
        for key, i in kv.items():
            assert store.get(key) == i, key
        # No failures in a run, so seqs are dense: what is stored is a gap-free prefix
        # of what was queued, and the next run continues after it.
        assert sorted(entries) == list(range(head_at_start + 1, j.head + 1))
        return j.head


def test_acked_writes_survive_sigkill(tmp_path: Path) -> None:
    last_head = 0
    for run, acks in enumerate([25, 100, 400, 1000, 1500, 3000, 4500, 6000]):
        head_at_start, journal, kv = parse(run_child_until(tmp_path, run, acks))
        assert head_at_start == last_head
        assert journal and kv
        last_head = arun(partial(check_acked, tmp_path, run, head_at_start, journal, kv))
        assert last_head >= max(journal)
