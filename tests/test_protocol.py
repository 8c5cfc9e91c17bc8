"""The bus protocol's classes (issue 20): each is bound to its topic or event type, goes
through the wire unchanged, and refuses what does not fit it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest

from loomd.bus import cbor
from loomd.bus.envelope import Event, QoS
from loomd.errors import CallError, LoomdError
from loomd.messages import (
    BarrierReply,
    BarrierRequest,
    Bid,
    BidAward,
    BidReject,
    CapCode,
    CapInfo,
    CapInvoke,
    CapResult,
    CapsList,
    CapsRegister,
    CapsRegistered,
    CapsUnregister,
    ChatChunk,
    ControlOp,
    ErrorCode,
    ErrorEvent,
    MqttFollow,
    MqttPublish,
    RouteDecision,
    Topic,
    Transcript,
    TurnStage,
    VoiceMute,
    VoiceStop,
)

ROOT = Path(__file__).resolve().parents[1]

SAMPLES: list[Any] = [
    CapInvoke("lights.set@1", {"on": True}, 2.5, "k1"),
    CapResult(CapCode.OK, {"done": 1}, provider="p"),
    CapResult(CapCode.TIMEOUT, error="late", provider="p"),
    CapsList((CapInfo("lights.set", 1, "switch", {"type": "object"}, "p", "local", 3),)),
    CapsRegister("weather", ({"name": "forecast", "version": 1},), "tok"),
    CapsRegistered(True, ("forecast@1",), {"bad": "no schema"}, 0.5),
    CapsUnregister("weather", "tok"),
    BarrierRequest("sync", 3, 2.0, "a1"),
    BarrierReply(True, 3),
    Bid(0.9, "b", {"who": "b", "eta_s": 2}),
    BidAward({"job": "x"}, {"score": 0.9, "agent": "b"}),
    BidReject(),
    MqttPublish("home/lamp/set", b"ON", 1, retain=True),
    MqttFollow("home", ("home/+/state",), "home.mqtt"),
    RouteDecision(
        "ab12",
        1.5,
        "butler",
        "voice",
        "local",
        "privacy",
        "local-only",
        120.0,
        0.0,
        0.9,
        {"privacy": "local-only"},
        {"local_loaded": True},
    ),
    VoiceStop("kitchen", "barge-in"),
    VoiceMute(True),
    ErrorEvent(ErrorCode.STT_FAILED, "voice: no", "voice", {"utterance": "u1"}),
]


def wire(payload: dict[str, Any]) -> Any:  # what the bus does to a payload
    return cbor.loads(cbor2.dumps(payload), cbor.BODY)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_each_class_goes_through_the_wire_unchanged(msg: Any) -> None:
    assert type(msg).from_payload(wire(msg.to_payload())) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_each_class_is_bound_to_its_event_type(msg: Any) -> None:
    cls = type(msg)
    assert cls.TYPE, f"{cls.__name__} is bound to no event type"
    topic = cls.TOPIC or "thread.0123.reply"
    out = msg.event(topic)
    ev = Event.create(out.topic, out.payload, type=out.type, sender="t", qos=QoS.RELIABLE)
    assert cls.is_type(ev.type) and cls.from_event(ev) == msg
    other = Event.create("x.y", out.payload, sender="t", qos=QoS.RELIABLE)
    assert not cls.is_type(other.type)
    with pytest.raises(LoomdError, match="expected an event of type"):
        cls.from_event(other)


def test_a_bid_keeps_the_bidders_own_keys_and_needs_a_number() -> None:
    assert Bid(1, "a", {"who": "a"}).to_payload() == {"who": "a", "score": 1, "agent": "a"}
    assert Bid.from_payload({"score": 2, "who": "z"}) == Bid(2.0, "", {"who": "z"})
    bad_bids: list[tuple[Any, str]] = [
        ({"score": "high"}, "score must be a number"),
        ({"score": True}, "number"),
        ({"score": 1, "agent": 3}, "agent must be a string"),
        ([], "a map"),
    ]
    for bad, why in bad_bids:
        with pytest.raises(LoomdError, match=why):
            Bid.from_payload(bad)


def test_a_class_without_a_topic_must_be_told_one() -> None:
    with pytest.raises(LoomdError, match="no topic of its own"):
        CapResult(CapCode.OK).event()
    assert Transcript("hi", "u1").event().topic == Topic.VOICE_TRANSCRIPT
    assert ChatChunk("a", 0).event("thread.1.reply").type == "llm.chunk"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({"params": {}}, "missing"),
        ({"cap": "", "params": {}}, "capability name"),
        ({"cap": "x", "params": [1]}, "params must be an object"),
        ({"cap": "x", "timeout": -1}, "timeout"),
        ({"cap": "x", "key": 5}, "key must be a string"),
        ({"cap": "x", "cpa": 1}, "unknown fields"),
        ("x", "expected a map"),
    ],
)
def test_a_bad_capability_call_is_refused_by_name(payload: Any, why: str) -> None:
    with pytest.raises(LoomdError, match=why):
        CapInvoke.from_payload(payload)


def test_a_call_from_an_older_sender_with_nulls_takes_the_defaults() -> None:
    call = CapInvoke.from_payload({"cap": "x", "params": None, "timeout": None, "key": None})
    assert (call.params, call.timeout, call.key) == ({}, 0.0, None)


def test_a_malformed_result_is_an_error_result_and_unwrap_raises_with_its_code() -> None:
    for bad in (None, [], {"value": 1}, {"code": "nope"}):
        r = CapResult.from_payload(bad)
        assert r.code == CapCode.ERROR and "malformed" in r.error
    with pytest.raises(CallError) as info:
        CapResult(CapCode.CAPABILITY_ERROR, error="no such room").unwrap()
    assert info.value.code == "capability_error"
    assert CapResult(CapCode.OK, 7).unwrap() == 7


def test_the_error_event_keeps_its_details_beside_code_and_message() -> None:
    ev = ErrorEvent(ErrorCode.TASK_CRASHED, "boom", "voice", {"task": "wake"})
    assert ev.to_payload() == {
        "code": "task_crashed", "message": "boom", "component": "voice", "task": "wake",
    }  # fmt: skip
    assert ErrorEvent.from_payload({"code": "quota", "message": "m"}).component == ""
    with pytest.raises(LoomdError, match="unknown code"):
        ErrorEvent.from_payload({"code": "made_up", "message": "m"})


def test_every_error_code_in_the_code_is_a_member_and_every_member_is_used() -> None:
    """`ctx.error(ErrorCode.X, ...)` everywhere: no string code left, no dead member."""
    text = "\n".join(
        p.read_text()
        for p in (ROOT / "loomd").rglob("*.py")
        if "messages" not in p.relative_to(ROOT).parts
    )
    assert not re.search(r"(\.error|_report)\(\s*f?\"[a-z_]+\"", text)
    used = set(re.findall(r"ErrorCode\.([A-Z_]+)", text))
    dynamic = {c.name for c in ErrorCode if c.value.startswith("mqtt_")}  # mqtt_{kind}
    assert {c.name for c in ErrorCode} - used - dynamic == set()


def test_the_mqtt_bridge_codes_it_makes_up_are_members() -> None:
    """The bridge builds `mqtt_<kind>` from its counters' names: each must be a member."""
    rooms = sorted((ROOT / "loomd" / "bridges").glob("mqtt*.py"))
    assert {p.name for p in rooms} >= {"mqtt.py", "mqtt_discovery.py", "mqtt_transport.py"}
    text = "\n".join(p.read_text() for p in rooms)
    kinds = re.findall(r'_bad_in\(\s*"(\w+)"', text) + re.findall(r'error="(\w+)"', text)
    assert len(set(kinds)) >= 5
    assert {f"mqtt_{k}" for k in kinds} <= set(ErrorCode.__members__.values())


