"""`llm.chat` as a broker capability: offered over the bus, called through the broker with
its deadline, typed params checked, tool calls in the result."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loomd.host import Host
from loomd.messages import CapsList, Topic
from loomd.settings import load_config

from .conftest import SWITCH, run


async def _invoke(bus: Any, params: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    body = {"cap": "llm.chat", "params": params, "timeout": timeout}
    reply = await bus.request("caps.invoke", body, timeout=timeout + 5)
    assert isinstance(reply.payload, dict)
    return reply.payload


def test_llm_chat_is_a_capability(tmp_path: Path, tiny: Path) -> None:
    pytest.importorskip("llama_cpp")
    cfg = tmp_path / "loomd.toml"
    cfg.write_text(
        f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
        f'cache_dir = "{tmp_path}/cache"\n[agents]\nentry_points = false\n'
        f'[llm]\nenabled = true\nmodel = "{tiny}"\n'
    )

    async def body() -> None:
        async with Host(load_config(cfg), names=["state", "bus", "agents", "llm"]) as host:
            bus = host.get("llm").ctx.bus
            async with asyncio.timeout(20):  # offered once the agents take registrations
                while True:
                    listed = CapsList.from_event(
                        await bus.request(Topic.CAPS_LIST, None, timeout=5)
                    )
                    found = [c for c in listed.caps if c.name == "llm.chat"]
                    if found:
                        break
                    await asyncio.sleep(0.1)
            schema = found[0].schema
            assert schema["required"] == ["messages"]
            assert schema["properties"]["max_tokens"]["type"] == "integer"

            r = await _invoke(
                bus, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            )
            assert r["code"] == "ok", r
            assert r["value"]["route"] == "local" and r["value"]["tokens"] > 0
            assert r["provider"] == "llm"

            forced = {
                "messages": [{"role": "user", "content": "light on"}],
                "tools": [SWITCH],
                "tool_choice": "switch",
                "max_tokens": 32,
            }
            r = await _invoke(bus, forced)
            assert r["code"] == "ok", r
            (call,) = r["value"]["tool_calls"]
            assert call["name"] == "switch" and call["arguments"] in ({"on": True}, {"on": False})

            # typed params: the broker refuses a wrong type before the router sees it
            bad = await _invoke(
                bus, {"messages": [{"role": "user", "content": "x"}], "max_tokens": "4"}
            )
            assert bad["code"] == "invalid_params" and "max_tokens" in bad["error"]
            # a message the contract refuses is invalid_params too
            role = await _invoke(bus, {"messages": [{"role": "robot", "content": "x"}]})
            assert role["code"] == "invalid_params" and "robot" in role["error"]
            # the router's refusal is the capability's error
            private = await _invoke(
                bus,
                {"messages": [{"role": "user", "content": "x"}], "privacy": "private",
                 "tools": [SWITCH], "tool_choice": "nope"},
            )  # fmt: skip
            assert private["code"] == "invalid_params" and "nope" in private["error"]
            # the deadline: a turn longer than the call's timeout ends as timeout
            slow = await _invoke(
                bus,
                {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2000},
                timeout=0.05,
            )
            assert slow["code"] == "timeout"

    run(body(), timeout=120)
