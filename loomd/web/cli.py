"""`loomctl tokens create|list|revoke`: the friendly face of `tokens.<op>`."""

from __future__ import annotations

import sys
import time
from typing import Any

from loomd.cli import dumps, op

__all__ = ["add_cli"]


def add_cli(cmds: Any) -> None:
    """`loomctl tokens create NAME --scope S[,S]|list|revoke NAME`."""
    tokens = cmds.add_parser("tokens", help="bearer tokens of the HTTP surfaces")
    tc = tokens.add_subparsers(dest="tokens_cmd", required=True)
    c = tc.add_parser("create", help="create a token and print its secret (once)")
    c.add_argument("name")
    c.add_argument(
        "--scope", required=True,
        help="status (page + metrics), openai, mcp or all; comma-separated",
    )  # fmt: skip
    ls = tc.add_parser("list", help="names, scopes, created, last used (never secrets)")
    ls.add_argument("--json", action="store_true")
    r = tc.add_parser("revoke", help="refuse a token from its next request on")
    r.add_argument("name")
    tokens.set_defaults(func=_cli_tokens)


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


async def _cli_tokens(bus: Any, args: Any) -> int:
    if args.tokens_cmd == "create":
        r = await op(bus, "tokens.create", args.name, args.scope)
        print(r["secret"])
        print(f"loomctl: token {r['name']!r} created; this secret is not shown again",
              file=sys.stderr)  # fmt: skip
    elif args.tokens_cmd == "list":
        tokens = (await op(bus, "tokens.list"))["tokens"]
        if args.json:
            print(dumps(tokens))
            return 0
        for t in tokens:
            print(f"{t['name']}\t{','.join(t['scopes'])}\tcreated {_when(t['created'])}"
                  f"\tlast used {_when(t['last_used'])}")  # fmt: skip
    else:
        await op(bus, "tokens.revoke", args.name)
    return 0
