"""The Event and its Envelope.

An Event built from the wire keeps its header and body bytes and decodes them
only when a field is read, so routing never pays for decoding; an Event built
in-process keeps its values and encodes only when it has to leave the process.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import cbor2

from loomd.bus import cbor
from loomd.bus.hop import _ID_MARK, _THREAD_MARK, _TS_MARK, hop_header
from loomd.bus.topics import validate_topic
from loomd.bus.wire import pack_event
from loomd.errors import ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_TTL = 16
MAX_TTL = 255
MAX_HEADER_BYTES = 16 * 1024  # checked before any decoding
MAX_ID_BYTES = 64

_ID_PREFIX = os.urandom(8)
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


class QoS(StrEnum):
    REALTIME = "realtime"
    BATCHED = "batched"
    RELIABLE = "reliable"


QOS_VALUES = frozenset(q.value for q in QoS)
QOS_CLASSES: tuple[str, ...] = tuple(q.value for q in QoS)  # in order, for choices and help


_U64 = struct.Struct(">Q").pack


def new_id() -> bytes:
    """16 bytes, unique: a random per-process prefix plus a counter (no syscall per event;
    the counter starts below 2**32 and would need centuries to reach 2**64)."""
    return _ID_PREFIX + _U64(next(_id_counter))


class _Missing:
    __slots__ = ()


_MISSING: Any = _Missing()


class Event:
    """A bus event: topic, type, payload and the envelope fields (header)."""

    __slots__ = (
        "_body",
        "_hdr",
        "_header_bytes",
        "_payload",
        "_topic_b",
        "caller",
        "topic",
        "wire",
    )

    def __init__(self, topic: str, header: dict[str, Any], payload: Any = None) -> None:
        self.topic = topic
        self._hdr: dict[str, Any] | None = header
        self._payload: Any = payload
        self._header_bytes: bytes | None = None
        self._body: bytes | None = None
        self._topic_b: bytes | None = None
        self.wire: bytes | None = None  # the event frame as received, if it came off a socket
        # Who published it (a `loomd.bus.acl.Caller`), set by the bus in process only: never
        # on the wire, so a client cannot claim one. None from journal replays.
        self.caller: Any = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        topic: str,
        payload: Any = None,
        *,
        type: str | None = None,
        sender: str = "",
        qos: str = QoS.RELIABLE,
        thread_id: bytes | None = None,
        correlation_id: bytes | None = None,
        reply_to: str | None = None,
        ttl: int = DEFAULT_TTL,
        hop: int = 0,
        meta: dict[str, Any] | None = None,
        id: bytes | None = None,
    ) -> Event:
        eid = id or new_id()
        header = _header(
            type or topic,
            eid,
            thread_id or eid,
            correlation_id,
            sender,
            reply_to,
            ttl,
            hop,
            time.time_ns(),
            str(qos),
            "raw" if isinstance(payload, bytes | bytearray | memoryview) else "cbor",
            meta or {},
        )
        return cls(topic, header, payload)

    @classmethod
    def _raw(
        cls,
        topic: str,
        topic_b: bytes | None,
        hdr: dict[str, Any] | None,
        header: bytes | None,
        payload: Any,
        body: bytes | None,
        wire: bytes | None,
    ) -> Event:
        """Every field given: the fast constructors below skip __init__'s defaults."""
        ev = cls.__new__(cls)
        ev.topic, ev._topic_b, ev._hdr, ev._header_bytes = topic, topic_b, hdr, header
        ev._payload, ev._body, ev.wire, ev.caller = payload, body, wire, None
        return ev

    @classmethod
    def from_frames(
        cls, topic: bytes, header: bytes, body: bytes, hdr: dict[str, Any] | None = None
    ) -> Event:
        """An event received from the wire: bytes kept, decoded only when read."""
        return cls._raw(topic.decode(), topic, hdr, header, _MISSING, body, None)

    @classmethod
    def received(
        cls,
        topic: str,
        topic_b: bytes,
        header: bytes,
        body: bytes,
        hdr: dict[str, Any],
        wire: bytes,
    ) -> Event:
        """An event the daemon took off a socket: checked header, the frame kept to forward."""
        return cls._raw(topic, topic_b, hdr, header, _MISSING, body, wire)

    def forwarded(self, sender: str, ttl: int, meta: Mapping[str, Any]) -> Event:
        """This event as `sender` publishes it again (a peer hop, `Bus.forward`): a fresh id
        and time, `ttl`, `meta` over its own meta; its topic, type, qos and body as they
        are (the body is never decoded). The header bytes are cut from a template of the
        new header's shape (`loomd.bus.hop`), not encoded per event."""
        h = self._hdr or self.header  # checked: type, qos and enc are strings
        old = h.get("meta")
        eid = new_id()
        hdr = _header(
            h.get("type") or self.topic,
            eid,
            eid,
            None,
            sender,
            None,
            ttl,
            0,
            time.time_ns(),
            h.get("qos") or "reliable",
            h.get("enc") or "cbor",
            {**old, **meta} if old else dict(meta),
        )
        return Event._raw(
            self.topic,
            self._topic_b or self.topic_bytes(),
            hdr,
            hop_header(hdr),
            self._payload,
            self._body if self._body is not None else self.body_bytes(),
            None,
        )

    # -- wire ---------------------------------------------------------------------------------
    @property
    def header(self) -> dict[str, Any]:
        if self._hdr is None:
            # a header shaped like one seen before is checked by a few byte compares
            self._hdr = check_header(self._header_bytes or b"")
        return self._hdr

    def header_bytes(self) -> bytes:
        """The CBOR header, encoded on first use (in-process events may never need it)."""
        if self._header_bytes is None:
            h = self.header
            eid = h.get("id")
            plain = (
                isinstance(eid, bytes)
                and len(eid) == 16
                and h.get("thread_id") == eid
                and h.get("correlation_id") is None
                and h.get("reply_to") is None
                and not h.get("meta")
                and h.keys() == _HEADER_KEYS
                and type(h.get("ts")) is int
                and h["ts"] >= 1 << 32
            )
            self._header_bytes = _fast_header(h) if plain else cbor2.dumps(h)
        return self._header_bytes

    def body_bytes(self) -> bytes:
        if self._body is None:
            p = self._payload
            if isinstance(p, bytes):
                self._body = p
            elif isinstance(p, bytearray | memoryview):
                self._body = bytes(p)
            else:
                self._body = cbor2.dumps(p)
        return self._body

    def topic_bytes(self) -> bytes:
        if self._topic_b is None:
            self._topic_b = self.topic.encode()
        return self._topic_b

    def frames(self) -> list[bytes]:
        """The logical wire parts `[topic, header, body]`."""
        return [self.topic_bytes(), self.header_bytes(), self.body_bytes()]

    def to_wire(self) -> bytes:
        """The single socket frame for this event (see loomd.bus.wire)."""
        if self.wire is None:
            # imported at the top: an import statement here cost ~1 us on every publish
            # (18 % of an SDK publisher's time, `docs/perf/bus-realtime64-pub.svg`)
            self.wire = pack_event(self.topic_bytes(), self.header_bytes(), self.body_bytes())
        return self.wire

    @property
    def size(self) -> int:
        """Bytes this event holds while queued: its frame if it came off a socket, else its
        body (when encoded) plus a flat allowance for the header and the object."""
        w = self.wire
        if w is not None:
            return len(w)
        if self._body is not None:
            return 256 + len(self._body)
        p = self._payload
        return 256 + (len(p) if isinstance(p, bytes | bytearray) else 0)

    # -- fields -------------------------------------------------------------------------------
    @property
    def payload(self) -> Any:
        if self._payload is _MISSING:
            body = self._body or b""
            if self.header.get("enc") == "raw":
                self._payload = body
            else:
                self._payload = cbor.loads(body, cbor.BODY, "body")
        return self._payload

    @property
    def type(self) -> str:
        return str(self.header.get("type") or self.topic)

    @property
    def id(self) -> bytes:
        return bytes(self.header.get("id") or b"")

    @property
    def thread_id(self) -> bytes:
        return bytes(self.header.get("thread_id") or self.id)

    @property
    def correlation_id(self) -> bytes | None:
        return self.header.get("correlation_id")

    @property
    def sender(self) -> str:
        return str(self.header.get("sender") or "")

    @property
    def reply_to(self) -> str | None:
        return self.header.get("reply_to")

    @property
    def ttl(self) -> int:
        return int(self.header.get("ttl", DEFAULT_TTL))

    @property
    def hop(self) -> int:
        return int(self.header.get("hop", 0))

    @property
    def ts(self) -> int:
        return int(self.header.get("ts", 0))

    @property
    def qos(self) -> str:
        return str(self.header.get("qos", QoS.RELIABLE))

    @property
    def meta(self) -> dict[str, Any]:
        m = self.header.get("meta")
        return m if isinstance(m, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (ids as hex, raw payloads as their length, a body the
        bounded decoder refuses as the reason)."""
        try:
            payload = self.payload
        except ProtocolError as exc:
            payload = {"undecodable": str(exc), "bytes": len(self._body or b"")}
        if isinstance(payload, bytes):
            payload = {"raw_bytes": len(payload)}
        cid = self.correlation_id
        return {
            "topic": self.topic,
            "type": self.type,
            "id": self.id.hex(),
            "thread_id": self.thread_id.hex(),
            "correlation_id": cid.hex() if cid else None,
            "sender": self.sender,
            "reply_to": self.reply_to,
            "ttl": self.ttl,
            "hop": self.hop,
            "ts": self.ts,
            "qos": self.qos,
            "meta": self.meta,
            "payload": payload,
        }

    def __repr__(self) -> str:
        return f"Event(topic={self.topic!r}, id={self.id.hex()[:12]})"


# Encoding a 13-key CBOR map costs more than everything else on the publish path, and
# a plain event differs from the previous one only in id, thread_id and ts. So the
# header is encoded once per shape with placeholders, and later events patch bytes.
# (The placeholders are loomd.bus.hop's: one set for both kinds of template.)


def _header(
    type: str,
    eid: bytes,
    thread_id: bytes,
    correlation_id: bytes | None,
    sender: str,
    reply_to: str | None,
    ttl: int,
    hop: int,
    ts: int,
    qos: str,
    enc: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The header map: the one place its keys are spelled out."""
    return {
        "v": PROTOCOL_VERSION,
        "type": type,
        "id": eid,
        "thread_id": thread_id,
        "correlation_id": correlation_id,
        "sender": sender,
        "reply_to": reply_to,
        "ttl": ttl,
        "hop": hop,
        "ts": ts,
        "qos": qos,
        "enc": enc,
        "meta": meta,
    }


_HEADER_KEYS = frozenset(_header("", b"", b"", None, "", None, 0, 0, 0, "", "", {}))
_templates: dict[tuple[Any, ...], tuple[bytes, int, int, int]] = {}


def _template(header: dict[str, Any]) -> tuple[bytes, int, int, int]:
    key = (
        header["type"],
        header["sender"],
        header["qos"],
        header["enc"],
        header["ttl"],
        header["hop"],
    )
    tpl = _templates.get(key)
    if tpl is None:
        raw = cbor2.dumps({**header, "id": _ID_MARK, "thread_id": _THREAD_MARK, "ts": _TS_MARK})
        ts_at = raw.index(_TS_MARK.to_bytes(8, "big"))
        tpl = (raw, raw.index(_ID_MARK), raw.index(_THREAD_MARK), ts_at)
        if len(_templates) > 256:
            _templates.clear()
        _templates[key] = tpl
    return tpl


def _fast_header(header: dict[str, Any]) -> bytes:
    raw, id_at, thread_at, ts_at = _template(header)
    eid = header["id"]
    return b"".join(
        (
            raw[:id_at],
            eid,
            raw[id_at + 16 : thread_at],
            eid,
            raw[thread_at + 16 : ts_at],
            header["ts"].to_bytes(8, "big"),
            raw[ts_at + 8 :],
        )
    )


_segs_cache: dict[tuple[Any, ...], tuple[bytes, bytes, bytes, bytes]] = {}


def plain_event(topic: str, payload: Any, type: str, sender: str, qos: str, ttl: int) -> Event:
    """`Event.create` for the common case (no thread, correlation, reply_to or meta), as
    the SDK's publish path uses it: the header bytes come straight from the template and
    the header map is only built if someone reads it."""
    enc = "raw" if isinstance(payload, bytes | bytearray | memoryview) else "cbor"
    key = (type, sender, qos, enc, ttl, 0)
    segs = _segs_cache.get(key)
    if segs is None:
        raw, id_at, th_at, ts_at = _template(
            _header(type, b"", b"", None, sender, None, ttl, 0, 0, qos, enc, {})
        )
        segs = (raw[:id_at], raw[id_at + 16 : th_at], raw[th_at + 16 : ts_at], raw[ts_at + 8 :])
        if len(_segs_cache) > 256:
            _segs_cache.clear()
        _segs_cache[key] = segs
    eid = new_id()
    header = b"".join((segs[0], eid, segs[1], eid, segs[2], _U64(time.time_ns()), segs[3]))
    return Event._raw(topic, None, None, header, payload, None, None)


# Known-good header shapes, by length: (segments outside id/thread_id/ts, decoded
# template, offsets). A header equal to a shape outside those three fixed-width fields
# is valid by construction (16-byte strings and an 8-byte uint are valid anywhere), so
# the daemon validates it with a few byte compares instead of a full CBOR decode.
_Shape = tuple[tuple[bytes, bytes, bytes, bytes], dict[str, Any], int, int, int]
_shapes: dict[int, list[_Shape]] = {}
_MAX_SHAPES = 256


def _segments(data: bytes, id_at: int, th_at: int, ts_at: int) -> tuple[bytes, bytes, bytes, bytes]:
    return data[:id_at], data[id_at + 16 : th_at], data[th_at + 16 : ts_at], data[ts_at + 8 :]


def check_header(data: bytes) -> dict[str, Any]:
    """`decode_header`, with a fast path for headers shaped like ones seen before."""
    for segs, tdict, id_at, th_at, ts_at in _shapes.get(len(data), ()):
        if (
            data[ts_at + 8 :] == segs[3]
            and data[:id_at] == segs[0]
            and data[id_at + 16 : th_at] == segs[1]
            and data[th_at + 16 : ts_at] == segs[2]
        ):
            hdr = tdict.copy()
            hdr["id"] = data[id_at : id_at + 16]
            hdr["thread_id"] = data[th_at : th_at + 16]
            hdr["ts"] = int.from_bytes(data[ts_at : ts_at + 8], "big")
            hdr["meta"] = {}  # never share the template's dict with a consumer
            return hdr
    hdr = decode_header(data)
    _learn_shape(data, hdr)
    return hdr


def _learn_shape(data: bytes, hdr: dict[str, Any]) -> None:
    """Remember the shape of a valid header if it is encoded exactly as ours are."""
    eid, tid, ts = hdr.get("id"), hdr.get("thread_id"), hdr.get("ts")
    if not (
        hdr.keys() == _HEADER_KEYS
        and isinstance(eid, bytes)
        and len(eid) == 16
        and isinstance(tid, bytes)
        and len(tid) == 16
        and type(ts) is int
        and 1 << 32 <= ts < 1 << 64
        and hdr["correlation_id"] is None
        and hdr["reply_to"] is None
        and hdr["meta"] == {}
        and isinstance(hdr["type"], str)
        and isinstance(hdr["sender"], str)
    ):
        return
    raw, id_at, th_at, ts_at = _template(hdr)
    segs = _segments(raw, id_at, th_at, ts_at)
    if len(raw) != len(data) or _segments(data, id_at, th_at, ts_at) != segs:
        return  # valid, but encoded differently from ours (another client library)
    if sum(len(v) for v in _shapes.values()) >= _MAX_SHAPES:
        _shapes.clear()
    tdict = {k: v for k, v in hdr.items() if k not in ("id", "thread_id", "ts")}
    _shapes.setdefault(len(data), []).append((segs, tdict, id_at, th_at, ts_at))


def decode_header(data: bytes) -> dict[str, Any]:
    """Decode and check a header; raise ProtocolError on anything off-contract. Types are
    checked exactly (`type(x) is int`): a version of `true` or `1.0` is not version 1."""
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError("malformed header", f"{len(data)} bytes > {MAX_HEADER_BYTES}")
    hdr = cbor.loads(data, cbor.HEADER, "header")
    if not isinstance(hdr, dict):
        raise ProtocolError("malformed header", "not a CBOR map")
    v = hdr.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported protocol version", f"{v!r} (this daemon speaks {PROTOCOL_VERSION})"
        )
    ttl = hdr.get("ttl", DEFAULT_TTL)
    hop = hdr.get("hop", 0)
    if type(ttl) is not int or type(hop) is not int or not 0 <= hop <= 255:
        raise ProtocolError("malformed header", "ttl and hop must be small integers")
    if not -1 <= ttl <= MAX_TTL:
        raise ProtocolError("malformed header", f"ttl {ttl} outside -1..{MAX_TTL}")
    qos = hdr.get("qos", "reliable")
    if type(qos) is not str or qos not in QOS_VALUES:
        raise ProtocolError("malformed header", f"unknown qos {qos!r}")
    for key in ("id", "thread_id", "correlation_id"):
        value = hdr.get(key)
        if value is not None and (type(value) is not bytes or len(value) > MAX_ID_BYTES):
            raise ProtocolError("malformed header", f"{key} must be bytes (at most {MAX_ID_BYTES})")
    for key in ("type", "sender", "reply_to"):
        value = hdr.get(key)
        if value is not None and (type(value) is not str or len(value) > 255):
            raise ProtocolError("malformed header", f"{key} must be a string of <= 255 chars")
    ts = hdr.get("ts", 0)
    if type(ts) is not int or not 0 <= ts < 1 << 64:
        raise ProtocolError("malformed header", "ts must be an unsigned 64-bit integer")
    meta = hdr.get("meta")
    if meta is not None and type(meta) is not dict:
        raise ProtocolError("malformed header", "meta must be a map")
    enc = hdr.get("enc", "cbor")
    if type(enc) is not str or enc not in ("cbor", "raw"):
        raise ProtocolError("malformed header", f"unknown body encoding {enc!r}")
    return hdr


def peek_qos(data: bytes) -> str | None:
    """The qos a (possibly invalid) header asks for, if it can be read at bounded cost: so
    a rejected reliable publish still takes its place in the ack count."""
    if len(data) > MAX_HEADER_BYTES:
        return None
    try:
        hdr = cbor.loads(data, cbor.HEADER, "header")
    except ProtocolError:
        return None
    qos = hdr.get("qos", "reliable") if isinstance(hdr, dict) else None
    return qos if type(qos) is str else None


def check_outgoing(topic: str, qos: QoS | str, ttl: int) -> None:
    """What the daemon would refuse in an event a part is about to publish (its topic, ttl
    and qos), raised before anything is sent: `Bus.publish` checks with it, in process and
    over the socket."""
    validate_topic(topic)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not -1 <= ttl <= MAX_TTL:
        raise ProtocolError("invalid ttl", f"{ttl!r}: expected an int in -1..{MAX_TTL}")
    if str(qos) not in QOS_VALUES:
        raise ProtocolError("invalid qos", f"{qos!r}: expected realtime, batched or reliable")
