"""Tool turns on the local model: the prompt, the grammar's JSON schema, and the output.

A turn with tools (and `tool_choice` other than `none`) is generated under a llama.cpp
grammar that llama-cpp-python builds from one JSON schema (`grammar_schema`):

    {"oneOf": [{"name": {"const": "<tool>"}, "arguments": <the tool's schema>}, ...,
               {"answer": <string>}]}

so the model writes exactly one JSON object: a call to a tool that exists with arguments
that fit its schema, or (`auto` only) `{"answer": "..."}`. `required` drops the answer
branch; a tool's name keeps that tool's branch alone. The answer's text is decoded from the
JSON string while it is generated (`OutputReader`), so a plain answer streams as chunks; a
call streams nothing and ends the turn with `ChatDone.tool_calls`.

SmolLM2's ChatML template (and many others) knows no `tool` role and no `tool_calls`, so the
messages are mapped before the model's template sees them (`render`), the same way every
time:
- the tool list and the reply format join the system message (one is added when there is
  none);
- an assistant message's calls become its content, one JSON object per call in the format
  above; in a tool turn an assistant's plain answer is shown as `{"answer": ...}` too;
- a `tool` message becomes a `user` message
  `<tool_response name="<tool>" id="<call id>">\n<content>\n</tool_response>` (Qwen2.5's
  own form; consecutive results join one message).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loomd.agents.capability import check_params
from loomd.messages import ChatMessage, Role, ToolCall, ToolChoice, ToolSpec

__all__ = [
    "ANSWER_SCHEMA",
    "CALL_TOKENS",
    "OutputReader",
    "ToolOutput",
    "grammar_schema",
    "grammar_tools",
    "new_call_id",
    "parse_output",
    "render",
    "validate_call",
]

# Keys that only annotate: the grammar has no use for them (and llama-cpp-python's converter
# takes a schema made of annotations alone for an object).
_ANNOTATIONS = frozenset(
    {"description", "title", "default", "examples", "$comment", "contentEncoding",
     "contentMediaType", "deprecated", "readOnly", "writeOnly", "$schema", "$id"}
)  # fmt: skip
_ANY = {"anyOf": [{"type": t} for t in ("string", "number", "boolean", "null", "object", "array")]}


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def grammar_tools(tools: Sequence[ToolSpec], choice: str) -> list[ToolSpec]:
    """The tools the grammar allows for `choice` (none for `none`)."""
    if choice == ToolChoice.NONE:
        return []
    if choice in (ToolChoice.AUTO, ToolChoice.REQUIRED):
        return list(tools)
    return [t for t in tools if t.name == choice]


# A call must end within the turn's token budget, or it is cut and lost: strings and arrays
# the schema leaves unbounded are bounded in the grammar (a small model can loop inside one),
# and a tool turn may run to CALL_TOKENS whatever the request's max_tokens (which still
# bounds an answer).
MAX_STRING = 200
MAX_ITEMS = 8
CALL_TOKENS = 512


def _normal(schema: Any) -> Any:
    """The schema as the grammar converter needs it: annotations dropped, an unconstrained
    schema spelled out as any JSON value (the converter reads `{}` as any object), strings
    and arrays bounded."""
    if isinstance(schema, list):
        return [_normal(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    if schema.get("type") == "string" and not {"maxLength", "pattern"} & set(schema):
        out["maxLength"] = MAX_STRING
    if schema.get("type") == "array" and "maxItems" not in schema:
        out["maxItems"] = MAX_ITEMS
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = (
                {k: _normal(v) for k, v in value.items()} if isinstance(value, dict) else value
            )
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
            out[key] = _normal(value)
        else:
            out[key] = value
    return out or dict(_ANY)


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    args = _normal(tool.parameters)
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": args},
        "required": ["name", "arguments"],
    }


ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


def grammar_schema(tools: Sequence[ToolSpec], choice: str) -> dict[str, Any] | None:
    """The JSON schema the grammar is built from, or None for a plain (unconstrained) turn."""
    allowed = grammar_tools(tools, choice)
    if not allowed:
        return None
    branches = [_call_schema(t) for t in allowed]
    if choice == ToolChoice.AUTO:
        branches.append(ANSWER_SCHEMA)
    return branches[0] if len(branches) == 1 else {"oneOf": branches}


# -- the prompt ------------------------------------------------------------------------------
def _instructions(tools: Sequence[ToolSpec], choice: str) -> str:
    lines = ["You can use these tools (name: what it does; its arguments as a JSON schema):"]
    for t in tools:
        desc = " ".join(t.description.split()) or t.name
        lines.append(f"- {t.name}: {desc} {json.dumps(t.parameters, separators=(',', ':'))}")
    call = '{"name": "<tool name>", "arguments": {<arguments>}}'
    if choice == ToolChoice.AUTO:
        lines.append(
            f"Reply with one JSON object: {call} to use a tool, or "
            '{"answer": "<your reply>"} when no tool fits or you have the result.'
        )
    elif choice == ToolChoice.REQUIRED:
        lines.append(f"Reply with one JSON object that uses a tool: {call}")
    else:
        lines.append(f"Reply with one JSON object that uses the tool {choice}: {call}")
    return "\n".join(lines)


def _call_json(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


def render(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], choice: str
) -> list[dict[str, str]]:
    """Messages any ChatML-style template renders (roles system, user, assistant only)."""
    allowed = grammar_tools(tools, choice)
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    out: list[dict[str, str]] = []
    for m in messages:
        if m.role == Role.TOOL:
            name = names.get(m.tool_call_id, "")
            block = (
                f'<tool_response name="{name}" id="{m.tool_call_id}">\n{m.content}\n'
                "</tool_response>"
            )
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": "1"})
            continue
        if m.role == Role.ASSISTANT and (m.tool_calls or allowed):
            parts = [_call_json(c) for c in m.tool_calls]
            if m.content and allowed:
                parts.insert(0, json.dumps({"answer": m.content}, ensure_ascii=False))
            elif m.content:
                parts.insert(0, m.content)
            out.append({"role": "assistant", "content": "\n".join(parts)})
            continue
        out.append({"role": str(m.role), "content": m.content})
    for o in out:
        o.pop("_tool", None)
    if allowed:
        text = _instructions(allowed, choice)
        if out and out[0]["role"] == Role.SYSTEM:
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


# -- the output ------------------------------------------------------------------------------
_ANSWER_START = re.compile(r'\s*\{\s*"answer"\s*:\s*"')
_CALL_START = re.compile(r'\s*\{\s*"name"')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class OutputReader:
    """Reads a tool turn's output as it is generated: `feed(text)` returns the part of a
    plain answer that is now known (decoded from the JSON string), "" for a call."""

    def __init__(self) -> None:
        self.raw = ""
        self.kind = ""  # "" until known, then "answer" or "call"
        self._pos = 0  # where undecoded answer text starts in raw
        self._closed = False
        self.answer = ""

    def feed(self, text: str) -> str:
        self.raw += text
        if not self.kind:
            m = _ANSWER_START.match(self.raw)
            if m:
                self.kind, self._pos = "answer", m.end()
            elif _CALL_START.match(self.raw):
                self.kind = "call"
            else:
                return ""
        if self.kind != "answer" or self._closed:
            return ""
        piece = self._decode()
        self.answer += piece
        return piece

    def _decode(self) -> str:
        out: list[str] = []
        raw, i = self.raw, self._pos
        while i < len(raw):
            ch = raw[i]
            if ch == '"':
                self._closed = True
                i += 1
                break
            if ch != "\\":
                out.append(ch)
                i += 1
                continue
            if i + 1 >= len(raw):
                break  # the escape is not complete yet
            esc = raw[i + 1]
            if esc != "u":
                out.append(_ESCAPES.get(esc, esc))
                i += 2
                continue
            if i + 6 > len(raw):
                break
            code = int(raw[i + 2 : i + 6], 16)
            if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for its second half
                if i + 12 > len(raw):
                    break
                low = int(raw[i + 8 : i + 12], 16)
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                i += 12
            else:
                out.append(chr(code))
                i += 6
        self._pos = i
        return "".join(out)


@dataclass(frozen=True)
class ToolOutput:
    answer: str = ""
    call: ToolCall | None = None
    error: str = ""


def parse_output(raw: str, tools: Sequence[ToolSpec], *, cut: bool = False) -> ToolOutput:
    """The turn's result from the whole output. `cut` says generation stopped early (the
    token limit): an answer keeps what was said, a call that did not finish is an error."""
    try:
        data = json.loads(raw)
    except ValueError:
        reader = OutputReader()
        reader.feed(raw)
        if reader.kind == "answer":
            return ToolOutput(answer=reader.answer)
        cause = "stopped at the token limit" if cut else "is not JSON"
        return ToolOutput(error=f"the model's tool call {cause}: {raw[:80]!r}")
    if isinstance(data, dict) and set(data) == {"answer"} and isinstance(data["answer"], str):
        return ToolOutput(answer=data["answer"])
    if not isinstance(data, dict) or set(data) != {"name", "arguments"}:
        return ToolOutput(error=f"the model's output is no tool call: {raw[:80]!r}")
    call = ToolCall(new_call_id(), str(data["name"]), data["arguments"])
    why = validate_call(call, tools)
    if why:  # the grammar cannot say everything a schema can (e.g. minimum): never pass it on
        return ToolOutput(error=why)
    return ToolOutput(call=call)


def validate_call(call: ToolCall, tools: Iterable[ToolSpec]) -> str | None:
    """Why `call` is not a valid call of one of `tools`, or None."""
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        return f"the model called {call.name!r}, which is no tool of this request"
    bad = check_params(tool.parameters, call.arguments)
    if bad is not None:
        return f"the model's call of {call.name} is invalid: {bad[0]}: {bad[1]}"
    return None
