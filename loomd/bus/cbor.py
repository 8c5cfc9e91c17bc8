"""CBOR decoding with bounded work: a linear pre-scan, then cbor2.

cbor2 decodes semantic tags eagerly, and several of them cost far more than their size:
a decimal fraction or a rational with a huge mantissa (quadratic big-integer work), a
regex (compiled), string references and shared values (a few bytes that expand into
megabytes or cycles), and nesting deep enough to exhaust the stack. So every CBOR item
that crosses a trust boundary (a header or control message in the daemon; a control
message, header or payload in the SDK and loomctl) is first walked by `scan`, which
builds nothing, touches each byte at most once and stops at the first item past the
limits: nesting depth, item count, an indefinite length, or a tag outside the allowed
set. Only then is it handed to cbor2, whose work is now linear in the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from loomd.errors import ProtocolError

__all__ = ["BODY", "CONTROL_IN", "CONTROL_OUT", "HEADER", "Limits", "loads", "scan"]


@dataclass(frozen=True, slots=True)
class Limits:
    depth: int
    items: int
    tags: frozenset[int] = frozenset()
    bignum_bytes: int = 16  # tags 2/3, when allowed: at most this many bytes of magnitude


# Headers are small maps of scalars plus a user `meta` map.
HEADER = Limits(depth=8, items=512)
# Control messages a client sends the daemon (`state put` values travel in them). The item
# cap bounds the scan itself: ~16k items are a few ms of Python.
CONTROL_IN = Limits(depth=16, items=16384)
# What the daemon sends back (status replies list clients and subscriptions).
CONTROL_OUT = Limits(depth=24, items=1 << 20)
# Event bodies, decoded by whoever reads `payload`: the common, linear-cost tags only
# (datetimes, sets, self-describe, bignums up to 128 bits).
BODY = Limits(depth=32, items=1 << 20, tags=frozenset({0, 1, 2, 3, 258, 55799}))

_WIDTH = {24: 1, 25: 2, 26: 4, 27: 8}


def scan(data: bytes | memoryview, limits: Limits, what: str = "CBOR") -> None:
    """Raise ProtocolError unless `data` is exactly one well-formed CBOR item within
    `limits`. Linear in len(data); allocates nothing per item."""
    n = len(data)
    pos = 0
    items = 0
    stack = [1]  # items still to read at each open level (the top level holds one)
    max_depth, max_items, tags = limits.depth + 1, limits.items, limits.tags
    while stack:
        if not stack[-1]:
            stack.pop()
            continue
        stack[-1] -= 1
        if pos >= n:
            raise ProtocolError(f"malformed {what}", "truncated CBOR")
        b = data[pos]
        pos += 1
        items += 1
        if items > max_items:
            raise ProtocolError(f"malformed {what}", f"more than {max_items} CBOR items")
        major, ai = b >> 5, b & 31
        if ai < 24:
            val = ai
        else:
            w = _WIDTH.get(ai)
            if w is None:
                raise ProtocolError(
                    f"malformed {what}", "indefinite-length or reserved CBOR item not accepted"
                )
            if pos + w > n:
                raise ProtocolError(f"malformed {what}", "truncated CBOR")
            val = int.from_bytes(data[pos : pos + w], "big")
            pos += w
        if major <= 1 or major == 7:
            continue  # integers, simple values, floats
        if major <= 3:  # byte and text strings
            if val > n - pos:
                raise ProtocolError(f"malformed {what}", "truncated CBOR")
            pos += val
            continue
        if major == 6:  # a tag: allowed ones only; its content is one nested item
            if val not in tags:
                raise ProtocolError(f"malformed {what}", f"CBOR tag {val} not accepted")
            if val in (2, 3):
                _check_bignum(data, pos, limits.bignum_bytes, what)
            count = 1
        else:  # 4 array, 5 map: every item takes at least one byte
            count = val if major == 4 else 2 * val
            if count > n - pos:
                raise ProtocolError(f"malformed {what}", "truncated CBOR")
            if not count:
                continue
        if len(stack) >= max_depth:
            raise ProtocolError(f"malformed {what}", f"CBOR nested deeper than {limits.depth}")
        stack.append(count)
    if pos != n:
        raise ProtocolError(f"malformed {what}", f"{n - pos} bytes after the CBOR item")


def _check_bignum(data: bytes | memoryview, pos: int, cap: int, what: str) -> None:
    if pos >= len(data) or data[pos] >> 5 != 2:
        raise ProtocolError(f"malformed {what}", "a bignum tag must hold a byte string")
    ai = data[pos] & 31
    size = ai if ai < 24 else 1 << 30
    if ai == 24 and pos + 1 < len(data):
        size = data[pos + 1]
    if size > cap:
        raise ProtocolError(f"malformed {what}", f"bignum longer than {cap} bytes")


def loads(data: bytes | memoryview, limits: Limits, what: str = "CBOR") -> Any:
    """`cbor2.loads` after `scan`: bounded work for any input."""
    scan(data, limits, what)
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for garbage
        raise ProtocolError(f"malformed {what}", str(exc)) from exc
