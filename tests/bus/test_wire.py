"""The single-frame wire: events, deliveries, batches, control; truncation is an error."""

from __future__ import annotations

import pytest

from loomd.bus import wire
from loomd.bus.envelope import Event
from loomd.errors import ProtocolError


def test_event_round_trip() -> None:
    t, h, b = Event.create("a.b", {"x": 1}).frames()
    assert wire.unpack_event(wire.pack_event(t, h, b)) == (t, h, b)


def test_deliveries_single_and_batched_round_trip() -> None:
    events = [Event.create(f"t.{i}", b"\x00" * i, qos="realtime") for i in range(1, 5)]
    received = [Event.from_frames(*ev.frames()) for ev in events]
    for ev in received[:2]:
        ev.wire = wire.pack_event(*ev.frames())  # as the daemon forwards a socket event
    items = [(i - 1, ev) for i, ev in enumerate(received)]  # seq 0 (not durable), 1, 2, 3
    frames = wire.deliveries(items, 7)
    single = wire.deliveries_in(frames[0])
    assert single == [(7, -1, b"t.1", received[0].header_bytes(), b"\x00")]
    got = wire.deliveries_in(wire.pack_batch(frames))
    assert [(sid, seq, t, h, b) for sid, seq, t, h, b in got] == [
        (7, i - 1, ev.topic_bytes(), ev.header_bytes(), ev.body_bytes())
        for i, ev in enumerate(received)
    ]


@pytest.mark.parametrize("cut", [3, 10, 15, 20, -1])
def test_truncated_deliveries_are_protocol_errors(cut: int) -> None:
    ev = Event.create("t.x", b"payload", qos="realtime")
    (frame,) = wire.deliveries([(5, ev)], 1)
    with pytest.raises(ProtocolError, match="truncated"):
        wire.deliveries_in(wire.pack_batch([frame])[:cut] if cut > 0 else frame[:-40])


def test_batch_of_nothing_and_control() -> None:
    with pytest.raises(ProtocolError):
        wire.unpack_batch(b"\x04")
    assert wire.unpack_control(wire.pack_control({"op": "ping", "rid": 3})) == {
        "op": "ping",
        "rid": 3,
    }
    with pytest.raises(ProtocolError):
        wire.unpack_control(b"\x02\xff\xfe")
