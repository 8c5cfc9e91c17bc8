"""Plugins in a real in-process daemon: discovery, lifecycle, containment, hot reload."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import uvloop

from loomd.bus.envelope import QoS
from loomd.errors import RequestTimeout
from tests.agents.helpers import agent_state, running, wait_until, write_plugin

PING = """
from loomd.agents import Agent

class Ping(Agent):
    id = "ping"
    topics = ("demo.ping",)

    async def on_event(self, ctx, event):
        if event.payload == "boom":
            raise ValueError("boom payload")
        await ctx.reply(event, {"pong": event.payload, "v": VERSION})

VERSION = 1
"""


def test_plugin_file_runs_and_contains_handler_errors(short_tmp: Path) -> None:
    write_plugin(short_tmp, "ping", PING)

    async def main() -> None:
        async with running(short_tmp) as (_host, comp):
            bus = comp.ctx.bus
            await wait_until(lambda: agent_state(comp, "ping") == "running", what="ping running")
            r = await bus.request("demo.ping", 7, timeout=5)
            assert r.payload == {"pong": 7, "v": 1}
            async with bus.subscribe("loomd.agent.error", QoS.RELIABLE) as errs:
                await bus.publish("demo.ping", "boom")
                err = await errs.get(timeout=5)
            assert err.payload["agent"] == "ping"
            assert "ValueError: boom payload" in err.payload["error"]
            assert len(err.payload["event_id"]) == 32
            # still running, the error counted
            assert (await bus.request("demo.ping", 8, timeout=5)).payload["pong"] == 8
            view = next(v for v in comp._views() if v["id"] == "ping")
            assert view["errors"] == 1 and view["state"] == "running"
            assert "boom payload" in view["last_error"]

    uvloop.run(main())


CRASHY = """
from loomd.agents import Agent

STARTS = []

class Crashy(Agent):
    id = "crashy"

    async def start(self, ctx):
        STARTS.append(1)
        raise RuntimeError(f"start crash {len(STARTS)}")
"""


def test_crash_loop_backs_off_then_fails_others_unaffected(short_tmp: Path) -> None:
    write_plugin(short_tmp, "crashy", CRASHY)
    write_plugin(short_tmp, "ping", PING)

    async def main() -> None:
        async with running(short_tmp, crash_limit=3, backoff_max_s=0.2) as (_host, comp):
            await wait_until(lambda: agent_state(comp, "crashy") == "failed", what="failed")
            view = next(v for v in comp._views() if v["id"] == "crashy")
            assert view["restarts"] == 2  # 3 crashes: two restarts, then given up
            assert "crashed 3 times" in view["last_error"]
            assert "start crash 3" in view["last_error"]
            assert (await comp.ctx.bus.request("demo.ping", 1, timeout=5)).payload["pong"] == 1
            assert _host.get("agents") is comp and comp.healthy()
            # an operator can try again
            assert (await comp._cmd_start("crashy"))["state"] == "running"
            await wait_until(lambda: agent_state(comp, "crashy") == "failed", what="again")

    uvloop.run(main())


def test_hot_reload_and_a_broken_new_version_keeps_the_old(short_tmp: Path) -> None:
    path = write_plugin(short_tmp, "ping", PING)

    async def main() -> None:
        async with running(short_tmp) as (_host, comp):
            bus = comp.ctx.bus
            await wait_until(lambda: agent_state(comp, "ping") == "running", what="running")
            assert (await bus.request("demo.ping", 1, timeout=5)).payload["v"] == 1

            async def version() -> int:
                return int((await bus.request("demo.ping", 1, timeout=5)).payload["v"])

            async with bus.subscribe("loomd.agent.up", QoS.RELIABLE) as ups:
                write_plugin(short_tmp, "ping", PING.replace("VERSION = 1", "VERSION = 2"))
                assert (await ups.get(timeout=10)).payload == {"agent": "ping"}
            assert await version() == 2
            # a version that does not import: the old one keeps answering, and says why
            async with bus.subscribe("loomd.error", QoS.RELIABLE) as errs:
                write_plugin(short_tmp, "ping", PING + "\ndef broken(:\n")
                err = await errs.get(timeout=5)
            assert err.payload["code"] == "plugin_broken"
            assert "SyntaxError" in err.payload["message"]
            assert await version() == 2
            view = next(v for v in comp._views() if v["id"] == "ping")
            assert view["state"] == "running"
            assert "reload failed, old version kept" in view["last_error"]
            path.unlink()  # removing the file stops its agents
            await wait_until(lambda: agent_state(comp, "ping") == "absent", what="gone")

    uvloop.run(main())


BAD = {
    "noimport": "import nonexistent_module_xyz\n",
    "badinit": """
