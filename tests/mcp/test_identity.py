"""An MCP server loomd runs is `mcp:<name>` on the bus, never the daemon: a real server over
stdio whose tools call back (a log message, a sampling request to the router) is allowed or
refused by `[[acl]]` rules naming it, while its tools stay capabilities either way."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop

from loomd.agents.component import AgentsComponent
from loomd.bus.envelope import QoS
from loomd.host import Host
from loomd.mcp.component import McpComponent
from loomd.messages import McpLog
from tests.agents.helpers import settings_for, wait_until
from tests.testmodels import TINY, require

pytest.importorskip("mcp")

SERVER = str(Path(__file__).parent / "servers" / "callback.py")


def _server(name: str) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": [SERVER], "init_timeout_s": 60}


async def _up(host: Host, *names: str) -> tuple[AgentsComponent, McpComponent]:
    agents, mcp = host.get("agents"), host.get("mcp")
    assert isinstance(agents, AgentsComponent) and isinstance(mcp, McpComponent)
    for n in names:
        await wait_until(lambda n=n: agents.broker.resolve(f"{n}:ask"), 60, f"{n}'s tools")
    return agents, mcp


def test_each_server_is_its_own_identity_and_rules_decide(short_tmp: Path) -> None:
    require(TINY)
    pytest.importorskip("llama_cpp")
    extra = {
        "mcp.servers": [_server("notes"), _server("other")],
        "llm.enabled": True,
        "llm.model": str(TINY),
        "llm.threads": 1,
        "bus.acl": [
            # `notes` may log and ask the model; `other` is named by no rule: only its tools
            {"identity": ["mcp:notes"], "publish": ["mcp.log.notes", "llm.chat"]},
            {"identity": ["group:nobody-here"], "call": ["*"]},
        ],
    }

    async def main() -> None:
        settings = settings_for(short_tmp, extra)
        names = ["state", "bus", "agents", "mcp", "llm"]
        async with Host(settings, names=names) as host:
            agents, mcp = await _up(host, "notes", "other")
            view = {s["name"]: s for s in mcp.status().servers}
            assert view["notes"]["identity"] == "mcp:notes"
            assert view["other"]["identity"] == "mcp:other"
            # the registrations belong to the servers, not to `daemon:mcp`
            assert agents.service is not None
            owners = {p.id: str(p.owner) for p in agents.service.providers.values()}
            assert owners["mcp-notes"] == "mcp:notes" and owners["mcp-other"] == "mcp:other"
            bus = agents.ctx.bus
            async with (
                bus.subscribe("mcp.log.#", QoS.RELIABLE) as logs,
                bus.subscribe("loomd.error", QoS.RELIABLE) as errors,
            ):
                # allowed: notes' log message reaches the bus, published as mcp:notes
                r = await agents.broker.call("notes:note", {"text": "hello"}, timeout=20)
                assert r.ok and r.value == {"result": "noted hello"}, r
                ev = await logs.get(10)
                assert ev.topic == "mcp.log.notes" and str(ev.caller.identity) == "mcp:notes"
                got = McpLog.from_event(ev)
                assert (got.server, got.level, got.data, got.logger) == (
                    "notes", "info", "hello", "notes"
                )  # fmt: skip
                # forbidden: other's log is refused (its tool still answers), said on loomd.error
                r = await agents.broker.call("other:note", {"text": "psst"}, timeout=20)
                assert r.ok and r.value == {"result": "noted psst"}, r
                async with asyncio.timeout(10):
                    while True:
                        e = (await errors.get()).payload
                        if e.get("code") == "forbidden" and "mcp:other" in e["message"]:
                            break
                assert "mcp.log.other" in e["message"]
                await wait_until(lambda: mcp.supervisors["other"].refused >= 1, 5, "counted")
                assert logs.depth() == 0  # nothing of other's was delivered
                # sampling: notes may ask the router (a real llama.cpp turn); other may not
                r = await agents.broker.call("notes:ask", {"question": "hi"}, timeout=60)
                assert r.ok and r.value["result"].startswith("answer: "), r
                r = await agents.broker.call("other:ask", {"question": "hi"}, timeout=60)
                assert r.ok, r
                assert r.value["result"].startswith("refused: "), r
                assert "forbidden" in r.value["result"] and "llm.chat" in r.value["result"]
                assert mcp.supervisors["other"].refused >= 2
                assert mcp.supervisors["notes"].refused == 0

    uvloop.run(main())


def test_without_rules_a_server_may_what_a_local_client_may(short_tmp: Path) -> None:
    async def main() -> None:
        async with Host(
            settings_for(short_tmp, {"mcp.servers": [_server("other")]}),
            names=["state", "bus", "agents", "mcp"],
        ) as host:
            agents, mcp = await _up(host, "other")
            async with agents.ctx.bus.subscribe("mcp.log.#", QoS.RELIABLE) as logs:
                r = await agents.broker.call("other:note", {"text": "hi"}, timeout=20)
                assert r.ok, r
                ev = await logs.get(10)
                assert str(ev.caller.identity) == "mcp:other"
                assert not ev.caller.identity.superuser
            assert mcp.supervisors["other"].logs == 1

    uvloop.run(main())
