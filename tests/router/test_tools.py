"""Tool turns: the grammar's schema, the prompt mapping, the streamed output, and the real
SmolLM2 under the grammar (every call valid), the tiny model for the stream's structure."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from loomd.bus.api import Bus
from loomd.messages import ChatDone, ChatMessage, ChatRequest, ToolCall, ToolSpec
from loomd.router.cli import ask
from loomd.router.tools import OutputReader, grammar_schema, parse_output, render

from .conftest import SWITCH_SCHEMA, HostFactory, run
from .test_chat import Sink, llm_of

LIGHTS = ToolSpec(
    "lights_set",
    "Turn a light on or off, or dim it",
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "the light"},
            "on": {"type": "boolean"},
            "level": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        },
        "required": ["name", "on"],
        "additionalProperties": False,
    },
    "lights.set@2",
)
THERMO = ToolSpec(
    "thermostat_set",
    "Set the target temperature of a room",
    {
        "type": "object",
        "properties": {
            "celsius": {"type": "number"},
            "room": {"enum": ["living room", "bedroom", "kitchen"]},
        },
        "required": ["celsius", "room"],
        "additionalProperties": False,
    },
    "thermostat.set@1",
)
TIME = ToolSpec("get_time", "The current time", {"type": "object", "properties": {}}, "time.get@1")
NOTE = ToolSpec(
    "note_add",
    "Add a note to a list",
    {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "extra": {"description": "any JSON value"},
        },
        "required": ["text"],
    },
    "notes.add@1",
)
TOOLS = (LIGHTS, THERMO, TIME, NOTE)


# -- pure -------------------------------------------------------------------------------------
def test_grammar_schema_per_tool_choice() -> None:
    auto = grammar_schema(TOOLS, "auto")
    assert auto is not None and len(auto["oneOf"]) == len(TOOLS) + 1
    assert auto["oneOf"][-1]["required"] == ["answer"]
    names = [b["properties"]["name"]["const"] for b in auto["oneOf"][:-1]]
    assert names == [t.name for t in TOOLS]
    required = grammar_schema(TOOLS, "required")
    assert required is not None and len(required["oneOf"]) == len(TOOLS)
    named = grammar_schema(TOOLS, "thermostat_set")
    assert named is not None and named["properties"]["name"] == {"const": "thermostat_set"}
    assert grammar_schema(TOOLS, "none") is None
    # annotations go; an unconstrained value becomes "any JSON value", not "any object"
    note = grammar_schema((NOTE,), "note_add")
    assert note is not None
    extra = note["properties"]["arguments"]["properties"]["extra"]
    assert {b["type"] for b in extra["anyOf"]} == {
        "string",
        "number",
        "boolean",
        "null",
        "object",
        "array",
    }


def test_grammar_builds_with_llama_cpp_python() -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    for choice in ("auto", "required", "note_add", "get_time"):
        g = llama_grammar.LlamaGrammar.from_json_schema(json.dumps(grammar_schema(TOOLS, choice)))
        assert "root ::=" in g._grammar


def test_render_maps_tool_messages_onto_chatml_roles() -> None:
    call = ToolCall("call_1", "lights_set", {"name": "kitchen", "on": True})
    msgs = (
        ChatMessage("system", "You run a home."),
        ChatMessage("user", "Kitchen lights on"),
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", '{"ok": true}', tool_call_id="call_1"),
        ChatMessage("tool", "second", tool_call_id="call_1"),
    )
    out = render(msgs, TOOLS, "auto")
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("You run a home.\n\nYou can use these tools")
    assert "thermostat_set" in out[0]["content"] and '{"answer"' in out[0]["content"]
    assert json.loads(out[2]["content"]) == {"name": "lights_set", "arguments": call.arguments}
    assert out[3]["content"] == (
        '<tool_response name="lights_set" id="call_1">\n{"ok": true}\n</tool_response>\n'
        '<tool_response name="lights_set" id="call_1">\nsecond\n</tool_response>'
    )
    # tool_choice none: no tool list, the history still renders without a tool role
    plain = render(msgs, TOOLS, "none")
    assert "You can use these tools" not in plain[0]["content"]
    assert {m["role"] for m in plain} == {"system", "user", "assistant"}
    # no system message: one is added in front
    assert render(msgs[1:2], TOOLS, "required")[0]["role"] == "system"


def test_output_reader_streams_an_answer_split_anywhere() -> None:
    raw = '{ "answer" : "Hi \\"there\\"\\n caf\\u00e9 \\ud83d\\ude00 done" }'
    want = 'Hi "there"\n café 😀 done'
    for size in range(1, 8):
        r = OutputReader()
        got = "".join(r.feed(raw[i : i + size]) for i in range(0, len(raw), size))
        assert got == want and r.kind == "answer"
    call = OutputReader()
    assert call.feed('{"name": "get_time", "arguments": {}}') == "" and call.kind == "call"


def test_parse_output_never_passes_an_invalid_call() -> None:
    ok = parse_output('{"name": "get_time", "arguments": {}}', TOOLS)
    assert ok.call is not None and ok.call.name == "get_time" and ok.call.id.startswith("call_")
    assert parse_output('{"answer": "hello"}', TOOLS).answer == "hello"
    cut = parse_output('{"name": "note_add", "arguments": {"text": "abc', TOOLS, cut=True)
    assert cut.call is None and "token limit" in cut.error
    assert parse_output('{"answer": "half', TOOLS, cut=True).answer == "half"
    assert "no tool" in parse_output('{"name": "nope", "arguments": {}}', TOOLS).error
    bad = parse_output('{"name": "lights_set", "arguments": {"name": 3, "on": true}}', TOOLS)
    assert bad.call is None and "name" in bad.error


# -- the real model under the grammar ---------------------------------------------------------
PROMPTS = [
    "Turn on the kitchen lights",
    "Switch off the bedroom light",
    "Dim the hallway light to 30 percent",
    "Set the living room to 21 degrees",
    "Make the bedroom warmer, 23 degrees please",
    "What time is it?",
    "Tell me the time",
    "Add milk to my shopping list",
    "Remember to call mum tomorrow",
    "Note: buy batteries, tag it errands",
    "What is the capital of France?",
    "Tell me a joke",
    "Hello!",
    "How are you today?",
    "Turn everything off",
    "It is too cold in the kitchen",
    "Lights on in the garage",
    "Please set the kitchen thermostat to 19.5",
    "Write down that the plumber comes at 3",
    "Is it late already?",
    "Can you make it brighter in the office",
    "Good night",
    "Heat the bedroom to 20",
    "What can you do?",
]


def _validator(tool: ToolSpec) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(tool.parameters)


def _check(done: ChatDone, allowed: tuple[ToolSpec, ...]) -> str:
    assert done.error == "", done.error
    if done.tool_calls:
        assert len(done.tool_calls) == 1 and done.text == ""
        call = done.tool_calls[0]
        tool = next(t for t in allowed if t.name == call.name)
        errors = list(_validator(tool).iter_errors(call.arguments))
        assert not errors, (call, errors)
        return call.name
    return ""


def chat(
    text: str, choice: str = "auto", tools: tuple[ToolSpec, ...] = TOOLS, **kw: Any
) -> ChatRequest:
    return ChatRequest(
        (
            ChatMessage("system", "You are the voice assistant of a home."),
            ChatMessage("user", text),
        ),
        tools=tools,
        tool_choice=choice,
        max_tokens=kw.pop("max_tokens", 96),
        temperature=kw.pop("temperature", 0.7),
        **kw,
    )


@contextlib.asynccontextmanager
async def smol_bus(llm_host: HostFactory, smol: Path) -> AsyncIterator[Bus]:
    """A host running SmolLM2 on two threads: its llm component's bus."""
    async with llm_host(model=smol, threads=2) as host:
        yield llm_of(host).ctx.bus


