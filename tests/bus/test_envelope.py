"""Event and Envelope: wire round trips, raw bodies, lazy decoding, header validation, ids."""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest

from loomd.bus.envelope import DEFAULT_TTL, PROTOCOL_VERSION, Event, QoS, decode_header, new_id
from loomd.errors import ProtocolError

FIELDS = (
    "topic", "type", "id", "thread_id", "correlation_id", "sender",
    "reply_to", "ttl", "hop", "ts", "qos", "meta",
)  # fmt: skip


def wire(ev: Event) -> Event:
    topic, header, body = ev.frames()
    return Event.from_frames(topic, header, body)


def good_header(**over: Any) -> dict[str, Any]:
    hdr = Event.create("t.x", 1).header.copy()
    hdr.update(over)
    return hdr


def test_round_trip_keeps_every_envelope_field() -> None:
    before = time.time_ns()
    ev = Event.create(
        "agent.kitchen.inbox",
        {"say": "hello", "n": 3},
        type="voice.say",
        sender="agent.voice",
        qos=QoS.BATCHED,
        thread_id=b"T" * 16,
        correlation_id=b"C" * 16,
        reply_to="thread.abc.reply",
        ttl=7,
        hop=3,
        meta={"origin": "box-1", "lang": "fr", "n": [1, 2]},
    )
    after = time.time_ns()
    assert before <= ev.ts <= after
    back = wire(ev)
    for name in FIELDS:
        assert getattr(back, name) == getattr(ev, name), name
    assert back.payload == {"say": "hello", "n": 3}
    assert back.type == "voice.say"
    assert back.thread_id == b"T" * 16
    assert back.correlation_id == b"C" * 16
    assert back.reply_to == "thread.abc.reply"
    assert (back.ttl, back.hop) == (7, 3)
    assert back.qos == "batched"
    assert back.meta == {"origin": "box-1", "lang": "fr", "n": [1, 2]}
    assert back.header["v"] == PROTOCOL_VERSION
    assert back.to_dict() == ev.to_dict()


def test_defaults() -> None:
    ev = Event.create("sensor.hall.temp", 21.5)
    assert ev.type == "sensor.hall.temp"
    assert len(ev.id) == 16
    assert ev.thread_id == ev.id  # a new event starts its own thread
    assert ev.correlation_id is None
    assert ev.reply_to is None
    assert (ev.ttl, ev.hop) == (DEFAULT_TTL, 0)
    assert ev.qos == QoS.RELIABLE
    assert ev.meta == {}
    back = wire(ev)
    assert back.thread_id == back.id == ev.id
    assert back.payload == 21.5
    assert back.correlation_id is None


def test_wire_event_forwards_its_bytes_untouched() -> None:
    topic, header, body = Event.create("a.b", [1, 2, 3]).frames()
    ev = Event.from_frames(topic, header, body)
    assert ev.payload == [1, 2, 3]
    out = ev.frames()
    assert out[0] is topic and out[1] is header and out[2] is body


@pytest.mark.parametrize("raw", [b"", b"\x00\x01\xff" * 100, bytes(range(256)) * 40])
def test_raw_bytes_pass_untouched(raw: bytes) -> None:
    ev = Event.create("audio.frames", raw)
    assert ev.header["enc"] == "raw"
    assert ev.body_bytes() is raw  # not copied, not re-encoded
    back = wire(ev)
    assert back.header["enc"] == "raw"
    assert back.payload == raw
    assert back.body_bytes() == raw


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_raw_buffer_types_become_bytes(kind: type) -> None:
    raw = b"\x10\x20\x30" * 10
    ev = Event.create("audio.frames", kind(raw))
    assert ev.header["enc"] == "raw"
    assert ev.body_bytes() == raw
    assert wire(ev).payload == raw


@pytest.mark.parametrize(
    "payload",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**80,  # bignum
        1.5,
        -0.25,
        "",
        "h\u00e9llo \u2603",
        [],
        [1, "two", 3.0, None],
        {},
        {"a": {"b": [1, {"c": b"\x00bytes inside cbor"}]}},
        {1: "int key"},
    ],
)
def test_cbor_payload_types(payload: Any) -> None:
    ev = Event.create("t.x", payload)
    assert ev.header["enc"] == "cbor"
    assert ev.body_bytes() == cbor2.dumps(payload)
    back = wire(ev)
    assert back.payload == payload
    assert type(back.payload) is type(payload)


def test_payload_decoding_is_lazy() -> None:
    topic, header, _ = Event.create("t.x", {"ok": True}).frames()
    for garbage in (b"", b"\xff\xfe\xfd", b"\x82\x01", b"\x7f"):
        ev = Event.from_frames(topic, header, garbage)
        # Routing fields work without touching the body.
        assert ev.topic == "t.x"
        assert ev.type == "t.x"
        assert len(ev.id) == 16
        assert ev.frames()[2] is garbage
        with pytest.raises(ProtocolError):
            _ = ev.payload


