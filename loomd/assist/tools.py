"""The model with tools, when no sentence matched: the broker's catalogue as `ToolSpec`s
(named by `loomd.agents.tools`: valid, unique; `ToolSpec.capability` keeps the real
one), tool calls run through the
broker with deadlines (confirm honoured: such a call is asked back, not run), results sent
back as `Role.TOOL` messages, until the model answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from loomd.agents.tools import tool_specs
from loomd.assist.conversation import Conversation, Pending
from loomd.bus.acl import current_caller
from loomd.bus.identity import IdentityKind
from loomd.errors import LoomdError, RequestTimeout
from loomd.messages import (
    ActionRecord,
    AssistRequest,
    AssistTurn,
    CapCode,
    CapInvoke,
    CapResult,
    ChatDone,
    ChatMessage,
    ChatRequest,
    IntentInfo,
    IntentVia,
    Role,
    Topic,
)

if TYPE_CHECKING:
    from loomd.assist.component import AssistComponent

__all__ = ["forbidden", "llm_turn", "may_call", "refusal", "run_actions", "who_asks"]

# Never offered to the model: itself, and the conversation it is in.
NOT_TOOLS = ("llm.", "assist.")


def may_call(cap: Mapping[str, Any]) -> bool:
    """Whether the turn's identity (who asked: a socket client, a token, a voice source
    such as `voice:local`) may call this capability: asked of the caller's grants, never of the
    broker. The model is only shown tools that pass, and no action runs that does not."""
    caller = current_caller()
    if caller is None:
        return True
    return caller.may_call(
        str(cap.get("name", "")),
        sensitive=bool(cap.get("sensitive")),
        allowed_callers=tuple(cap.get("allowed_callers") or ()),
    )


def refusal(cap: Mapping[str, Any]) -> str:
    """Why the turn's identity may not call `cap` ("" when it may): said in the turn's
    actions and error, so the operator knows which rule is missing."""
    if may_call(cap):
        return ""
    caller = current_caller()
    who = caller.label if caller is not None else "?"
    name = str(cap.get("name", ""))
    sensitive = bool(cap.get("sensitive"))
    allowed = tuple(cap.get("allowed_callers") or ())
    if allowed and caller is not None and caller.may_call(name, sensitive=sensitive):
        return f"{name} may be called only by {', '.join(allowed)}, not {who}"
    if sensitive:
        return f"{name} is sensitive: {who} needs an [[acl]] rule granting it with sensitive = true"
    return f"no [[acl]] rule lets {who} call {name}"


def who_asks() -> str:
    """ "by voice" for a spoken turn, "for you" else: how a refusal names the asker."""
    caller = current_caller()
    kind = caller.identity.kind if caller is not None else None
    return "by voice" if kind == IdentityKind.VOICE else "for you"


def forbidden(assist: AssistComponent, plans: Iterable[ActionRecord]) -> list[ActionRecord]:
    """The planned actions the turn's identity may not run, each marked `forbidden` with
    the reason: checked before anything is asked back or run (never "Unlock the door?"
    and then "not allowed")."""
    caps = {str(c["name"]): c for c in assist.caps}
    out = []
    for a in plans:
        name = a.capability.split("@")[0]
        why = refusal(caps.get(name) or {"name": name})
        if why:
            out.append(dataclasses.replace(a, code=CapCode.FORBIDDEN, result=why))
    return out


async def run_actions(assist: AssistComponent, plans: Iterable[ActionRecord]) -> list[ActionRecord]:
    """Each action through the broker, concurrently, with the action deadline; one the
    turn's identity may not call is answered `forbidden` and not sent."""
    t = assist.settings.action_timeout_s
    caps = {str(c["name"]): c for c in assist.caps}

    async def one(a: ActionRecord) -> ActionRecord:
        name = a.capability.split("@")[0]
        why = refusal(caps.get(name) or {"name": name})
        if why:
            return dataclasses.replace(a, code=CapCode.FORBIDDEN, result=why)
        body = CapInvoke(a.capability, dict(a.params), t).to_payload()
        try:
            ev = await assist.ctx.bus.request(Topic.CAPS_INVOKE, body, timeout=t + 1.0)
        except RequestTimeout:
            return dataclasses.replace(a, code="timeout", result="no answer from the broker")
        r = CapResult.from_payload(ev.payload)
        return dataclasses.replace(a, code=r.code, result=r.value if r.ok else r.error)

    return list(await asyncio.gather(*(one(a) for a in plans)))


def _question(assist: AssistComponent, description: str, args: dict[str, Any]) -> str:
    """ "Unlock the side door?" for a device action; the capability's description else."""
    device = next((d for d in assist.home.devices if d.id == args.get("device")), None)
    if device is None:
        return f"{description}?"
    return f"{description.split(' ')[0]} the {device.name}?"


def _unanswered(
    ask: AssistRequest, actions: list[ActionRecord], route: str, error: str
) -> AssistTurn:
    """The turn when the model gave no answer (it failed, or could not be reached)."""
    no_intent = IntentInfo("", {}, IntentVia.NONE.value)
    apology = "Sorry, I can't answer that right now"
    return AssistTurn(ask.text, no_intent, tuple(actions), apology, route, error=error)


async def llm_turn(
    assist: AssistComponent, ask: AssistRequest, conv: Conversation, mark: Any
) -> AssistTurn:
    from loomd.router.client import chat_stream

    s = assist.settings
    offered = (c for c in assist.caps if not str(c["name"]).startswith(NOT_TOOLS))
    tools = tool_specs(c for c in offered if may_call(c))
    by_tool = {t.name: t for t in tools}
    confirm = {c["name"] for c in assist.caps if c.get("confirm")}
    messages = [
        ChatMessage(Role.SYSTEM, s.system_prompt),
        *conv.messages,
        ChatMessage(Role.USER, ask.text),
    ]
    actions: list[ActionRecord] = []
    route, reply, first_answer = "", "", True
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
            return _unanswered(ask, actions, route, str(exc))
        if first_answer:
            first_answer = False
            mark("llm_first")
        if done is None:
            break
        route = done.route or route
        if done.error:
            return _unanswered(ask, actions, route, done.error)
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
                conv.pending = Pending([plan], "Done", time.monotonic() + s.confirm_timeout_s)
                actions.append(dataclasses.replace(plan, code="confirm"))
                intent = IntentInfo(cap, dict(call.arguments), IntentVia.LLM.value)
                return AssistTurn(
                    ask.text,
                    intent,
                    tuple(actions),
                    _question(assist, spec.description or cap, call.arguments),
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
    if not reply:  # the rounds ran out on tool calls
        done_ok = any(a.code == "ok" for a in actions)
        reply = "Done" if done_ok else "Sorry, I couldn't do that"
    first = actions[0] if actions else None
    intent = IntentInfo(
        first.capability.split("@")[0] if first else "",
        dict(first.params) if first else {},
        IntentVia.LLM.value,
    )
    return AssistTurn(ask.text, intent, tuple(actions), reply, route)