@pytest.mark.models
@pytest.mark.timeout(1200)
def test_smollm2_calls_are_always_valid(llm_host: HostFactory, smol: Path) -> None:
    async def body() -> None:
        async with smol_bus(llm_host, smol) as bus:
            called = answered = 0
            for text in PROMPTS:
                # answers are cut short (a call still gets its own budget to finish)
                done = await ask(bus, chat(text, max_tokens=16), timeout=300, out=Sink())
                if _check(done, TOOLS):
                    called += 1
                else:
                    answered += 1  # an answer: any text (this model's are often poor)
            assert called and called + answered == len(PROMPTS)

    run(body(), timeout=1150)


@pytest.mark.models
@pytest.mark.timeout(1200)
def test_smollm2_tool_choice_variants(llm_host: HostFactory, smol: Path) -> None:
    async def body() -> None:
        async with smol_bus(llm_host, smol) as bus:
            for text in PROMPTS[:8]:
                done = await ask(bus, chat(text, "required"), timeout=120, out=Sink())
                assert _check(done, TOOLS), text  # required: always a call
                done = await ask(bus, chat(text, "thermostat_set"), timeout=120, out=Sink())
                assert _check(done, TOOLS) == "thermostat_set"
            for text in PROMPTS[:4]:
                sink = Sink()
                done = await ask(bus, chat(text, "none", max_tokens=24), timeout=120, out=sink)
                assert done.error == "" and not done.tool_calls
                assert done.text and "".join(sink.parts) == done.text

    run(body(), timeout=1150)


