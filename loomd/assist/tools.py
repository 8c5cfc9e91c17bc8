"""The model with tools, when no sentence matched: the broker's catalogue as `ToolSpec`s
(valid, unique names; `ToolSpec.capability` keeps the real one), tool calls run through the
broker with deadlines (confirm honoured: such a call is asked back, not run), results sent
back as `Role.TOOL` messages, until the model answers."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from loomd.errors import LoomdError
from loomd.messages import (
    ActionRecord,
    AssistRequest,
    AssistTurn,
    ChatDone,
    ChatMessage,
    ChatRequest,
    IntentInfo,
    IntentVia,
    Role,
    ToolSpec,
)

if TYPE_CHECKING:
    from loomd.assist.component import AssistComponent, Conversation

__all__ = ["llm_turn", "tool_specs"]

_BAD = re.compile(r"[^A-Za-z0-9_-]")


def tool_specs(caps: Iterable[Mapping[str, Any]]) -> list[ToolSpec]:
    """One tool per capability (its highest version), named `[A-Za-z0-9_-]{1,64}` and unique:
    `lights.set` -> `lights_set`; a clash gets `_2`, `_3`..."""
    latest: dict[str, Mapping[str, Any]] = {}
    for c in caps:
        name = str(c.get("name", ""))
        if name and int(c.get("version", 1)) >= int(latest.get(name, {}).get("version", 0)):
            latest[name] = c
    out: list[ToolSpec] = []
    used: set[str] = set()
    for name in sorted(latest):
        c = latest[name]
        base = _BAD.sub("_", name)[:60] or "tool"
        tool, n = base, 1
        while tool in used:
            n += 1
            tool = f"{base}_{n}"
        used.add(tool)
        schema = dict(c.get("schema") or {"type": "object"})
        schema.setdefault("type", "object")
        out.append(
            ToolSpec(
                tool, str(c.get("description") or name), schema, f"{name}@{c.get('version', 1)}"
            )
        )
    return out


async def llm_turn(
    assist: AssistComponent, ask: AssistRequest, conv: Conversation, mark: Any
) -> AssistTurn:
    from loomd.router.client import chat_stream

    s = assist.settings
    tools = tool_specs(c for c in assist.caps if c.get("provider") != "assist")
    by_tool = {t.name: t for t in tools}
    confirm = {c["name"] for c in assist.caps if c.get("confirm")}
    messages = [
        ChatMessage(Role.SYSTEM, s.system_prompt),
        *conv.messages,
        ChatMessage(Role.USER, ask.text),
    ]
    actions: list[ActionRecord] = []
    route, reply = "", ""
    for _ in range(s.max_tool_rounds):
        req = ChatRequest(
            tuple(messages),
            priority="voice" if ask.site else "interactive",
            stream=False,
            max_tokens=160,
            agent="assist",
            tools=tuple(tools),
        )
        done: ChatDone | None = None
        try:
            async for piece in chat_stream(assist.ctx.bus, req, timeout=s.llm_timeout_s):
                if isinstance(piece, ChatDone):
                    done = piece
        except (TimeoutError, LoomdError) as exc:
            return AssistTurn(
                ask.text,
                IntentInfo("", {}, IntentVia.NONE.value),
                tuple(actions),
                "Sorry, I can't answer that right now",
                route,
                error=str(exc),
            )
        if not actions:
            mark("llm_first")
        if done is None:
            break
        route = done.route or route
        if done.error:
            return AssistTurn(
                ask.text,
                IntentInfo("", {}, IntentVia.NONE.value),
                tuple(actions),
                "Sorry, I can't answer that right now",
                route,
                error=done.error,
            )
        if not done.tool_calls:
            reply = done.text.strip()
            break
        messages.append(ChatMessage(Role.ASSISTANT, done.text, done.tool_calls))
        for call in done.tool_calls:
            spec = by_tool.get(call.name)
            if spec is None:
                result: Any = {"error": f"no tool {call.name!r}"}
                messages.append(ChatMessage(Role.TOOL, json.dumps(result), tool_call_id=call.id))
                continue
            cap = spec.capability.split("@")[0]
            plan = ActionRecord(spec.capability, dict(call.arguments))
            if cap in confirm:
                from loomd.assist.component import Pending

                conv.pending = Pending([plan], "Done", time.monotonic() + s.confirm_timeout_s)
                actions.append(dataclasses.replace(plan, code="confirm"))
                intent = IntentInfo(cap, dict(call.arguments), IntentVia.LLM.value)
                return AssistTurn(
                    ask.text,
                    intent,
                    tuple(actions),
                    f"{spec.description or cap}?",
                    route,
                    continue_conversation=True,
                )
            ran = (await assist._run([plan]))[0]
            actions.append(ran)
            mark("action_done")
            body = {"code": ran.code, "result": ran.result}
            messages.append(
                ChatMessage(Role.TOOL, json.dumps(body, default=str), tool_call_id=call.id)
            )
    first = actions[0] if actions else None
    intent = IntentInfo(
        first.capability.split("@")[0] if first else "",
        dict(first.params) if first else {},
        IntentVia.LLM.value,
    )
    return AssistTurn(ask.text, intent, tuple(actions), reply or "Done", route)
