"""OpenAI's chat wire format for tools, both ways: what the cloud client sends and reads
back, and what the router's own endpoint accepts and answers.

On the wire a tool is `{"type": "function", "function": {name, description, parameters}}`,
`tool_choice` is `"auto"|"none"|"required"` or `{"type": "function", "function": {"name"}}`,
an assistant's calls are `tool_calls: [{id, type: "function", function: {name, arguments}}]`
with the arguments as a JSON *string*, and a result is `{"role": "tool", tool_call_id,
content}`. Streamed, a call arrives in pieces (`delta.tool_calls[i]` with an `index`; the id
and name first, the arguments string in fragments) that `CallAssembler` joins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from loomd.errors import LoomdError
from loomd.messages import ChatMessage, Role, ToolCall, ToolChoice, ToolSpec

__all__ = [
    "CallAssembler",
    "calls_to_wire",
    "choice_from_wire",
    "choice_to_wire",
    "messages_from_wire",
    "messages_to_wire",
    "tools_from_wire",
    "tools_to_wire",
]


def calls_to_wire(calls: Iterable[ToolCall], *, indexed: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(calls):
        item: dict[str, Any] = {
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
        }
        if indexed:
            item["index"] = i
        out.append(item)
    return out


def messages_to_wire(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == Role.TOOL:
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        elif m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    # a string, not null: OpenAI takes both, llama-cpp-python's server
                    # only a string
                    "content": m.content,
                    "tool_calls": calls_to_wire(m.tool_calls),
                }
            )
        else:
            out.append({"role": str(m.role), "content": m.content})
    return out


def _arguments(text: Any, name: str) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        args = json.loads(text or "{}")
    except (TypeError, ValueError):
        raise LoomdError(f"tool call {name}: arguments are not JSON: {str(text)[:60]!r}") from None
    if not isinstance(args, dict):
        raise LoomdError(f"tool call {name}: arguments must be a JSON object")
    return args


def _call_from_wire(item: Any) -> ToolCall:
    if not isinstance(item, dict) or not isinstance(item.get("function"), dict):
        raise LoomdError(f"bad tool call {item!r:.80}")
    fn = item["function"]
    name = str(fn.get("name") or "")
    return ToolCall(str(item.get("id") or ""), name, _arguments(fn.get("arguments"), name))


def _text(content: Any) -> str:
    if isinstance(content, list):  # the parts form: keep the text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def messages_from_wire(items: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(items, list):
        raise LoomdError("messages must be a list")
    out = []
    for m in items:
        if not isinstance(m, dict):
            raise LoomdError(f"bad message {m!r:.60}")
        role = str(m.get("role", "user"))
        if role == "developer":  # OpenAI's newer name for the system role
            role = Role.SYSTEM.value
        calls = tuple(_call_from_wire(c) for c in m.get("tool_calls") or ())
        out.append(
            ChatMessage(role, _text(m.get("content")), calls, str(m.get("tool_call_id") or ""))
        )
    return tuple(out)


def tools_to_wire(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools
    ]


def tools_from_wire(items: Any) -> tuple[ToolSpec, ...]:
    out = []
    for t in items or ():
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise LoomdError(f"only function tools are supported, got {t!r:.60}")
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise LoomdError(f"tool without a function: {t!r:.60}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append(ToolSpec(str(fn.get("name", "")), str(fn.get("description") or ""), params))
    return tuple(out)


def choice_to_wire(choice: str) -> Any:
    if choice in ToolChoice.__members__.values():
        return choice
    return {"type": "function", "function": {"name": choice}}


def choice_from_wire(value: Any) -> str:
    if value is None:
        return ToolChoice.AUTO.value
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        return str(value["function"].get("name", ""))
    raise LoomdError(f"bad tool_choice {value!r:.60}")


class CallAssembler:
    """Joins streamed `delta.tool_calls` pieces into whole calls, in index order."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, Any]] = {}

    def feed(self, deltas: Any) -> None:
        for d in deltas or ():
            if not isinstance(d, dict):
                raise LoomdError(f"bad tool call delta {d!r:.60}")
            part = self._parts.setdefault(int(d.get("index", 0)), {"args": []})
            if d.get("id"):
                part["id"] = str(d["id"])
            fn = d.get("function") or {}
            if fn.get("name"):
                part.setdefault("name", str(fn["name"]))  # some servers repeat it each time
            if fn.get("arguments"):
                part["args"].append(fn["arguments"])

    def __bool__(self) -> bool:
        return bool(self._parts)

    def calls(self) -> tuple[ToolCall, ...]:
        out = []
        for i in sorted(self._parts):
            p = self._parts[i]
            name = p.get("name", "")
            out.append(
                ToolCall(p.get("id", f"call_{i}"), name, _arguments("".join(p["args"]), name))
            )
        return tuple(out)
