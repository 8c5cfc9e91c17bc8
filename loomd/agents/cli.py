"""`loomctl agents [list|start|stop|restart ID]`, `loomctl caps`, `loomctl call`."""

from __future__ import annotations

import json
import sys
from typing import Any

from loomd.cli import dumps, op, parse_payload, show

__all__ = ["add_cli"]


def _agent_text(a: dict[str, Any]) -> str:
    err = f"  last error: {a['last_error']}" if a["last_error"] else ""
    return (
        f"{a['id']:<16} {a['state']:<9} restarts={a['restarts']} "
        f"topics={','.join(a['topics']) or '-'} "
        f"caps={','.join(a['capabilities']) or '-'}  [{a['source']}]{err}"
    )


def _cap_text(c: dict[str, Any]) -> str:
    flags = "".join(f" ({f})" for f in ("confirm", "sensitive") if c.get(f))
    lines = [
        f"{c['name']}@{c['version']}  [{c['kind']} {c['provider']}]{flags}  {c['description']}"
    ]
    lines += [f"    says: {sentence}" for sentence in c.get("sentences") or ()]
    lines.append(f"    {json.dumps(c['schema'])}")
    return "\n".join(lines)


async def _run(bus: Any, args: Any) -> int:
    cmd = args.cmd
    if cmd == "agents":
        sub = args.agents_cmd or "list"
        if sub == "list":
            r = await op(bus, "agents.list")
            show(r["agents"], args.json, _agent_text)
            for src, why in r["broken"].items() if not args.json else ():
                print(f"(broken) {src}: {why}")
            return 0
        r = await op(bus, f"agents.{sub}", args.id)
        print(f"{args.id}: {r['state']}")
        return 0
    if cmd == "caps":
        r = await op(bus, "agents.caps")
        show(r["capabilities"], args.json, _cap_text)
        return 0
    # call
    params = parse_payload(args.params) if args.params else {}
    if not isinstance(params, dict):
        print("loomctl: call parameters must be a JSON object", file=sys.stderr)
        return 2
    kw: dict[str, Any] = {"params": params}
    if args.call_timeout is not None:
        kw["timeout"] = args.call_timeout
    if args.key:
        kw["key"] = args.key
    r = await op(bus, "agents.call", args.name, **kw)
    if r["code"] == "ok":
        print(dumps(r.get("value")))
        return 0
    print(f"loomctl: {args.name}: {r['code']}: {r.get('error', '')}", file=sys.stderr)
    return 1


def add_cli(cmds: Any) -> None:
    """`loomctl agents [list|start|stop|restart ID]`, `loomctl caps`, `loomctl call`."""
    a = cmds.add_parser("agents", help="agent plugins: list, start, stop, restart")
    a.add_argument("--json", action="store_true")
    sc = a.add_subparsers(dest="agents_cmd")
    sc.add_parser("list", help="id, source, state, topics, capabilities, restarts, last error")
    for verb in ("start", "stop", "restart"):
        p = sc.add_parser(verb, help=f"{verb} one agent")
        p.add_argument("id")
    a.set_defaults(func=_run)
    c = cmds.add_parser("caps", help="capabilities of every provider, with their schemas")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_run)
    k = cmds.add_parser("call", help="call a capability: loomctl call NAME '{json params}'")
    k.add_argument("name")
    k.add_argument("params", nargs="?", help="a JSON object, or @FILE")
    k.add_argument("--call-timeout", type=float, help="seconds the capability may take")
    k.add_argument("--key", help="idempotency key")
    k.set_defaults(func=_run)
