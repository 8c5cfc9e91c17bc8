"""The socket wire: each message is ONE ZeroMQ frame holding `[topic, header, body]`.

Why not a ZeroMQ multipart message per event: libzmq (4.3.5, bundled with pyzmq 27)
aborts the *reading* process with `Assertion failed: !_more (src/fq.cpp:80)` when a
peer dies in the middle of a multipart message (a kill -9 under load cuts the stream
between parts). The daemon must survive any client crash, and clients any daemon
crash, so every message is a single frame, which libzmq delivers whole or not at all.
See docs/design/wire.md.

Layout (big-endian):
    event    0x01 | topic_len u8 | topic | header_len u32 | header (CBOR) | body
    control  0x02 | CBOR map
    delivery 0x03 | sid u32 | seq i64 | flags u8 | then as an event after its kind byte
    batch    0x04 | (len u32 | event or delivery frame)*   several messages in one frame
The topic stays first after the kind byte, so a prefix match on bytes still works.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

from loomd.bus import cbor
from loomd.errors import ProtocolError

EVENT = 0x01
CONTROL = 0x02
DELIVERY = 0x03
BATCH = 0x04

_TAG = struct.Struct(">BIqB")  # kind, sid, seq, flags
_HLEN = struct.Struct(">I")
DURABLE = 0x01
# Ids on the wire: a subscription id is a u32 in delivery frames; control ids (rid) and
# sequence numbers must fit an i64. Anything outside is refused at the edge.
MAX_SID = (1 << 32) - 1
MAX_I64 = (1 << 63) - 1
# Reliable deliveries a subscriber may hold unacknowledged, and reliable publishes a
# client may have in flight, unless the hello/subscription says otherwise.
DEFAULT_CREDIT_WINDOW = 1024


def pack_event(topic: bytes, header: bytes, body: bytes) -> bytes:
    return b"".join((bytes((EVENT, len(topic))), topic, _HLEN.pack(len(header)), header, body))


def pack_delivery(sid: int, seq: int, topic: bytes, header: bytes, body: bytes) -> bytes:
    return b"".join(
        (
            _TAG.pack(DELIVERY, sid, seq, DURABLE if seq > 0 else 0),
            bytes((len(topic),)),
            topic,
            _HLEN.pack(len(header)),
            header,
            body,
        )
    )


def deliveries(items: list[tuple[int, Any]], sid: int) -> list[bytes]:
    """Delivery frames for (seq, Event) pairs, all for one subscription. An event that came
    off a socket reuses the publisher's frame (only the kind byte is replaced)."""
    pack = _TAG.pack
    out = []
    for seq, ev in items:
        frame = ev.wire
        if frame is not None:
            out.append(pack(DELIVERY, sid, seq, DURABLE if seq > 0 else 0) + memoryview(frame)[1:])
        else:
            out.append(
                pack_delivery(sid, seq, ev.topic_bytes(), ev.header_bytes(), ev.body_bytes())
            )
    return out


def pack_control(msg: dict[str, Any]) -> bytes:
    return bytes((CONTROL,)) + cbor2.dumps(msg)


def _split(data: bytes, at: int, end: int | None = None) -> tuple[bytes, bytes, bytes]:
    """topic, header, body from `data[at:end]` (topic_len u8 | topic | header_len u32 | ...)."""
    try:
        tl = data[at]
        t_end = at + 1 + tl
        (hl,) = _HLEN.unpack_from(data, t_end)
    except (IndexError, struct.error):
        raise ProtocolError("truncated frame", f"{len(data)} bytes") from None
    h_start = t_end + 4
    h_end = h_start + hl
    stop = len(data) if end is None else end
    if tl == 0 or h_end > stop:
        raise ProtocolError("truncated frame", f"{stop - at + 1} bytes, header says {h_end}")
    return data[at + 1 : t_end], data[h_start:h_end], data[h_end:stop]


def unpack_event(data: bytes, at: int = 0, end: int | None = None) -> tuple[bytes, bytes, bytes]:
    """topic, header, body of the event frame `data[at:end]` (sliced out, no other copy)."""
    return _split(data, at + 1, end)


def unpack_control(data: bytes, limits: cbor.Limits = cbor.CONTROL_IN) -> dict[str, Any]:
    """A control message, decoded with bounded work (`limits`: the daemon takes less from a
    client than a client takes from the daemon)."""
    msg = cbor.loads(memoryview(data)[1:], limits, "control message")
    if not isinstance(msg, dict):
        raise ProtocolError("malformed control message", "not a CBOR map")
    return msg


_LEN = struct.Struct(">I")


def pack_batch(frames: list[bytes]) -> bytes:
    """Several event or delivery frames in one: the per-message cost of ZeroMQ and of the
    Python calls around it is paid once per batch (see docs/design/wire.md)."""
    parts = [b"\x04"]
    pack = _LEN.pack
    for f in frames:
        parts.append(pack(len(f)))
        parts.append(f)
    return b"".join(parts)


def unpack_batch(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos, end = 1, len(data)
    unpack = _LEN.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError("truncated frame", "batch length cut")
        (n,) = unpack(data, pos)
        pos += 4
        if n == 0 or pos + n > end:
            raise ProtocolError("truncated frame", f"batch item of {n} bytes at {pos}")
        out.append(data[pos : pos + n])
        pos += n
    if not out:
        raise ProtocolError("truncated frame", "empty batch")
    return out


_DELIVERY_HEAD = struct.Struct(">BIqBB")  # kind, sid, seq, flags, topic_len


def deliveries_in(data: bytes) -> list[tuple[int, int, bytes, bytes, bytes]]:
    """(sid, seq, topic, header, body) of a delivery frame or of a batch of them, sliced
    straight out of `data` (no intermediate copy per item: the subscriber's hot path)."""
    if data[0] == DELIVERY:
        spans = [(0, len(data))]
    else:
        spans = []
        pos, end = 1, len(data)
        while pos < end:
            if pos + 4 > end:
                raise ProtocolError("truncated frame", "batch length cut")
            (n,) = _LEN.unpack_from(data, pos)
            pos += 4
            if n == 0 or pos + n > end:
                raise ProtocolError("truncated frame", f"batch item of {n} bytes at {pos}")
            spans.append((pos, pos + n))
            pos += n
    out = []
    head, hlen = _DELIVERY_HEAD.unpack_from, _HLEN.unpack_from
    for start, stop in spans:
        try:
            kind, sid, seq, _flags, tl = head(data, start)
            t0 = start + _DELIVERY_HEAD.size
            (hl,) = hlen(data, t0 + tl)
        except struct.error:
            raise ProtocolError("truncated frame", f"delivery at {start}") from None
        h0 = t0 + tl + 4
        if kind != DELIVERY or tl == 0 or h0 + hl > stop:
            raise ProtocolError("truncated frame", f"delivery at {start}")
        out.append((sid, seq, data[t0 : t0 + tl], data[h0 : h0 + hl], data[h0 + hl : stop]))
    return out
