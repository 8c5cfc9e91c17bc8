"""MCP server mode: loomd's chosen capabilities plus a few bus tools, as an MCP server.

The same `build_server` runs in two places: `loomctl mcp` (stdio, so an MCP host can launch
it on the board over ssh; it talks to the daemon with `loomd.sdk.Client`) and the daemon's
`mcp` component (Streamable HTTP on 127.0.0.1, off by default; over `LocalBus`). Both reach
capabilities through the bus (`caps.list`, `caps.invoke`), so they behave the same.

Tools: every capability matching an `expose` pattern (fnmatch, nothing by default), named by
`loomd.agents.tools.tool_specs` (valid MCP names, unique: `lights.set@2` is `lights_set`,
`lights.set@1` is `lights_set_v1`; each tool calls its pinned version), plus
`loomd_publish`, `loomd_state_get` and `loomd_watch`. Arguments are checked by the action
broker against the capability's schema, strictly: `"30"` for an integer is
`invalid_params`, never coerced.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from loomd.agents.capability import CapabilitySpec
from loomd.agents.tools import tool_specs
from loomd.bus.envelope import QoS
from loomd.messages import CapInvoke, CapResult, CapsList, Topic

__all__ = ["Bridge", "build_server", "guarded"]

BUS_TOOLS: dict[str, dict[str, Any]] = {
    "loomd_publish": {
        "description": "Publish one event on the loomd bus (reliable).",
        "inputSchema": {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "description": "dot-separated topic"},
                "payload": {"description": "any JSON value"},
            },
            "required": ["topic"],
        },
    },
    "loomd_state_get": {
        "description": "Read one key of loomd's key-value state.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "key": {"type": "string"},
                "ns": {"type": "string", "description": "namespace", "default": "user"},
            },
            "required": ["key"],
        },
    },
    "loomd_watch": {
        "description": "Events on a topic pattern during the next few seconds (at most n).",
        "inputSchema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "description": "`*` one segment, `#` any"},
                "n": {"type": "integer", "default": 10},
                "wait_s": {"type": "number", "default": 1.0},
            },
            "required": ["pattern"],
        },
    },
}


class Bridge:
    """What the MCP server does, over any `Bus` (plus a state reader)."""

    def __init__(
        self,
        bus: Any,
        expose: Sequence[str],
        state_get: Callable[[str, str], Awaitable[Any]],
        call_timeout_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.expose = list(expose)
        self.state_get = state_get
        self.call_timeout_s = call_timeout_s
        self._names: dict[str, str] = {}  # MCP tool name -> capability

    async def tools(self) -> list[dict[str, Any]]:
        out = [{"name": k, **v} for k, v in BUS_TOOLS.items()]
        if not self.expose:
            return out
        caps = CapsList.from_event(await self.bus.request(Topic.CAPS_LIST, None, timeout=5.0))
        chosen = [
            CapabilitySpec(c.name, c.version, c.description, c.schema)
            for c in caps.caps
            if any(fnmatch.fnmatchcase(c.name, p) or fnmatch.fnmatchcase(c.full, p)
                   for p in self.expose)
        ]  # fmt: skip
        self._names.clear()
        for t in tool_specs(chosen, reserved=BUS_TOOLS):
            self._names[t.name] = t.capability
            out.append({"name": t.name, "description": t.description, "inputSchema": t.parameters})
        return out

    async def call(self, name: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """(ok, value or error text)."""
        if name == "loomd_publish":
            ev = await self.bus.publish(str(args["topic"]), args.get("payload"))
            return True, {"id": ev.id.hex()}
        if name == "loomd_state_get":
            return True, await self.state_get(str(args.get("ns") or "user"), str(args["key"]))
        if name == "loomd_watch":
            return True, await self._watch(
                str(args["pattern"]), int(args.get("n", 10)), float(args.get("wait_s", 1.0))
            )
        if name not in self._names:
            await self.tools()
        cap = self._names.get(name)
        if cap is None:
            return False, f"no tool {name!r}"
        body = CapInvoke(cap, args, self.call_timeout_s)
        ev = await self.bus.request(body.TOPIC, body.to_payload(), timeout=self.call_timeout_s + 1)
        r = CapResult.from_payload(ev.payload)
        if r.ok:
            return True, r.value
        return False, f"{r.code}: {r.error}"

    async def _watch(self, pattern: str, n: int, wait_s: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with self.bus.subscribe(pattern, QoS.REALTIME) as sub:
            await sub.ready()
            try:
                async with asyncio.timeout(min(wait_s, 30.0)):
                    while len(out) < n:
                        ev = await sub.get()
                        payload = ev.payload if not isinstance(ev.payload, bytes) else "<bytes>"
                        out.append({"topic": ev.topic, "payload": payload, "sender": ev.sender})
            except TimeoutError:
                pass
        return out


def build_server(bridge: Bridge, name: str = "loomd") -> Any:
    """A low-level `mcp` server whose tools come from `bridge` on every list."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    async def list_tools(ctx: Any, params: Any) -> Any:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t["name"], description=t["description"],
                           input_schema=t["inputSchema"])
                for t in await bridge.tools()
            ]
        )  # fmt: skip

    async def call_tool(ctx: Any, params: Any) -> Any:
        try:
            ok, value = await bridge.call(params.name, dict(params.arguments or {}))
        except Exception as exc:
            ok, value = False, f"{type(exc).__name__}: {exc}"
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        structured = value if ok and isinstance(value, dict) else None
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content=structured,
            is_error=not ok,
        )

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def guarded(server: Any, guard: Any) -> Any:
    """The Streamable HTTP app of `server` behind `guard` (a `loomd.web.auth.HttpGuard`):
    403 for a foreign `Origin` (the MCP spec's rule against DNS rebinding), 401 without a
    valid bearer token when bound beyond loopback. The SDK's own Host/Origin check stays on
    for loopback, with the configured origins added."""
    from mcp.server.transport_security import TransportSecuritySettings

    from loomd.web.server import guarded as web_guarded

    loopback = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=not guard.required,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=[*loopback, *guard.origins],
    )
    app = server.streamable_http_app(transport_security=security)
    return web_guarded(app, guard)
