"""`State`: the daemon's one LMDB environment, its writer thread, KV and journal."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from loomd.errors import ConfigError, StateError
from loomd.state.env import MIB, Env
from loomd.state.journal import Journal
from loomd.state.kv import KV, Quota
from loomd.state.ledger import Ledger, Retention, load_ledger
from loomd.state.writer import Writer

log = logging.getLogger(__name__)


class State:
    """One per daemon: `async with State(path) as state: state.kv("agent.x") ...`."""

    def __init__(
        self,
        path: Path,
        *,
        map_size_mb: int = 64,
        max_map_size_mb: int = 1024,
        commit_window_ms: float = 0.0,
        journal_max_mb: int = 64,
        journal_max_age_s: float = 86400.0,
        namespace_max_mb: int = 16,
        kv_max_mb: int = 256,
        identity_max_mb: int = 64,
        journal_reserve_mb: float | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if map_size_mb < 1:
            raise ConfigError("state.map_size_mb", map_size_mb, "an integer >= 1")
        if max_map_size_mb < map_size_mb:
            raise ConfigError(
                "state.max_map_size_mb", max_map_size_mb, f">= state.map_size_mb ({map_size_mb})"
            )
        if commit_window_ms < 0:
            raise ConfigError("state.commit_window_ms", commit_window_ms, "a number >= 0")
        if journal_max_mb < 1:
            raise ConfigError("state.journal_max_mb", journal_max_mb, "an integer >= 1")
        if journal_max_age_s <= 0:
            raise ConfigError("state.journal_max_age_s", journal_max_age_s, "a number > 0")
        self.path = Path(path)
        self._map_size = map_size_mb * MIB
        self._max_map_size = max_map_size_mb * MIB
        self._window_s = commit_window_ms / 1e3
        self._retention = Retention(journal_max_mb * MIB, int(journal_max_age_s * 1e9))
        self._clock = clock
        self._env: Env | None = None
        self._writer: Writer | None = None
        self._journal: Journal | None = None
        self._kvs: dict[str, KV] = {}
        # the journal's room, which state may not take: what its retention lets it hold,
        # but never more than a quarter of the map
        reserve = journal_reserve_mb if journal_reserve_mb is not None else journal_max_mb
        self._reserve = int(min(reserve * MIB, self._max_map_size // 4))
        self.quota = Quota(
            namespace_max_mb * MIB,
            kv_max_mb * MIB,
            identity_max_mb * MIB,
            self._state_room if self._reserve else None,  # 0: the map may fill (tests)
        )

    def _state_room(self) -> int:
        """Bytes a state write may still take: the map's limit less the pages in use and
        the journal's reserve (pages in use is a high-water mark: conservative)."""
        if self._env is None:
            return 1 << 62
        return self._max_map_size - self._env.sizes()[1] - self._reserve

    def _open(self) -> tuple[Env, Ledger]:
        env = Env(self.path, self._map_size, self._max_map_size)
        try:
            with env.reading() as txn:
                ledger = load_ledger(txn, env.journal, env.meta)
            self.quota.load(env)
        except BaseException:
            env.close()
            raise
        return env, ledger

    async def __aenter__(self) -> State:
        if self._writer is not None:
            raise StateError("State is already open")
        loop = asyncio.get_running_loop()
        # Opening maps the file and reads the journal bounds: disk I/O, off the loop.
        env, ledger = await asyncio.to_thread(self._open)
        writer = Writer(
            env,
            loop,
            ledger,
            retention=self._retention,
            clock=self._clock,
            commit_window_s=self._window_s,
            max_map_size=self._max_map_size,
        )
        writer.start()
        self._env, self._writer = env, writer
        self._journal = Journal(env, writer, self._clock)
        log.info(
            "state open at %s: map %d MiB, journal seqs %d..%d",
            self.path,
            env.sizes()[0] // MIB,
            ledger.first_seq,
            ledger.head,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        env, writer = self._env, self._writer
        if env is None or writer is None:
            return
        try:
            await writer.stop()  # everything queued before this point gets committed
        finally:
            # Also on cancellation: the env must not close under a live write txn, and
            # the thread is at most one commit away from exiting.
            writer.join()
            env.close()
            self._kvs.clear()
            self._env = self._writer = self._journal = None
            log.info("state closed at %s", self.path)

    def _require(self) -> tuple[Env, Writer]:
        if self._env is None or self._writer is None:
            raise StateError(f"state at {self.path} is not open")
        return self._env, self._writer

    def kv(self, namespace: str) -> KV:
        env, writer = self._require()
        kv = self._kvs.get(namespace)
        if kv is None:
            kv = self._kvs[namespace] = KV(env, writer, namespace, self.quota)
        return kv

    @property
    def journal(self) -> Journal:
        self._require()
        assert self._journal is not None
        return self._journal

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and `loomctl status`. `commits` counts txns, `writes` ops
        committed, `errors` ops failed, `pending` ops queued but not yet settled."""
        env, writer = self._require()
        map_size, used = env.sizes()
        ledger = writer.ledger
        return {
            "path": str(self.path),
            "map_size": map_size,
            "used_bytes": used,
            "journal_entries": ledger.entries,
            "journal_bytes": ledger.nbytes,
            "journal_first_seq": ledger.first_seq,
            "journal_head": ledger.head,
            "commits": writer.commits,
            "writes": writer.writes,
            "last_commit_ms": writer.last_commit_ms,
            "errors": writer.errors,
            "pending": writer.pending,
            "kv_bytes": self.quota.total,
            "kv_namespaces": len(self.quota.used),
            "quota_refused": self.quota.refused,
        }
