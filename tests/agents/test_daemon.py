"""The agents component in the real daemon: SDK providers (kill -9 mid-call), idempotency
across a daemon restart, an entry-point plugin, and the `loomctl` commands."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import uvloop

from loomd.agents.sdk import sdk_ctx
from loomd.sdk import Client
from tests.conftest import LoomdProcess

HERE = Path(__file__).parent

TOKEN = """
import uuid
from loomd.agents import capability

AGENT_ID = "tokens"

@capability("token.new")
def new(label: str = "") -> str:
    \"\"\"A fresh random token: a second run could never return the same one.\"\"\"
    return label + uuid.uuid4().hex
"""

EP_PKG = """
from loomd.agents import Agent, capability

class EpAgent(Agent):
    id = "epagent"
    topics = ("demo.ep",)

    async def on_event(self, ctx, event):
        await ctx.reply(event, "from an entry point")

    @capability("ep.hello")
    def hello(self, name: str) -> str:
        return "hello " + name
"""


def _setup(root: Path) -> tuple[LoomdProcess, dict[str, str]]:
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "tokens.py").write_text(TOKEN)
    # A real installed distribution with an entry point, found through importlib.metadata.
    site = root / "site"
    (site / "ep_agent_pkg").mkdir(parents=True)
    (site / "ep_agent_pkg" / "__init__.py").write_text(EP_PKG)
    dist = site / "ep_agent_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-agent-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[loomd.agents]\nepagent = ep_agent_pkg:EpAgent\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    toml = f'[agents]\ndirs = ["{plugins}"]\nprovider_lease_s = 0.3\n'
    return LoomdProcess(root, toml, env=env), env


async def _caps(c: Client) -> dict[str, Any]:
    r = await c.call("agents.caps")
    return {f"{x['name']}@{x['version']}": x for x in r["capabilities"]}


async def _wait_cap(c: Client, name: str, present: bool = True, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while (name in await _caps(c)) != present:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)


async def slow_call_started(c: Client, ctx: Any) -> asyncio.Future[Any]:
    """`slow.sleep` of 30 s (deadline 20 s) called on `sdk_provider.py`, once it runs."""
    async with c.subscribe("test.provider.started") as started:
        await started.ready()
        call = asyncio.ensure_future(ctx.try_call("slow.sleep", {"secs": 30}, timeout=20))
        await started.get(timeout=10)
    return call


def test_sdk_provider_killed_mid_call_fails_at_once(short_tmp: Path) -> None:
    d, _ = _setup(short_tmp)
    d.start()
    child = subprocess.Popen([sys.executable, str(HERE / "sdk_provider.py"), d.endpoint])
    try:

        async def main() -> None:
            async with Client(d.endpoint, name="caller") as c:
                await _wait_cap(c, "slow.sleep@1")
                ctx = sdk_ctx(c, "caller")
                assert await ctx.call("sdk.echo", text="hi") == "hi"
                assert (await c.request("test.sdkprov", None, timeout=5)).payload == (
                    "sdk agent here"
                )
                call = await slow_call_started(c, ctx)
                began = time.monotonic()
                child.kill()  # SIGKILL: no goodbye
                r = await call
                took = time.monotonic() - began
                assert r.code == "provider_unavailable", r
                assert took < 3.0, f"took {took:.2f} s (lease 0.3 s, call timeout 20 s)"
                await _wait_cap(c, "slow.sleep@1", present=False)
                r2 = await ctx.try_call("sdk.echo", {"text": "x"})
                assert r2.code == "provider_unavailable"

        uvloop.run(main())
    finally:
        child.kill()
        child.wait(10)
        d.close()


def test_idempotency_survives_a_daemon_restart(short_tmp: Path) -> None:
    d, _ = _setup(short_tmp)
    d.start()
    try:

        async def calls(key: str | None) -> str:
            async with Client(d.endpoint, name="caller") as c:
                await _wait_cap(c, "token.new@1")
                value = await sdk_ctx(c, "caller").call("token.new", idempotency_key=key)
                return str(value)

        first = uvloop.run(calls("order-17"))
        assert uvloop.run(calls("order-17")) == first
        assert uvloop.run(calls(None)) != first
        d.restart()
        assert uvloop.run(calls("order-17")) == first  # kept in LMDB, provider not run
        assert uvloop.run(calls("order-18")) != first
    finally:
        d.close()


def _loomctl(d: LoomdProcess, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loomd.ctl", "--socket", str(d.socket), *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **env},
    )  # fmt: skip


def test_entry_point_plugin_and_loomctl(short_tmp: Path) -> None:
    d, env = _setup(short_tmp)
    d.start()
    try:

        async def ready() -> None:
            async with Client(d.endpoint, name="t") as c:
                await _wait_cap(c, "ep.hello@1")
                assert (await c.request("demo.ep", None, timeout=5)).payload == (
                    "from an entry point"
                )

        uvloop.run(ready())
        caps = _loomctl(d, env, "caps", "--json")
        assert caps.returncode == 0, caps.stderr
        by_name = {c["name"]: c for c in json.loads(caps.stdout)}
        assert by_name["ep.hello"]["schema"]["properties"]["name"] == {"type": "string"}
        assert by_name["ep.hello"]["schema"]["required"] == ["name"]
        ok = _loomctl(d, env, "call", "ep.hello", '{"name": "board"}')
        assert ok.returncode == 0 and json.loads(ok.stdout) == "hello board", ok.stderr
        bad = _loomctl(d, env, "call", "ep.hello", '{"nme": "board"}')
        assert bad.returncode == 1 and "invalid_params" in bad.stderr and "name" in bad.stderr
        listing = _loomctl(d, env, "agents")
        assert listing.returncode == 0, listing.stderr
        line = next(x for x in listing.stdout.splitlines() if x.startswith("epagent"))
        assert "running" in line and "entry point epagent (ep-agent-pkg)" in line
        assert "tokens" in listing.stdout
        stop = _loomctl(d, env, "agents", "stop", "epagent")
        assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stderr
        gone = _loomctl(d, env, "call", "ep.hello", '{"name": "x"}')
        assert gone.returncode == 1 and "provider_unavailable" in gone.stderr
        start = _loomctl(d, env, "agents", "start", "epagent")
        assert start.returncode == 0, start.stderr
        uvloop.run(ready())
        unknown = _loomctl(d, env, "agents", "restart", "nobody")
        assert unknown.returncode != 0 and "no agent 'nobody'" in unknown.stderr
    finally:
        d.close()


def test_plugin_dropped_into_a_running_daemon(short_tmp: Path) -> None:
    d, env = _setup(short_tmp)
    d.start()
    try:
        (short_tmp / "plugins" / "late.py").write_text(
            textwrap.dedent(TOKEN).replace('"token.new"', '"late.new"').replace("tokens", "late")
        )

        async def main() -> None:
            async with Client(d.endpoint, name="t") as c:
                await _wait_cap(c, "late.new@1")

        uvloop.run(main())
        r = _loomctl(d, env, "call", "late.new", '{"label": "x-"}')
        assert r.returncode == 0 and json.loads(r.stdout).startswith("x-"), r.stderr
    finally:
        d.close()


ISOLATED = """
import os
from dataclasses import dataclass
from loomd.agents import Agent, capability

