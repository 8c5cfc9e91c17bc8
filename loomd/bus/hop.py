"""The header of an event published again on another bus (a peer hop), cut from a template.

A hop changes a few envelope fields of an event it received: a fresh id (and so thread
id) and time, its sender, its TTL, and its meta gains the hop's loop guards (origin,
first id, the link it came over). Encoding that 13-key CBOR map for every event was
most of a receiving board's own work for a peer link (docs/design/fast-hops.md, hops4).
Events on a link differ from each other only in those fixed-width fields (16-byte ids,
an 8-byte time) and in 16-byte byte strings of the meta (the first id), so the header
is encoded once per shape with placeholders and each event's header is the template's
bytes with its own values put in: a join, no encode. Anything else in the meta (a map, a
list, an id of another length) goes through CBOR as before. (loomd.bus.envelope's plain
template is the special case with no meta, kept as slices because the SDK's publish joins
them with a new id and time without building a header map at all.)
"""

from __future__ import annotations

from typing import Any

import cbor2

__all__ = ["hop_header"]

# The placeholders of every header template (loomd.bus.envelope's plain ones too): an id,
# a thread id, a ts >= 2**32 (CBOR's 8-byte form, as for any real ts)
_ID_MARK = b"\x01" * 16
_THREAD_MARK = b"\x02" * 16
_TS_MARK = 0x7FEEDDCCBBAA9988
_MAX_VAR = 8  # 16-byte values of the meta put in per event; more: encoded


# shape -> the header's encoding with `%b` where its values go (None: encode that shape);
# a meta value's shape is its key and type and, unless it is a 16-byte string, its value
# (not floats: 0.0 == -0.0 and they encode differently)
_templates: dict[tuple[Any, ...], bytes | None] = {}


def hop_header(h: dict[str, Any]) -> bytes:
    """The CBOR encoding of header `h` (as `cbor2.dumps(h)` gives it), from a template of
    its shape when it has one. `h` is a header map as `loomd.bus.envelope` builds it: id
    and thread id 16 bytes, ts >= 2**32, meta last."""
    ts = h["ts"]
    if h["correlation_id"] is not None or h["reply_to"] is not None or type(ts) is not int:
        return cbor2.dumps(h)
    shape: list[Any] = [h["type"], h["sender"], h["qos"], h["enc"], h["ttl"], h["hop"]]
    eid = h["id"]
    values = [eid, h["thread_id"], ts.to_bytes(8, "big")] if 1 << 32 <= ts < 1 << 64 else None
    for k, v in h["meta"].items():
        t = type(v)
        if t is bytes and len(v) == 16:
            shape.append((type(k), k))
            values.append(v)  # type: ignore[union-attr]
        elif v is None or t is str or t is int or t is bool:
            shape.append((type(k), k, t, v))  # the type too: True == 1 as a key
        else:
            return cbor2.dumps(h)
    if values is None or len(values) > 3 + _MAX_VAR:
        return cbor2.dumps(h)
    try:
        key = tuple(shape)
        tpl = _templates.get(key)
    except TypeError:  # a meta key that does not hash (a decoded CBOR array or map)
        return cbor2.dumps(h)
    if tpl is None:
        tpl = _template(h, len(values) - 3)
        if len(_templates) >= 256:
            _templates.clear()
        _templates[key] = tpl
    return cbor2.dumps(h) if tpl is None else tpl % tuple(values)


def _template(h: dict[str, Any], n_var: int) -> bytes | None:
    """The encoding of `h` with a `%b` where each value goes (the rest `%`-escaped), or
    None when a placeholder is not unique (a type of 16 x \\x01): encode those instead."""
    marks = [bytes((0x10 + i,)) * 16 for i in range(n_var)]
    it = iter(marks)
    meta = {k: next(it) if type(v) is bytes and len(v) == 16 else v for k, v in h["meta"].items()}
    marked = {**h, "id": _ID_MARK, "thread_id": _THREAD_MARK, "ts": _TS_MARK, "meta": meta}
    raw = cbor2.dumps(marked)
    places = (_ID_MARK, _THREAD_MARK, _TS_MARK.to_bytes(8, "big"), *marks)
    at = [raw.find(m) for m in places]
    if any(raw.count(m) != 1 for m in places) or at != sorted(at):
        return None
    segs, end = [], 0
    for pos, m in zip(at, places, strict=True):
        segs.append(raw[end:pos].replace(b"%", b"%%"))
        end = pos + len(m)
    segs.append(raw[end:].replace(b"%", b"%%"))
    return b"%b".join(segs)