def test_a_barrier_needs_a_name_and_at_least_one_member() -> None:
    for bad in ({"name": "b", "n": 0}, {"name": 3, "n": 2}):
        with pytest.raises(LoomdError, match="n >= 1"):
            BarrierRequest.from_payload(bad)


def test_a_control_request_splits_op_args_and_keywords() -> None:
    op = ControlOp.from_payload({"op": "state.get", "rid": 4, "args": ["ns"], "key": "lamp"})
    assert op == ControlOp("state.get", ("ns",), {"key": "lamp"})
    assert ControlOp.from_payload(op.to_payload()) == op
    with pytest.raises(LoomdError, match="'args' must be a list"):
        ControlOp.from_payload({"op": "x", "args": "a"})
    with pytest.raises(LoomdError, match="with an 'op'"):
        ControlOp.from_payload({"args": []})


def test_turn_stages_are_in_order_and_labelled() -> None:
    assert next(iter(TurnStage)).value == "vad_end"
    assert [s.value for s in TurnStage][-1] == "spoken"
    assert all(s.label for s in TurnStage)


def test_capinfo_fields_are_what_the_broker_lists() -> None:
    from loomd.agents.broker import ActionBroker, LocalProvider
    from loomd.agents.capability import capability, specs_of

    class Lamp:
        @capability("lamp.set")
        def set(self, on: bool) -> bool:
            """Switch the lamp."""
            return on

    broker, prov = ActionBroker(), LocalProvider("lamp")
    for spec, fn in specs_of(Lamp()):
        broker.register(spec, prov)
        prov.add(spec, fn)
    (info,) = [CapInfo.from_payload(c) for c in broker.list()]
    assert (info.full, info.provider, info.kind) == ("lamp.set@1", "lamp", "local")
    assert {f.name for f in dataclasses.fields(CapInfo)} == set(broker.list()[0])