@pytest.mark.models
def test_smollm2_tool_result_fed_back_gives_an_answer(llm_host: HostFactory, smol: Path) -> None:
    call = ToolCall("call_7", "thermostat_set", {"celsius": 21, "room": "bedroom"})
    history = (
        ChatMessage("system", "You are the voice assistant of a home."),
        ChatMessage("user", "Set the bedroom to 21 degrees"),
        ChatMessage("assistant", "", (call,)),
        ChatMessage(
            "tool", '{"celsius": 21, "room": "bedroom", "ok": true}', tool_call_id="call_7"
        ),
    )

    async def body() -> None:
        async with smol_bus(llm_host, smol) as bus:
            final = ChatRequest(history, tools=TOOLS, tool_choice="none", max_tokens=32)
            sink = Sink()
            done = await ask(bus, final, timeout=120, out=sink)
            assert done.error == "" and not done.tool_calls and done.text.strip()
            assert "".join(sink.parts) == done.text
            again = ChatRequest(history, tools=TOOLS, tool_choice="auto", max_tokens=64)
            _check(await ask(bus, again, timeout=120, out=Sink()), TOOLS)

    run(body(), timeout=600)


# -- the stream's structure, on the tiny random model -----------------------------------------
SWITCH = ToolSpec(
    "switch",
    "Switch something",
    SWITCH_SCHEMA,
    "switch@1",
)


def test_tool_turn_streams_only_an_answer(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny) as host:
            bus = llm_of(host).ctx.bus
            kinds = set()
            for i in range(12):
                sink = Sink()
                req = chat(f"hello {i}", "auto", (SWITCH,), max_tokens=48, temperature=1.0)
                done = await ask(bus, req, timeout=60, out=sink)
                if done.tool_calls:
                    kinds.add("call")
                    assert sink.parts == [] and done.text == ""  # no JSON reaches TTS
                    assert done.tool_calls[0].arguments in ({"on": True}, {"on": False})
                elif done.error:  # a cut call is an error, never an invalid call
                    assert "token limit" in done.error
                else:
                    kinds.add("answer")
                    assert "".join(sink.parts) == done.text
                    assert "{" not in "".join(sink.parts)[:1]
            sink = Sink()
            done = await ask(
                bus, chat("x", "switch", (SWITCH,), max_tokens=48), timeout=60, out=sink
            )
            assert done.tool_calls and done.tool_calls[0].name == "switch" and sink.parts == []
            assert kinds, "neither a call nor an answer in 12 turns"

    run(body(), timeout=300)
