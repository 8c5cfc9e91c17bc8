"""`loomctl ask` and `loomctl route explain|test|recent`: friendly faces of `llm.*`."""

from __future__ import annotations

import json
import sys
from typing import Any

from loomd.cli import op
from loomd.messages import ChatDone, ChatMessage, ChatRequest, Policy

__all__ = ["add_cli", "ask"]


def add_cli(cmds: Any) -> None:
    ask_p = cmds.add_parser("ask", help="ask the board's language model; streams the answer")
    ask_p.add_argument("prompt")
    ask_p.add_argument("--privacy", choices=("public", "sensitive", "private", "local-only"))
    ask_p.add_argument("--max-tokens", type=int, default=256)
    ask_p.add_argument("--system", help="a system message")
    ask_p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the answer")
    ask_p.set_defaults(func=_ask)
    route = cmds.add_parser("route", help="routing decisions: explain, test, recent")
    rc = route.add_subparsers(dest="route_cmd", required=True)
    ex = rc.add_parser("explain", help="the facts, policy and rule behind a decision")
    ex.add_argument("id")
    te = rc.add_parser("test", help="dry run: which route a prompt would take")
    te.add_argument("prompt")
    te.add_argument("--privacy", choices=("public", "sensitive", "private", "local-only"))
    te.add_argument("--max-tokens", type=int, default=256)
    te.add_argument("--allow-cloud", action="store_true", default=None)
    re_ = rc.add_parser("recent", help="the latest decisions")
    re_.add_argument("-n", type=int, default=10)
    route.set_defaults(func=_route)


async def ask(
    bus: Any, request: ChatRequest, *, timeout: float = 120.0, out: Any = None
) -> ChatDone:
    """Send one chat turn over `bus` (any `Bus`), write the tokens to `out` as they come,
    and return the last `ChatDone`."""
    from loomd.router.client import chat_stream

    last: ChatDone | None = None
    async for piece in chat_stream(bus, request, timeout=timeout):
        if isinstance(piece, ChatDone):
            last = piece
            if piece.phase == "quick" and out is not None:
                out.write("\n[quick answer from the board; the cloud refines:]\n")
        elif out is not None:
            out.write(piece.text)
            out.flush()
    assert last is not None
    return last


async def _ask(bus: Any, args: Any) -> int:
    from loomd.errors import RemoteError

    try:  # without the component nobody answers llm.chat: say so now, not after --wait
        await op(bus, "llm.stats")
    except RemoteError as exc:
        print(f"loomctl: the llm component is not running ({exc}); "
              "set [llm] enabled = true and a model", file=sys.stderr)  # fmt: skip
        return 1
    msgs = []
    if args.system:
        msgs.append(ChatMessage("system", args.system))
    msgs.append(ChatMessage("user", args.prompt))
    req = ChatRequest(
        tuple(msgs),
        policy=Policy(privacy=args.privacy),
        max_tokens=args.max_tokens,
        priority="interactive",
        agent="loomctl",
    )
    try:
        done = await ask(bus, req, timeout=args.wait, out=sys.stdout)
    except TimeoutError:
        print(f"\nloomctl: no answer within {args.wait:g} s", file=sys.stderr)
        return 1
    print()
    if done.error:
        print(f"loomctl: {done.route or 'llm'}: {done.error} (decision {done.decision_id})",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"[ran {done.route}, {done.tokens} tokens; loomctl route explain {done.decision_id}]",
          file=sys.stderr)  # fmt: skip
    return 0


async def _route(bus: Any, args: Any) -> int:

    if args.route_cmd == "explain":
        d = (await op(bus, "llm.explain", args.id))["decision"]
        print(_explain_text(d))
    elif args.route_cmd == "test":
        kw: dict[str, Any] = {"privacy": args.privacy, "max_tokens": args.max_tokens}
        if args.allow_cloud:
            kw["allow_cloud"] = True
        d = await op(bus, "llm.test", args.prompt, **kw)
        print(_explain_text(d, dry=True))
    else:
        for d in (await op(bus, "llm.recent", args.n))["decisions"]:
            print(f"{d['id']}  {d['route']:<6} {d['rule']:<15} {d['reason']}")
    return 0


def _explain_text(d: dict[str, Any], dry: bool = False) -> str:
    head = "dry run" if dry else f"decision {d['id']}"
    lines = [
        f"{head}: {d['route']} (rule {d['rule']}): {d['reason']}",
        f"estimate: {d['est_latency_ms']:.0f} ms, cost {d['est_cost']:.4f}, "
        f"confidence {d['confidence']:.2f}",
        "policy: " + ", ".join(f"{k}={v}" for k, v in d["policy"].items()),
        "facts: " + json.dumps(d["facts"], sort_keys=True),
    ]
    return "\n".join(lines)