def test_header_decoding_is_lazy() -> None:
    ev = Event.from_frames(b"t.x", b"\xff not cbor", b"\xf6")
    assert ev.topic == "t.x"
    with pytest.raises(ProtocolError):
        _ = ev.header
    with pytest.raises(ProtocolError):
        _ = ev.payload


def test_from_frames_with_predecoded_header() -> None:
    topic, header, body = Event.create("t.x", "p", sender="s").frames()
    hdr = decode_header(header)
    ev = Event.from_frames(topic, header, body, hdr)
    assert ev.header is hdr
    assert ev.sender == "s"
    assert ev.payload == "p"


def test_decode_header_accepts_a_valid_header_and_ignores_unknown_keys() -> None:
    hdr = good_header(future_field={"x": 1})
    got = decode_header(cbor2.dumps(hdr))
    assert got["v"] == PROTOCOL_VERSION
    assert got["future_field"] == {"x": 1}
    # Only `v` is mandatory: the rest defaults.
    assert decode_header(cbor2.dumps({"v": PROTOCOL_VERSION}))["v"] == PROTOCOL_VERSION


def _bad_headers() -> list[tuple[str, bytes]]:
    good = cbor2.dumps(good_header())
    return [
        ("empty", b""),
        ("not cbor", b"\xff\xff\xff"),
        ("text", b"hello world"),
        ("truncated", good[: len(good) // 2]),
        ("truncated by one", good[:-1]),
        ("array", cbor2.dumps([1, 2, 3])),
        ("int", cbor2.dumps(1)),
        ("string", cbor2.dumps("v")),
        ("null", cbor2.dumps(None)),
        ("no version", cbor2.dumps({"type": "x"})),
        ("version 0", cbor2.dumps(good_header(v=0))),
        ("version 2", cbor2.dumps(good_header(v=2))),
        ("version text", cbor2.dumps(good_header(v="1"))),
        ("version null", cbor2.dumps(good_header(v=None))),
        ("ttl text", cbor2.dumps(good_header(ttl="16"))),
        ("ttl float", cbor2.dumps(good_header(ttl=16.0))),
        ("ttl bool", cbor2.dumps(good_header(ttl=True))),
        ("ttl null", cbor2.dumps(good_header(ttl=None))),
        ("ttl too big", cbor2.dumps(good_header(ttl=256))),
        ("ttl very negative", cbor2.dumps(good_header(ttl=-5))),
        ("hop text", cbor2.dumps(good_header(hop="0"))),
        ("hop float", cbor2.dumps(good_header(hop=0.0))),
        ("hop negative", cbor2.dumps(good_header(hop=-1))),
        ("hop too big", cbor2.dumps(good_header(hop=256))),
        ("qos unknown", cbor2.dumps(good_header(qos="best_effort"))),
        ("qos int", cbor2.dumps(good_header(qos=1))),
        ("qos null", cbor2.dumps(good_header(qos=None))),
        ("qos list", cbor2.dumps(good_header(qos=["reliable"]))),
        ("qos map", cbor2.dumps(good_header(qos={"reliable": 1}))),
        ("enc unknown", cbor2.dumps(good_header(enc="json"))),
        ("enc null", cbor2.dumps(good_header(enc=None))),
        ("enc list", cbor2.dumps(good_header(enc=["raw"]))),
    ]


@pytest.mark.parametrize(("case", "data"), _bad_headers(), ids=[c for c, _ in _bad_headers()])
def test_decode_header_rejects(case: str, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_header(data)


@pytest.mark.parametrize("field", ["id", "thread_id"])
def test_wire_id_of_wrong_type_is_a_protocol_error(field: str) -> None:
    # An int id must not turn into bytes(int): a large one would allocate that many bytes.
    header = cbor2.dumps(good_header(**{field: 5}))
    with pytest.raises(ProtocolError):
        ev = Event.from_frames(b"t.x", header, b"\xf6")
        _ = ev.id, ev.thread_id


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"type": "voice.say"},
        {"sender": "agent.\u00e9t\u00e9"},
        {"qos": QoS.REALTIME, "ttl": 1, "hop": 15},
        {"qos": "batched", "ttl": 255, "hop": 0},
        {"meta": {"k": "v"}},
        {"reply_to": "thread.x.reply", "correlation_id": b"c" * 16},
    ],
)
@pytest.mark.parametrize("payload", [None, {"n": 1}, b"\x00raw"])
def test_header_bytes_decode_to_the_header(kwargs: dict[str, Any], payload: Any) -> None:
    # Several events of one shape in a row: each one's bytes carry its own id, thread, ts.
    for _ in range(3):
        ev = Event.create("t.x", payload, **kwargs)
        assert decode_header(ev.header_bytes()) == ev.header
        back = wire(ev)
        for name in FIELDS:
            assert getattr(back, name) == getattr(ev, name), name