from loomd.agents import Agent
class BadInit(Agent):
    id = "badinit"
    def __init__(self, settings=None):
        raise KeyError("no way")
""",
    "badpattern": """
from loomd.agents import Agent
class BadPattern(Agent):
    id = "badpattern"
    topics = ("a..b",)
""",
    "dup": """
from loomd.agents import capability
@capability("ping.echo")
def echo(x: int) -> int:
    return x
""",
    "dup2": """
from loomd.agents import capability
@capability("ping.echo")
def echo(x: int) -> int:
    return x + 1
""",
    "hang": """
import asyncio
from loomd.agents import Agent
class Hang(Agent):
    id = "hang"
    topics = ("demo.hang",)
    async def on_event(self, ctx, event):
        await asyncio.sleep(3600)
""",
}


def test_bad_plugins_are_reported_and_the_rest_runs(short_tmp: Path) -> None:
    for name, code in BAD.items():
        write_plugin(short_tmp, name, code)
    write_plugin(short_tmp, "ping", PING)

    async def main() -> None:
        async with running(short_tmp, handler_timeout_s=0.3) as (_host, comp):
            bus = comp.ctx.bus
            await wait_until(lambda: agent_state(comp, "ping") == "running", what="ping")
            assert any("noimport" in s for s in comp.broken)
            assert "ModuleNotFoundError" in next(iter(comp.broken.values()))
            assert agent_state(comp, "badinit") == "failed"
            await wait_until(lambda: agent_state(comp, "badpattern") == "failed", what="pattern")
            view = {v["id"]: v for v in comp._views()}
            assert "KeyError" in view["badinit"]["last_error"]
            assert "invalid topic pattern 'a..b'" in view["badpattern"]["last_error"]
            assert view["badpattern"]["restarts"] == 0  # a restart cannot fix it
            # the capability registered once; the second registration was refused
            await wait_until(lambda: comp.broker.resolve("ping.echo"), what="cap")
            r = await comp.broker.call("ping.echo", {"x": 1})
            assert r.ok and r.value == 1
            # a handler that never returns is cut off and counted
            await wait_until(lambda: agent_state(comp, "hang") == "running", what="hang")
            async with bus.subscribe("loomd.agent.error", QoS.RELIABLE) as errs:
                await bus.publish("demo.hang", 1)
                err = await errs.get(timeout=5)
            assert "did not return within 0.3 s" in err.payload["error"]
            assert comp.errors >= 4
            assert (await bus.request("demo.ping", 3, timeout=5)).payload["pong"] == 3

    uvloop.run(main())


BLOCKER = """
import time
from loomd.agents import Agent

class Blocker(Agent):
    id = "blocker"
    topics = ("demo.block",)

    async def on_event(self, ctx, event):
        if event.payload == "offload":
            await ctx.run_blocking(time.sleep, 0.25)
        else:
            time.sleep(0.25)  # holds the loop: named in the log
        await ctx.reply(event, "done")
"""


def test_loop_lag_is_attributed_and_run_blocking_offloads(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_plugin(short_tmp, "blocker", BLOCKER)

    async def main() -> None:
        async with running(short_tmp) as (_host, comp):
            await wait_until(lambda: agent_state(comp, "blocker") == "running", what="running")
            runner = comp.slots["blocker"].runner
            assert runner is not None
            with caplog.at_level(logging.WARNING, logger="loomd.agents.runtime"):
                await comp.ctx.bus.request("demo.block", "offload", timeout=5)
                assert runner.max_step_ms < 100
                assert not [r for r in caplog.records if "held the event loop" in r.message]
                await comp.ctx.bus.request("demo.block", "inline", timeout=5)
            held = [r.getMessage() for r in caplog.records if "held the event loop" in r.message]
            assert held and "agent blocker" in held[0] and "on_event(demo.block)" in held[0]
            assert runner.max_step_ms >= 240

    uvloop.run(main())


SETTINGS_PLUGIN = """
from dataclasses import dataclass
from loomd.agents import Agent

