"""`loomctl state get|put|del|ls`: the friendly face of `state.<op>`."""

from __future__ import annotations

import sys
from typing import Any

from loomd.cli import dumps, op, parse_payload

__all__ = ["add_cli"]


def add_cli(cmds: Any) -> None:
    """`loomctl state get|put|del|ls`: the friendly face of `state.<op>`."""
    state = cmds.add_parser("state", help="the daemon's key-value state")
    state.add_argument("--ns", default="user", help="namespace (default: user)")
    sc = state.add_subparsers(dest="state_cmd", required=True)
    g = sc.add_parser("get", help="print one value as JSON")
    g.add_argument("key")
    pu = sc.add_parser("put", help="store one JSON value")
    pu.add_argument("key")
    pu.add_argument("value", help="JSON, or @FILE")
    d = sc.add_parser("del", help="delete one key")
    d.add_argument("key")
    ls = sc.add_parser("ls", help="list keys")
    ls.add_argument("prefix", nargs="?", default="")
    state.set_defaults(func=_cli_state)


async def _cli_state(bus: Any, args: Any) -> int:
    cmd, ns = args.state_cmd, args.ns
    if cmd == "get":
        r = await op(bus, "state.get", args.key, ns=ns)
        if not r.get("found"):
            print(f"loomctl: no key {args.key!r} in namespace {ns!r}", file=sys.stderr)
            return 1
        print(dumps(r.get("value")))
    elif cmd == "put":
        await op(bus, "state.put", args.key, parse_payload(args.value), ns=ns)
    elif cmd == "del":
        if not (await op(bus, "state.del", args.key, ns=ns))["deleted"]:
            print(f"loomctl: no key {args.key!r} in namespace {ns!r}", file=sys.stderr)
            return 1
    else:
        for key in (await op(bus, "state.ls", args.prefix, ns=ns))["keys"]:
            print(key)
    return 0
