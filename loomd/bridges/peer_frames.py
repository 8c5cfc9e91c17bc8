"""A forwarded event on a peer link: `[b"F", seq(8), origin, peer_id, event frame]`.

The event frame is the one the event already has (kept from the socket it came in on, or
encoded once), so a hop neither decodes nor re-encodes it; the hop's loop-guard fields
(the device it started on, its first id) travel beside it. The receiver reads them from
here and sets them in the meta of the event it publishes. (`b"E"` frames, with the guards
in the event's meta, are still read.)
"""

from __future__ import annotations

__all__ = ["guards", "read_guards"]


def guards(origin: str, peer_id: bytes) -> bytes:
    """The loop-guard fields of a forwarded event: origin device and first id, each a
    length byte and its bytes."""
    o = origin.encode()[:255]
    return bytes((len(o),)) + o + bytes((len(peer_id[:255]),)) + peer_id[:255]


def read_guards(frame: bytes, at: int, end: int | None = None) -> tuple[bytes, bytes, int]:
    """(origin, peer_id, where the event frame starts) of the forwarded event at
    `frame[..:end]`, its guards from `at`; ValueError when cut short."""
    stop = len(frame) if end is None else end
    n = frame[at]
    origin = frame[at + 1 : at + 1 + n]
    at += 1 + n
    m = frame[at] if at < stop else 0
    peer_id = frame[at + 1 : at + 1 + m]
    at += 1 + m
    if len(origin) != n or len(peer_id) != m or not peer_id or at > stop:
        raise ValueError("forwarded event: guard fields cut short")
    return origin, peer_id, at