@dataclass(frozen=True)
class GreetSettings:
    greeting: str = "hello"
    times: int = 1

class Greeter(Agent):
    id = "greeter"
    topics = ("demo.greet",)
    Settings = GreetSettings

    async def on_event(self, ctx, event):
        await ctx.reply(event, " ".join([self.settings.greeting] * self.settings.times))
"""


def test_per_agent_settings_and_lifecycle_commands(short_tmp: Path) -> None:
    write_plugin(short_tmp, "greeter", SETTINGS_PLUGIN)
    write_plugin(short_tmp, "ping", PING)
    conf = {"greeter": {"greeting": "hi", "times": 2}, "ping": {"enabled": False}}

    async def main() -> None:
        async with running(short_tmp, agent=conf) as (_host, comp):
            bus = comp.ctx.bus
            await wait_until(lambda: agent_state(comp, "greeter") == "running", what="run")
            assert (await bus.request("demo.greet", None, timeout=5)).payload == "hi hi"
            assert agent_state(comp, "ping") == "disabled"
            assert (await comp._cmd_stop("greeter"))["state"] == "stopped"
            assert agent_state(comp, "greeter") == "stopped"
            with pytest.raises(RequestTimeout):
                await bus.request("demo.greet", None, timeout=0.3)
            await comp._cmd_start("greeter")
            await wait_until(lambda: agent_state(comp, "greeter") == "running", what="again")
            await comp._cmd_restart("greeter")
            await wait_until(lambda: agent_state(comp, "greeter") == "running", what="restart")
            assert (await bus.request("demo.greet", None, timeout=5)).payload == "hi hi"

    uvloop.run(main())


def test_per_agent_settings_are_validated(short_tmp: Path) -> None:
    write_plugin(short_tmp, "greeter", SETTINGS_PLUGIN)

    async def main() -> None:
        async with running(short_tmp, agent={"greeter": {"greting": "typo"}}) as (_host, comp):
            view = next(v for v in comp._views() if v["id"] == "greeter")
            assert view["state"] == "failed"
            assert "agents.greeter.greting" in view["last_error"]

    uvloop.run(main())


CAPS = """
import asyncio
from loomd.agents import capability

@capability("odd.value")
def odd() -> object:
    return object()  # CBOR cannot encode this

@capability("slow.nap")
async def nap(secs: float) -> str:
    await asyncio.sleep(secs)
    return "rested"
"""


def test_capability_results_and_deadlines(short_tmp: Path) -> None:
    write_plugin(short_tmp, "caps", CAPS)

    async def main() -> None:
        async with running(short_tmp) as (_host, comp):
            await wait_until(lambda: comp.broker.resolve("slow.nap"), what="caps")
            r = await comp.broker.call("odd.value", {})
            assert r.code == "error" and "CBOR cannot encode" in r.error
            began = asyncio.get_running_loop().time()
            r = await comp.broker.call("slow.nap", {"secs": 5}, timeout=0.2)
            took = asyncio.get_running_loop().time() - began
            assert r.code == "timeout" and 0.19 < took < 1.0, (r, took)
            assert (await comp.broker.call("slow.nap", {"secs": 0.01}, timeout=2)).value == "rested"
            assert comp.broker.pending() == 0
            # the schema came from the hints, and params are checked before the provider runs
            spec = {c["name"]: c for c in comp.broker.list()}["slow.nap"]
            assert spec["schema"]["properties"]["secs"] == {"type": "number"}
            bad = await comp.broker.call("slow.nap", {"secs": "long"})
            assert bad.code == "invalid_params" and bad.error.startswith("slow.nap@1: secs:")

    uvloop.run(main())
