"""A sentence hassil matched, handled locally: the plan of broker calls (a device action,
a capability's sentence, a state read), the time, the timers; a plan that needs
confirmation is kept in the conversation and asked back; the reply comes from the
response templates."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from loomd.assist.conversation import Conversation, Pending
from loomd.assist.intents import ACTING, plan_actions, targets
from loomd.assist.timers import TIMER_INTENTS
from loomd.assist.tools import forbidden, who_asks
from loomd.messages import (
    ActionRecord,
    AssistRequest,
    AssistTurn,
    Domain,
    HomeDevice,
    IntentInfo,
    IntentVia,
)

if TYPE_CHECKING:
    from loomd.assist.component import AssistComponent
    from loomd.assist.matcher import Match
    from loomd.assist.responses import Responses

__all__ = ["NOT_UNDERSTOOD", "local_turn", "outcome"]

NOT_UNDERSTOOD = "Sorry, I couldn't understand that"


async def local_turn(
    assist: AssistComponent,
    m: Match,
    ask: AssistRequest,
    conv: Conversation,
    responses: Responses | None = None,
) -> AssistTurn:
    """`responses`: the request's language's (default: the assist's own)."""
    intent = IntentInfo(m.intent, _plain(m.slots), IntentVia.LOCAL.value)
    text = ask.text
    r = responses or assist.responses
    spoken = {**m.texts}
    if "name" in m.slots:
        spoken["name"] = m.texts.get("name", "")

    def reply_for(devs: list[HomeDevice]) -> str:
        state = _state_view(devs[0]) if devs else None
        return r.intent(
            m.intent,
            m.response,
            "Done",
            slots=spoken,
            state=state,
            query={"matched": [], "unmatched": []},
        )

    if m.intent == "HassNevermind":
        conv.pending = None
        return AssistTurn(text, intent, reply="")
    if m.intent == "HassGetCurrentTime":
        import datetime

        now = datetime.datetime.now()
        fallback = now.strftime("%H:%M")
        return AssistTurn(
            text, intent, reply=r.intent(m.intent, "default", fallback, slots={"time": now})
        )
    if m.intent in TIMER_INTENTS:
        return AssistTurn(text, intent, reply=assist.timers.answer(m, ask.site, spoken))
    if m.intent.startswith("cap:"):
        return await _capability(assist, m, intent, text, conv)
    if m.intent in ACTING:
        plans, devs = plan_actions(m, assist.home.devices)
    elif m.intent == "HassGetState":
        devs = targets(m, assist.home.devices)
        if not devs:
            return AssistTurn(text, intent, reply=r.refusal("no_entity", "I don't know"))
        got = await assist._run([ActionRecord("home.get_state", {"device": devs[0].id})])
        value = got[0].result if isinstance(got[0].result, dict) else {}
        st = _state_view(devs[0], str(value.get("state") or ""))
        want = m.slots.get("state")
        matched = [st] if want is not None and str(want).lower() == st.state.lower() else []
        reply = r.intent(
            m.intent,
            m.response,
            st.state_with_unit,
            slots=spoken,
            state=st,
            query={"matched": matched, "unmatched": [] if matched else [st]},
        )
        return AssistTurn(text, intent, tuple(got), reply)
    else:
        return AssistTurn(text, intent, reply=r.refusal("no_intent", NOT_UNDERSTOOD))
    if not plans:
        area = m.texts.get("area", "")
        dom = str(m.slots.get("domain") or "device")
        reply = (
            r.refusal(
                "no_domain_in_area",
                f"Sorry, I am not aware of any {dom} in the {area} area",
                domain=dom,
                area=area,
            )
            if area
            else r.refusal("no_domain", f"Sorry, I am not aware of any {dom}", domain=dom)
        )
        return AssistTurn(text, intent, reply=reply)
    no = forbidden(assist, plans)
    if no:
        said = _question(m, devs).rstrip("?")
        reply = f"Sorry, I'm not allowed to {said[:1].lower()}{said[1:]} {who_asks()}"
        return AssistTurn(text, intent, tuple(no), reply, error=str(no[0].result))
    reply = reply_for(devs)
    if _needs_confirm(assist, plans):
        until = time.monotonic() + assist.settings.confirm_timeout_s
        conv.pending = Pending(plans, reply, until)
        asked = [dataclasses.replace(a, code="confirm") for a in plans]
        question = _question(m, devs)
        return AssistTurn(text, intent, tuple(asked), question, continue_conversation=True)
    done = await assist._run(plans)
    return AssistTurn(text, intent, tuple(done), outcome(done, reply))


def outcome(done: list[ActionRecord], reply: str) -> str:
    """The reply when every action went through; else what went wrong first."""
    bad = [a for a in done if a.code != "ok"]
    if not bad:
        return reply
    why = str(bad[0].result or bad[0].code)
    return f"Sorry, that did not work: {why}"


def _question(m: Match, devs: list[HomeDevice]) -> str:
    verb = {"HassTurnOff": "Turn off", "HassTurnOn": "Turn on"}.get(m.intent, "Do that for")
    if devs and devs[0].domain == Domain.LOCK:
        verb = "Unlock" if m.intent == "HassTurnOff" else "Lock"
    elif devs and devs[0].domain == Domain.COVER:
        verb = "Close" if m.intent == "HassTurnOff" else "Open"
    names = " and ".join(f"the {d.name}" for d in devs[:3])
    return f"{verb} {names}?"


def _needs_confirm(assist: AssistComponent, plans: Iterable[ActionRecord]) -> bool:
    flagged = {c["name"] for c in assist.caps if c.get("confirm")}
    devices = {d.id: d for d in assist.home.devices}
    for a in plans:
        if a.capability.split("@")[0] in flagged:
            return True
        d = devices.get(str(a.params.get("device", "")))
        action = a.capability.rsplit(".", 1)[-1]
        if d is not None and ("*" in d.confirm or action in d.confirm):
            return True
    return False


async def _capability(
    assist: AssistComponent, m: Match, intent: IntentInfo, text: str, conv: Conversation
) -> AssistTurn:
    name = m.intent.removeprefix("cap:")
    versions = [c for c in assist.caps if c["name"] == name and c.get("sentences")]
    spec = max(versions, key=lambda c: int(c.get("version", 1)), default={})
    if spec:
        name = f"{name}@{spec.get('version', 1)}"  # the version whose sentences matched
    props = (spec.get("schema") or {}).get("properties") or {}
    params = {
        k: (int(v) if isinstance(v, float) and (props.get(k) or {}).get("type") == "integer" else v)
        for k, v in m.slots.items()
        if k in props
    }
    plan = [ActionRecord(name, params)]
    no = forbidden(assist, plan)
    if no:
        reply = f"Sorry, I'm not allowed to do that {who_asks()}"
        return AssistTurn(text, intent, tuple(no), reply, error=str(no[0].result))
    if spec.get("confirm"):
        until = time.monotonic() + assist.settings.confirm_timeout_s
        conv.pending = Pending(plan, "Done", until)
        desc = spec.get("description") or name
        return AssistTurn(
            text,
            intent,
            (dataclasses.replace(plan[0], code="confirm"),),
            f"{desc}?",
            continue_conversation=True,
        )
    done = await assist._run(plan)
    value = done[0].result
    said = (
        value
        if isinstance(value, str)
        else (value.get("reply") if isinstance(value, dict) else None)
    )
    return AssistTurn(text, intent, tuple(done), outcome(done, str(said or "Done")))


def _plain(slots: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (int(v) if isinstance(v, float) and v.is_integer() else v)
        for k, v in slots.items()
        if isinstance(v, str | int | float | bool)
    }


def _state_view(d: HomeDevice, state: str = "") -> Any:
    from loomd.assist.responses import StateView

    return StateView(d.name, d.domain.value, state or d.state, d.unit)
