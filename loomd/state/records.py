"""On-disk formats: journal keys and entries, KV keys. Pure functions, no I/O."""

from __future__ import annotations

import struct
from typing import NamedTuple

from loomd.errors import InvalidKey

# Big-endian so LMDB's bytewise key order is numeric order and appends stay at the tail.
SEQ = struct.Struct(">Q")
# ts_ns, len(topic), len(header); the body is the rest, so it needs no length of its own.
_ENTRY_HEAD = struct.Struct(">QII")
_HEAD_SIZE = _ENTRY_HEAD.size
_pack_head = _ENTRY_HEAD.pack
_unpack_head = _ENTRY_HEAD.unpack_from
_TS = struct.Struct(">Q")

KV_SEP = b"\x00"


class JournalEntry(NamedTuple):
    seq: int
    ts_ns: int
    topic: bytes
    header: bytes
    body: bytes


def encode_entry(ts_ns: int, topic: bytes, header: bytes, body: bytes) -> bytes:
    return b"".join((_pack_head(ts_ns, len(topic), len(header)), topic, header, body))


def decode_entry(seq: int, raw: bytes) -> JournalEntry:
    ts_ns, n_topic, n_header = _unpack_head(raw)
    start = _HEAD_SIZE + n_topic
    end = start + n_header
    return JournalEntry(seq, ts_ns, raw[_HEAD_SIZE:start], raw[start:end], raw[end:])


def entry_ts(raw: bytes | memoryview) -> int:
    """The timestamp alone, so retention need not copy a large body out of the map."""
    ts: int = _TS.unpack_from(raw)[0]
    return ts


def kv_prefix(namespace: str) -> bytes:
    """Namespaces share the `kv` database: `namespace NUL key`, NUL being barred in names."""
    if not isinstance(namespace, str) or not namespace or "\x00" in namespace:
        raise InvalidKey(f"KV namespace must be a non-empty str without NUL, got {namespace!r}")
    return namespace.encode() + KV_SEP