@dataclass(frozen=True)
class Cfg:
    greeting: str = "hi"

class Iso(Agent):
    id = "iso"
    topics = ("demo.iso",)
    Settings = Cfg

    async def on_event(self, ctx, event):
        if event.payload == "hog":
            bytearray(400 * 1024 * 1024)  # over memory_mb: MemoryError, contained
        await ctx.reply(event, {"pid": os.getpid(), "greeting": self.settings.greeting})

    @capability("iso.pid")
    def pid(self) -> int:
        return os.getpid()
"""


def test_isolation_process_same_plugin_in_a_supervised_child(short_tmp: Path) -> None:
    plugins = short_tmp / "plugins"
    plugins.mkdir()
    (plugins / "iso.py").write_text(ISOLATED)
    toml = (
        f'[agents]\ndirs = ["{plugins}"]\nentry_points = false\nprovider_lease_s = 0.3\n'
        '[agents.iso]\nisolation = "process"\nmemory_mb = 300\ngreeting = "hello"\n'
    )
    d = LoomdProcess(short_tmp, toml)
    d.start()
    try:

        async def main() -> None:
            async with Client(d.endpoint, name="t") as c:
                await _wait_cap(c, "iso.pid@1")
                r = (await c.request("demo.iso", None, timeout=5)).payload
                assert r["greeting"] == "hello"
                child = r["pid"]
                assert child != d.pid()
                assert await sdk_ctx(c, "t").call("iso.pid") == child
                async with c.subscribe("loomd.agent.error") as errs:
                    await errs.ready()
                    await c.publish("demo.iso", "hog")
                    err = await errs.get(timeout=10)
                assert "MemoryError" in err.payload["error"]
                os.kill(child, 9)  # the child dies: restarted, the daemon unaffected
                async with asyncio.timeout(20):
                    while True:
                        try:
                            r = (await c.request("demo.iso", None, timeout=1)).payload
                        except Exception:
                            continue
                        if r["pid"] != child:
                            break
                agents = {a["id"]: a for a in (await c.call("agents.list"))["agents"]}
                assert agents["iso"]["restarts"] >= 1
                assert "process exited with -9" in agents["iso"]["last_error"]

        uvloop.run(main())
    finally:
        d.close()


def test_the_catalogue_announces_a_provider_coming_and_going(short_tmp: Path) -> None:
    """`caps.changed` once a provider's capabilities land and once they are gone, so the
    assist and the home read `caps.list` then instead of polling it."""
    from loomd.messages import CapsChanged, Topic

    d, _ = _setup(short_tmp)
    d.start()

    async def main() -> None:
        async with Client(d.endpoint, name="watcher") as c:

            async def next_change() -> tuple[CapsChanged, set[str]]:
                ev = CapsChanged.from_event(await changed.get(timeout=20))
                listed = await c.request(Topic.CAPS_LIST, None, timeout=5)
                return ev, {x["name"] for x in listed.payload["caps"]}

            async with c.subscribe(Topic.CAPS_CHANGED) as changed:
                await changed.ready()
                child = subprocess.Popen(  # noqa: ASYNC220 - starts at once
                    [sys.executable, str(HERE / "sdk_provider.py"), d.endpoint]
                )
                try:  # other components may announce theirs first: each step is an event
                    up, names = await next_change()
                    while not {"slow.sleep", "sdk.echo"} <= names:
                        up, names = await next_change()
                finally:
                    child.kill()
                    child.wait(10)
                down, names = await next_change()
                while "slow.sleep" in names:
                    down, names = await next_change()
                assert down.count < up.count

    try:
        uvloop.run(main())
    finally:
        d.close()
