"""A real MCP server (the `mcp` package) with tools that misbehave on request."""

import asyncio
import os

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("flaky")


@server.tool()
def ok(text: str) -> str:
    """Answer at once."""
    return "ok " + text


@server.tool()
async def hang() -> str:
    """Never answer."""
    await asyncio.sleep(3600)
    return "never"


@server.tool()
def die() -> str:
    """Exit in the middle of the call."""
    os._exit(1)


@server.tool()
async def grow(ctx: Context) -> str:
    """Add a tool `extra` and tell the client the list changed."""

    def extra() -> str:
        return "extra here"

    server.add_tool(extra, name="extra", description="added at run time")
    await ctx.session.send_tool_list_changed()
    return "grown"


if __name__ == "__main__":
    server.run("stdio")
