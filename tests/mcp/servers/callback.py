"""A real MCP server (the `mcp` package) whose tools call back into the client: a log
message (`notifications/message`) and a sampling request (`sampling/createMessage`)."""

import warnings

from mcp import types
from mcp.server.mcpserver import Context, MCPServer

warnings.simplefilter("ignore")  # logging and sampling are deprecated as of 2026-07-28
server = MCPServer("callback")


@server.tool()
async def note(text: str, ctx: Context) -> str:
    """Log `text` to the client, then answer."""
    await ctx.info(text, logger_name="notes")
    return "noted " + text


@server.tool()
async def ask(question: str, ctx: Context) -> str:
    """Ask the client's model; answer with its text, or with the error it gave."""
    try:
        result = await ctx.session.create_message(
            [
                types.SamplingMessage(
                    role="user", content=types.TextContent(type="text", text=question)
                )
            ],
            max_tokens=8,
            temperature=0.0,
        )
    except Exception as exc:
        return f"refused: {exc}"
    return "answer: " + getattr(result.content, "text", "")


if __name__ == "__main__":
    server.run("stdio")
