"""Key-value namespaces: str keys, CBOR values, in the shared `kv` database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import cbor2

from loomd.errors import InvalidKey, StateError
from loomd.state.env import Env
from loomd.state.records import KV_SEP, kv_prefix
from loomd.state.writer import DELETE, PUT, Writer


class StateQuotaError(StateError):
    """A write would take a namespace, or the KV as a whole, over its byte quota."""

    code = "quota"


class Quota:
    """Bytes held per namespace (keys + values), written per identity, and in all of the
    KV, with their limits. Counted once at open, then kept by every put and delete, so that
    no one namespace, no one identity (namespace after namespace) and not the KV as a whole
    can fill the store that the durable journal needs too. And whatever the counts say
    (LMDB's pages hold more than the bytes: large values need runs of free pages), a write
    that would leave the map less than the journal's reserve is refused (`room`)."""

    def __init__(
        self,
        namespace_limit: int,
        total_limit: int,
        identity_limit: int = 1 << 62,
        room: Callable[[], int] | None = None,
    ) -> None:
        self.namespace_limit = namespace_limit
        self.total_limit = total_limit
        self.identity_limit = identity_limit
        self.room = room  # bytes the map may still give to state, the journal's reserve kept
        self.used: dict[str, int] = {}
        self.by_identity: dict[str, int] = {}  # net bytes written since the daemon started
        self.total = 0
        self.refused = 0

    def load(self, env: Env) -> None:
        """Sum what is stored (call off the loop at open: it reads every key)."""
        used: dict[str, int] = {}
        with env.reading() as txn:
            cur = txn.cursor(db=env.kv)
            for key, value in cur.iternext(keys=True, values=True):
                ns = bytes(key).split(KV_SEP, 1)[0].decode(errors="replace")
                used[ns] = used.get(ns, 0) + len(key) + len(value)
        self.used, self.total = used, sum(used.values())

    def charge(self, namespace: str, delta: int, who: str | None = None) -> None:
        """Count `delta` bytes for `namespace` (and for the identity `who`, when a client
        that is not a superuser writes); raise StateQuotaError, counting nothing, if a
        limit would be passed."""
        if delta > 0:
            mine = self.by_identity.get(who, 0) if who is not None else 0
            if who is not None and mine + delta > self.identity_limit:
                self.refused += 1
                raise StateQuotaError(
                    f"{who} would hold {mine + delta} bytes of state across its namespaces "
                    f"(state.identity_max_mb allows {self.identity_limit})"
                )
            ns_used = self.used.get(namespace, 0)
            if ns_used + delta > self.namespace_limit:
                self.refused += 1
                raise StateQuotaError(
                    f"namespace {namespace!r} would hold {ns_used + delta} bytes "
                    f"(state.namespace_max_mb allows {self.namespace_limit})"
                )
            if self.total + delta > self.total_limit:
                self.refused += 1
                raise StateQuotaError(
                    f"the key-value store would hold {self.total + delta} bytes "
                    f"(state.kv_max_mb allows {self.total_limit})"
                )
            room = self.room() if self.room is not None else delta
            if delta > room:
                self.refused += 1
                raise StateQuotaError(
                    f"the state store is nearly full: {max(room, 0)} bytes left for state, the "
                    "rest is kept for the durable journal (state.journal_max_mb, at most a "
                    "quarter of state.max_map_size_mb)"
                )
        self.used[namespace] = self.used.get(namespace, 0) + delta
        self.total += delta
        if who is not None:
            self.by_identity[who] = max(0, self.by_identity.get(who, 0) + delta)


class KV:
    """One namespace. Reads are direct; writes go through the group-commit writer and
    their futures resolve only once durable. Write from the event loop thread."""

    def __init__(
        self, env: Env, writer: Writer, namespace: str, quota: Quota | None = None
    ) -> None:
        self._env = env
        self._writer = writer
        self.namespace = namespace
        self._prefix = kv_prefix(namespace)
        self._quota = quota

    def _key(self, key: str) -> bytes:
        if not isinstance(key, str) or not key:
            raise InvalidKey(f"KV key must be a non-empty str, got {key!r}")
        raw = self._prefix + key.encode()
        if len(raw) > self._env.max_key_size:
            raise InvalidKey(
                f"KV key too long: {len(raw)} bytes with its namespace, "
                f"LMDB allows {self._env.max_key_size}"
            )
        return raw

    def get(self, key: str, default: Any = None) -> Any:
        raw_key = self._key(key)
        with self._env.reading() as txn:
            raw = txn.get(raw_key, db=self._env.kv)
        return default if raw is None else cbor2.loads(raw)

    def _scan(self, prefix: str) -> list[tuple[bytes, bytes]]:
        start = self._prefix + prefix.encode()
        found: list[tuple[bytes, bytes]] = []
        with self._env.reading() as txn:
            cur = txn.cursor(db=self._env.kv)
            if cur.set_range(start):
                for key, value in cur:
                    if not key.startswith(start):
                        break
                    found.append((key, value))
        return found

    def _scan_keys(self, prefix: str) -> list[bytes]:
        # keys only: values (possibly large) are never copied out of the map
        start = self._prefix + prefix.encode()
        found: list[bytes] = []
        with self._env.reading() as txn:
            cur = txn.cursor(db=self._env.kv)
            if cur.set_range(start):
                for key in cur.iternext(values=False):
                    if not key.startswith(start):
                        break
                    found.append(key)
        return found

    def keys(self, prefix: str = "") -> list[str]:
        cut = len(self._prefix)
        return [key[cut:].decode() for key in self._scan_keys(prefix)]

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        cut = len(self._prefix)
        # decoded after the read txn, so the map guard is held only for the copy
        return [(key[cut:].decode(), cbor2.loads(value)) for key, value in self._scan(prefix)]

    def put_nowait(self, key: str, value: Any, *, who: str | None = None) -> asyncio.Future[None]:
        """Queue a put; the future resolves once durable. Encodes now, in the caller,
        so a value CBOR cannot encode raises here (cbor2.CBOREncodeError). `who`: the
        identity (a client's label) whose state quota the write counts against."""
        raw_key = self._key(key)
        raw = cbor2.dumps(value)
        size = len(raw_key) + len(raw)
        delta = size - self._stored(raw_key)
        self._charge(delta, who)
        fut: asyncio.Future[None] = self._writer.submit(PUT, raw_key, raw, size)
        self._refund_on_failure(fut, delta, who)
        return fut

    def _stored(self, raw_key: bytes) -> int:
        """Bytes `raw_key` holds now (0 if absent): what a write replaces."""
        if self._quota is None:
            return 0
        with self._env.reading() as txn:
            old = txn.get(raw_key, db=self._env.kv)
        return 0 if old is None else len(raw_key) + len(old)

    def _charge(self, delta: int, who: str | None) -> None:
        if self._quota is not None:
            self._quota.charge(self.namespace, delta, who)

    def _refund_on_failure(self, fut: asyncio.Future[Any], delta: int, who: str | None) -> None:
        quota = self._quota
        if quota is None or not delta:
            return

        def settled(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                quota.charge(self.namespace, -delta, who)

        fut.add_done_callback(settled)

    async def put(self, key: str, value: Any, *, who: str | None = None) -> None:
        """Store `value`; returns once the txn holding it is fsynced."""
        await self.put_nowait(key, value, who=who)

    async def delete(self, key: str, *, who: str | None = None) -> bool:
        """Remove `key`; True if it existed. Returns once durable."""
        raw_key = self._key(key)
        delta = -self._stored(raw_key)
        self._charge(delta, who)
        fut: asyncio.Future[bool] = self._writer.submit(DELETE, raw_key, None, 0)
        self._refund_on_failure(fut, delta, who)
        return await fut
