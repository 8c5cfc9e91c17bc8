"""The typed payloads that cross parts: round trips through CBOR, and bad values refused."""

from __future__ import annotations

import cbor2
import pytest

from loomd.bus.cbor import BODY, loads
from loomd.errors import LoomdError
from loomd.messages import (
    ActionRecord,
    AssistRequest,
    AssistTurn,
    ChatDone,
    ChatMessage,
    ChatRequest,
    IntentInfo,
    ToolCall,
    ToolSpec,
)

LIGHTS = ToolSpec("lights_set", "Switch a light", {"type": "object"}, "lights.set@1")


def through_wire(obj):  # what the bus does to a payload
    return type(obj).from_payload(loads(cbor2.dumps(obj.to_payload()), BODY))


def test_a_tool_turn_round_trips() -> None:
    call = ToolCall("c1", "lights_set", {"on": True, "room": "kitchen"})
    req = ChatRequest(
        (
            ChatMessage("user", "lights on"),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", '{"code": "ok"}', tool_call_id="c1"),
        ),
        tools=(LIGHTS,),
        tool_choice="lights_set",
    )
    assert through_wire(req) == req
    done = ChatDone(route="local", tool_calls=(call,))
    assert through_wire(done) == done


def test_an_assist_turn_round_trips() -> None:
    turn = AssistTurn(
        "turn on the kitchen lights",
        IntentInfo("HassTurnOn", {"area": "kitchen"}, "local"),
        (ActionRecord("light.turn_on", {"device": "kitchen_ceiling"}, "ok", {"on": True}),),
        reply="Turned on the kitchen lights",
        timings={"action_done": 12.5},
    )
    assert through_wire(turn) == turn
    assert through_wire(AssistRequest("hi", "site:local")) == AssistRequest("hi", "site:local")


@pytest.mark.parametrize(
    "build, why",
    [
        (lambda: ToolSpec("lights.set@1"), "bad tool name"),
        (lambda: ToolSpec("x" * 65), "bad tool name"),
        (lambda: ToolSpec("t", parameters={"type": "string"}), "schema object"),
        (lambda: ChatMessage("robot", "hi"), "bad message role"),
        (lambda: ChatMessage("tool", "42"), "tool_call_id"),
        (lambda: ChatRequest((ChatMessage("user", "x"),), tools=(LIGHTS, LIGHTS)), "unique"),
        (lambda: ChatRequest((ChatMessage("user", "x"),), tool_choice="fly"), "tool_choice"),
        (
            lambda: ChatRequest((ChatMessage("user", "x"),), tools=(LIGHTS,), json_schema={}),
            "not both",
        ),
        (lambda: ToolCall.from_payload({"id": "1", "name": "f", "arguments": "[]"}), "object"),
    ],
)
def test_bad_values_are_refused_with_the_reason(build, why: str) -> None:
    with pytest.raises(LoomdError, match=why):
        build()
