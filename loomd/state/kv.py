"""Key-value namespaces: str keys, CBOR values, in the shared `kv` database."""

from __future__ import annotations

import asyncio
from typing import Any

import cbor2

from loomd.errors import InvalidKey
from loomd.state.env import Env
from loomd.state.records import kv_prefix
from loomd.state.writer import DELETE, PUT, Writer


class KV:
    """One namespace. Reads are direct; writes go through the group-commit writer and
    their futures resolve only once durable. Write from the event loop thread."""

    def __init__(self, env: Env, writer: Writer, namespace: str) -> None:
        self._env = env
        self._writer = writer
        self.namespace = namespace
        self._prefix = kv_prefix(namespace)

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

    def put_nowait(self, key: str, value: Any) -> asyncio.Future[None]:
        """Queue a put; the future resolves once durable. Encodes now, in the caller,
        so a value CBOR cannot encode raises here (cbor2.CBOREncodeError)."""
        raw_key = self._key(key)
        raw = cbor2.dumps(value)
        fut: asyncio.Future[None] = self._writer.submit(PUT, raw_key, raw, len(raw_key) + len(raw))
        return fut

    async def put(self, key: str, value: Any) -> None:
        """Store `value`; returns once the txn holding it is fsynced."""
        await self.put_nowait(key, value)

    async def delete(self, key: str) -> bool:
        """Remove `key`; True if it existed. Returns once durable."""
        fut: asyncio.Future[bool] = self._writer.submit(DELETE, self._key(key), None, 0)
        return await fut
