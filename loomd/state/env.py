"""The LMDB environment: named databases, short read transactions, map growth."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType

import lmdb

from loomd.errors import StateError

log = logging.getLogger(__name__)

MIB = 1 << 20
# kv, journal, meta; one spare so a later schema can add a database without a migration.
_MAX_DBS = 4


class MapGuard:
    """Many readers or one remapper.

    py-lmdb's `set_mapsize` silently accepts being called while read transactions are
    open in this process, and then those readers point into an unmapped region. Every
    read transaction is therefore taken under this guard, and the writer takes it
    exclusively only for the rare resize. Writer preference keeps a steady stream of
    reads from starving a resize that a write batch is waiting on.
    """

    __slots__ = ("_cond", "_exclusive", "_readers")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0 and self._exclusive:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()


class _Reading:
    """A read transaction held under the map guard (a class, not a generator: reads are hot)."""

    __slots__ = ("_env", "_txn")

    def __init__(self, env: Env) -> None:
        self._env = env
        self._txn: lmdb.Transaction[bytes] | None = None

    def __enter__(self) -> lmdb.Transaction[bytes]:
        env = self._env
        env.guard.acquire_read()
        try:
            self._txn = env.lmdb.begin()
        except BaseException:
            env.guard.release_read()
            raise
        return self._txn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._txn is not None:
                self._txn.abort()
        finally:
            self._env.guard.release_read()


class Env:
    """One LMDB environment with the databases `kv`, `journal` and `meta`."""

    def __init__(self, path: Path, map_size: int, max_map_size: int) -> None:
        self.path = path
        self.guard = MapGuard()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # sync=True and metasync=True: a returned commit is on disk, which is the whole
        # durability contract. writemap stays off so a stray pointer cannot scribble on
        # the file, and the cost difference is small next to the fsync.
        try:
            env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=_MAX_DBS,
                sync=True,
                metasync=True,
                writemap=False,
                mode=0o600,
            )
        except lmdb.Error as exc:  # e.g. already open in this process, or not an LMDB dir
            raise StateError(f"cannot open state at {path}: {exc}") from exc
        self._env: lmdb.Environment | None = env
        try:
            self.kv = env.open_db(b"kv")
            self.journal = env.open_db(b"journal")
            self.meta = env.open_db(b"meta")
            self.page_size = env.stat()["psize"]
            self.max_key_size = env.max_key_size()
            self._restore_size(map_size, max_map_size)
        except lmdb.Error as exc:
            self.close()
            raise StateError(f"cannot open state at {path}: {exc}") from exc

    def _restore_size(self, map_size: int, max_map_size: int) -> None:
        # LMDB opens a grown file with the configured size raised only to the bytes in
        # use, so the first big write after a restart would hit MapFull again. Replay the
        # doubling instead: the map comes back at the size growth had reached.
        info = self.lmdb.info()
        used = (info["last_pgno"] + 1) * self.page_size
        target = map_size
        while target < used and target < max_map_size:
            target = min(target * 2, max_map_size)
        if target > info["map_size"]:
            self.lmdb.set_mapsize(target)  # no txn is open yet

    @property
    def lmdb(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise StateError(f"state at {self.path} is closed")
        return env

    def reading(self) -> _Reading:
        """A short read transaction: `with env.reading() as txn: ...`."""
        return _Reading(self)

    def sizes(self) -> tuple[int, int]:
        """(map size, bytes up to the highest page in use)."""
        # info() reads the meta pages inside the map, so it must not race a remap.
        self.guard.acquire_read()
        try:
            info = self.lmdb.info()
        finally:
            self.guard.release_read()
        return info["map_size"], (info["last_pgno"] + 1) * self.page_size

    def resize(self, new_size: int) -> None:
        """Grow the map. Only the writer thread calls this, with no write txn open."""
        self.guard.acquire_exclusive()
        try:
            self.lmdb.set_mapsize(new_size)
        finally:
            self.guard.release_exclusive()

    def close(self) -> None:
        self.guard.acquire_exclusive()
        try:
            if self._env is not None:
                self._env.close()
                self._env = None
        finally:
            self.guard.release_exclusive()
