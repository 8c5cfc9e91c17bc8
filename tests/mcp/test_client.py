"""MCP servers' tools as capabilities: the real `mcp-server-time`, and servers of our own that
misbehave (garbage on stdout, exit during initialize, hang, exit mid-call, missing)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop

from loomd.agents.component import AgentsComponent
from loomd.bus.envelope import QoS
from loomd.mcp.component import McpComponent
from tests.agents.helpers import running, wait_until

pytest.importorskip("mcp")
pytest.importorskip("mcp_server_time")

SERVERS = Path(__file__).parent / "servers"


def server(name: str, script: str | None = None, **kw: Any) -> dict[str, Any]:
    args = ["-m", "mcp_server_time"] if script is None else [str(SERVERS / script)]
    return {"name": name, "command": sys.executable, "args": args, **kw}


def mcp_of(host: Any) -> McpComponent:
    comp = host.get("mcp")
    assert isinstance(comp, McpComponent), host.status()["components"]["mcp"]
    return comp


def test_mcp_server_time_tools_are_capabilities(short_tmp: Path) -> None:
    async def main() -> None:
        extra = {"mcp.servers": [server("time", init_timeout_s=60)]}
        async with running(short_tmp, extra) as (host, comp):
            await wait_until(lambda: comp.broker.resolve("time:get_current_time"), 60, "tools")
            caps = {c["name"]: c for c in comp.broker.list()}
            assert caps["time:get_current_time"]["kind"] == "sdk"  # offered over the bus
            assert caps["time:get_current_time"]["schema"]["required"] == ["timezone"]
            assert "time:convert_time" in caps
            r = await comp.broker.call("time:get_current_time", {"timezone": "UTC"})
            assert r.ok, r
            assert r.value["timezone"] == "UTC" and r.value["datetime"][:4].isdigit()
            bad = await comp.broker.call("time:get_current_time", {})
            assert bad.code == "invalid_params" and "timezone" in bad.error
            r2 = await comp.broker.call("time:get_current_time", {"timezone": "Mars/Olympus"})
            assert r2.code in ("capability_error", "invalid_params"), r2
            assert mcp_of(host).status().servers[0]["state"] == "running"

    uvloop.run(main())


def test_misbehaving_servers_are_restarted_and_reported(short_tmp: Path) -> None:
    fast = {"init_timeout_s": 1.0, "backoff_max_s": 0.5}
    extra = {
        "mcp.servers": [
            server("garbage", "garbage.py", **fast),
            server("early", "exit_init.py", **fast),
            {"name": "missing", "command": "/nonexistent/mcp-server", **fast},
            server("time", init_timeout_s=60),
        ]
    }

    async def main() -> None:
        async with running(short_tmp, extra) as (host, comp):
            m = mcp_of(host)
            async with comp.ctx.bus.subscribe("loomd.error", QoS.RELIABLE) as errs:
                seen: dict[str, str] = {}
                async with __import__("asyncio").timeout(30):
                    while len(seen) < 3:
                        ev = await errs.get()
                        msg = ev.payload["message"]
                        for name in ("garbage", "early", "missing"):
                            if f"MCP server {name}:" in msg:
                                seen[name] = msg
            assert "initialize" in seen["garbage"]  # no answer to initialize in 1 s
            assert "missing" in seen
            await wait_until(lambda: m.supervisors["early"].restarts >= 2, 20, "restarts")
            # the good server is unaffected
            await wait_until(lambda: comp.broker.resolve("time:get_current_time"), 60, "time")
            assert (await comp.broker.call("time:get_current_time", {"timezone": "UTC"})).ok
            assert comp.broker.resolve("garbage:anything") is None

    uvloop.run(main())


def _ready(comp: AgentsComponent, name: str) -> Any:
    return comp.broker.resolve(name)


def test_hang_exit_mid_call_and_list_changed(short_tmp: Path) -> None:
    extra = {
        "mcp.servers": [
            server("flaky", "flaky.py", call_timeout_s=0.5, hang_limit=2, backoff_max_s=0.5,
                   init_timeout_s=30)
        ]
    }  # fmt: skip

    async def main() -> None:
        async with running(short_tmp, extra) as (host, comp):
            m = mcp_of(host)
            sup = m.supervisors["flaky"]
            await wait_until(lambda: _ready(comp, "flaky:ok"), 30, "flaky tools")
            # MCPServer wraps a plain return value as structured content {"result": ...}
            assert (await comp.broker.call("flaky:ok", {"text": "a"})).value == {"result": "ok a"}
            # tools/list_changed: a new tool appears as a capability
            assert (await comp.broker.call("flaky:grow", {})).ok
            await wait_until(lambda: _ready(comp, "flaky:extra"), 10, "extra tool")
            assert (await comp.broker.call("flaky:extra", {})).value == {"result": "extra here"}
            # hangs: timeouts, then a restart
            for _ in range(2):
                r = await comp.broker.call("flaky:hang", {}, timeout=5)
                assert r.code == "timeout", r
            await wait_until(lambda: sup.restarts >= 1, 10, "restart after hangs")
            await wait_until(lambda: sup.state == "running" and _ready(comp, "flaky:ok"), 30, "up")
            assert (await comp.broker.call("flaky:ok", {"text": "b"})).value == {"result": "ok b"}
            # exit in the middle of a call: fails at once, not after the timeout
            began = time.monotonic()
            r = await comp.broker.call("flaky:die", {}, timeout=20)
            assert r.code == "provider_unavailable", r
            assert time.monotonic() - began < 5
            await wait_until(lambda: sup.restarts >= 2, 10, "restart after exit")
            await wait_until(lambda: sup.state == "running" and _ready(comp, "flaky:ok"), 30, "up")
            assert (await comp.broker.call("flaky:ok", {"text": "c"})).value == {"result": "ok c"}

    uvloop.run(main())
