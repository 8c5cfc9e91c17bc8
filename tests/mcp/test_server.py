"""loomd as an MCP server, driven by the `mcp` package's own client: over stdio through
`loomctl mcp`, and over Streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.conftest import LoomdProcess, free_port, plugins_section

pytest.importorskip("mcp")

LIGHTS = '''
from loomd.agents import capability

STATE = {"level": 0}

@capability("lights.set")
def set_level(level: int) -> dict:
    """Set the light level.

    Args:
        level: 0 to 100
    """
    STATE["level"] = level
    return {"level": level}

@capability("lights.set", version=2)
def set_level_in(level: int, area: str = "") -> dict:
    """Set the light level in an area."""
    return {"level": level, "area": area, "version": 2}

@capability("secret.reset")
def reset() -> str:
    return "not exposed"
'''


def _daemon(root: Path, port: int) -> LoomdProcess:
    toml = (
        plugins_section(root, lights=LIGHTS)
        + f'[mcp]\nexpose = ["lights.*"]\nhttp_enabled = true\nhttp_port = {port}\n'
    )
    return LoomdProcess(root, toml)


async def _drive(session: Any) -> None:
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert "secret_reset" not in tools
    # two versions, two names: the plain one is the version the broker resolves to
    assert {"lights_set", "lights_set_v1"} <= set(tools)
    assert {"loomd_publish", "loomd_state_get", "loomd_watch"} <= set(tools)
    assert "area" in tools["lights_set"].input_schema["properties"]
    assert tools["lights_set_v1"].input_schema["properties"]["level"]["type"] == "integer"
    r = await session.call_tool("lights_set_v1", {"level": 40})
    assert not r.is_error, r
    assert json.loads(r.content[0].text) == {"level": 40}
    r = await session.call_tool("lights_set", {"level": 40, "area": "kitchen"})
    assert not r.is_error, r
    assert json.loads(r.content[0].text) == {"level": 40, "area": "kitchen", "version": 2}
    bad = await session.call_tool("lights_set_v1", {"level": "high"})
    assert bad.is_error and "invalid_params" in bad.content[0].text
    # strict: a string of digits is no integer (pydantic's lax mode would take it)
    for name in ("lights_set", "lights_set_v1"):
        lax = await session.call_tool(name, {"level": "30"})
        assert lax.is_error and "invalid_params" in lax.content[0].text, lax
    pub = await session.call_tool("loomd_publish", {"topic": "demo.mcp", "payload": {"x": 1}})
    assert not pub.is_error and len(json.loads(pub.content[0].text)["id"]) == 32
    st = await session.call_tool("loomd_state_get", {"key": "nothing-here"})
    assert not st.is_error and st.content[0].text == "null"


def test_stdio_through_loomctl_mcp(short_tmp: Path) -> None:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    d = _daemon(short_tmp, free_port())
    d.start()
    try:

        async def main() -> None:
            params = StdioServerParameters(
                command=sys.executable,
                args=["-m", "loomd.ctl", "--socket", str(d.socket), "mcp"],
                env=dict(os.environ),
            )
            async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
                await _drive(s)

        uvloop.run(main())
    finally:
        d.close()


def test_streamable_http_on_localhost(short_tmp: Path) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    d = _daemon(short_tmp, port)
    d.start()
    try:

        async def main() -> None:
            async with (
                streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams,
                ClientSession(streams[0], streams[1]) as s,
            ):
                await _drive(s)

        uvloop.run(main())
    finally:
        d.close()