@pytest.mark.parametrize("eid", [b"x" * 16, b"short", b"y" * 20])
def test_explicit_id_round_trips(eid: bytes) -> None:
    # Either refuse an id that is not 16 bytes at creation, or carry it faithfully:
    # never emit header bytes that say something else than the event.
    try:
        ev = Event.create("t.x", 1, id=eid)
    except (ValueError, ProtocolError):
        assert len(eid) != 16
        return
    assert decode_header(ev.header_bytes()) == ev.header
    back = wire(ev)
    assert back.id == eid
    assert back.thread_id == eid
    assert back.payload == 1


def test_ids_are_unique_and_16_bytes() -> None:
    ids = [new_id() for _ in range(100_000)]
    assert all(len(i) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
    assert len({Event.create("t", None).id for _ in range(1000)}) == 1000


# -- the daemon's fast header check ------------------------------------------------------------
def test_check_header_agrees_with_full_decode_and_learns_shapes() -> None:
    from loomd.bus import envelope

    envelope._shapes.clear()
    for i in range(50):
        ev = Event.create(
            f"t.{i % 3}", i, qos=("realtime", "reliable")[i % 2], sender="s", type=f"k{i % 2}"
        )
        data = ev.header_bytes()
        assert envelope.check_header(data) == envelope.decode_header(data) == ev.header
    assert 1 <= sum(len(v) for v in envelope._shapes.values()) <= 6  # learned, not one per event


def test_check_header_fast_path_still_rejects_what_is_not_the_same_shape() -> None:
    from loomd.bus import envelope

    envelope._shapes.clear()
    good = Event.create("t.x", 1, qos="realtime").header_bytes()
    envelope.check_header(good)  # learned
    # same length, a byte changed in the fixed part (the version): not the shape, full check
    i = good.index(b"av") + 2
    bad = good[:i] + b"\x09" + good[i + 1 :]
    with pytest.raises(ProtocolError, match="version"):
        envelope.check_header(bad)
    # a consumer mutating the meta of one header must not leak into the next
    h1 = envelope.check_header(Event.create("t.x", 1, qos="realtime").header_bytes())
    h1["meta"]["x"] = 1
    h2 = envelope.check_header(Event.create("t.x", 2, qos="realtime").header_bytes())
    assert h2["meta"] == {}


def test_plain_event_matches_create_on_the_wire() -> None:
    from loomd.bus.envelope import plain_event

    for payload in (b"\x00raw", {"x": [1, 2]}, None):
        fast = plain_event("t.y", payload, "kind", "me", "batched", 7)
        slow = Event.create("t.y", payload, type="kind", sender="me", qos="batched", ttl=7)
        hf, hs = decode_header(fast.header_bytes()), decode_header(slow.header_bytes())
        assert hf["thread_id"] == hf["id"] and len(hf["id"]) == 16 and hf["id"] != hs["id"]
        for k in ("id", "thread_id", "ts"):
            hf.pop(k), hs.pop(k)
        assert hf == hs
        assert fast.payload == payload and fast.body_bytes() == slow.body_bytes()
        back = Event.from_frames(*fast.frames())
        assert back.payload == payload and back.type == "kind" and back.ttl == 7


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"origin": "sat", "peer_id": b"\x07" * 16, "via": "sat"},
        {"origin": "100%b %s", "peer_id": b"%" * 16, "via": "x%"},  # `%` in the template
        {"a": 1, "b": True, "c": None, "d": b"x" * 16, "e": b"y" * 16, "f": -5},
        {"short": b"x" * 15, "list": [1, 2], "map": {"k": 1}, "f": -0.0},  # encoded
        {1: "int key", "1": "str key"},
    ],
)
@pytest.mark.parametrize("kind", ["hop.kind", "\x01" * 16])  # a type the placeholder is in
def test_a_forwarded_header_is_exactly_its_cbor_encoding(meta: dict[Any, Any], kind: str) -> None:
    """`Event.forwarded` cuts the header from a template of its shape: the bytes must be
    what encoding the header gives, for a shape seen the first time and the times after,
    and must decode to the event's own fields."""
    src = Event.create("hop.x", {"n": 1}, type=kind, sender="s", meta={"k": 0})
    for _ in range(3):
        out = src.forwarded("peers", 7, meta)
        assert out.header_bytes() == cbor2.dumps(out.header)
        assert decode_header(out.header_bytes()) == out.header
        assert out.meta == {"k": 0, **meta} and out.ttl == 7 and out.sender == "peers"
        assert out.body_bytes() == src.body_bytes() and out.id != src.id
