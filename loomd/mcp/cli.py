"""`loomctl mcp [serve|servers|restart NAME]`."""

from __future__ import annotations

from typing import Any

from loomd.cli import add_group, dumps, op
from loomd.errors import LoomdError

__all__ = ["add_cli"]


def add_cli(cmds: Any) -> None:
    """`loomctl mcp` serves MCP over stdio (for an MCP host, e.g. over ssh);
    `loomctl mcp servers` and `loomctl mcp restart NAME` drive the client side."""
    sc = add_group(cmds, "mcp", "serve loomd as an MCP server on stdio; or: servers, restart", {
        "serve": "serve MCP over stdio (the default)",
        "servers": "configured MCP servers, their state and tools",
    }, _cli_mcp, required=False)  # fmt: skip
    sc.add_parser("restart", help="restart one MCP server").add_argument("name")


async def _cli_mcp(bus: Any, args: Any) -> int:
    cmd = args.mcp_cmd or "serve"
    if cmd == "servers":
        print(dumps((await op(bus, "mcp.servers"))["servers"], indent=2))
        return 0
    if cmd == "restart":
        await op(bus, "mcp.restart", args.name)
        return 0
    from mcp.server.stdio import stdio_server

    from loomd.mcp.server import Bridge, build_server

    try:
        expose = (await op(bus, "mcp.expose"))["expose"]
    except LoomdError:  # the mcp component is not running: nothing is exposed
        expose = []

    async def state_get(ns: str, key: str) -> Any:
        r = await op(bus, "state.get", key, ns=ns)
        return r.get("value")

    server = build_server(Bridge(bus, expose, state_get))
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
    return 0
