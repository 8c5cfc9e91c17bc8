"""`loomctl assist TEXT` (one turn) and `loomctl chat` (a conversation with memory)."""

from __future__ import annotations

import os
import sys
from typing import Any

from loomd.messages import AssistRequest, AssistTurn, Topic

__all__ = ["add_cli", "render"]


def add_cli(cmds: Any) -> None:
    a = cmds.add_parser("assist", help="one turn of the assist: intent, actions, reply")
    a.add_argument("text")
    a.add_argument("--json", action="store_true", help="the turn as one JSON object")
    a.add_argument("--conversation", default="", help="a conversation id (keeps context)")
    a.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the turn")
    a.set_defaults(func=_assist)
    c = cmds.add_parser("chat", help="talk to the assist (memory across turns; empty line ends)")
    c.add_argument("--wait", type=float, default=120.0, help="seconds to wait for each turn")
    c.set_defaults(func=_chat)


async def turn(bus: Any, text: str, conversation: str, wait: float) -> AssistTurn:
    req = AssistRequest(text, conversation_id=conversation)
    ev = await bus.request(Topic.ASSIST_CONVERSE, req.to_payload(), timeout=wait)
    return AssistTurn.from_payload(ev.payload)


def render(t: AssistTurn) -> list[str]:
    slots = ", ".join(f"{k}={v}" for k, v in t.intent.slots.items())
    lines = [f"intent: {t.intent.name or '-'} ({t.intent.via})" + (f" {slots}" if slots else "")]
    for a in t.actions:
        params = ", ".join(f"{k}={v}" for k, v in a.params.items())
        result = f" -> {a.result}" if a.result not in (None, "") else ""
        lines.append(f"action: {a.capability}({params}) {a.code}{result}")
    lines.append(f"reply: {t.reply}")
    if t.route:
        lines.append(f"route: {t.route}")
    lines.append("timings: " + ", ".join(f"{k}={v:g} ms" for k, v in t.timings.items()))
    if t.error:
        lines.append(f"error: {t.error}")
    return lines


async def _assist(bus: Any, args: Any) -> int:
    from loomd.cli import dumps
    from loomd.errors import RequestTimeout

    try:
        t = await turn(bus, args.text, args.conversation, args.wait)
    except RequestTimeout:
        print(
            "loomctl: no answer from the assist (is [assist] enabled and its extra "
            "installed: pip install 'loomd[assist]'?)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        out = t.to_payload()
        keep = (
            "transcript",
            "intent",
            "actions",
            "reply",
            "route",
            "timings",
            "conversation_id",
            "continue_conversation",
            "error",
        )
        print(dumps({k: out[k] for k in keep}))
    else:
        print("\n".join(render(t)))
    return 1 if t.error else 0


async def _chat(bus: Any, args: Any) -> int:
    import asyncio

    conversation = f"loomctl-{os.getpid()}"
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, _read)
        if not line:
            return 0
        t = await turn(bus, line, conversation, args.wait)
        for a in t.actions:
            print(f"  [{a.capability} {a.code}]")
        print(t.reply or "(no reply)")


def _read() -> str:
    try:
        return input("> ").strip()
    except EOFError:
        return ""
