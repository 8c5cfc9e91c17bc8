"""Identities and permissions over real sockets, one test per identity kind: a unix peer of
another uid (a child process run as `nobody`), a CurveZMQ key over TCP, an in-process
plugin, and loomd's MCP server driven by the `mcp` client as another uid. Each shows
allowed and forbidden paths, that a forbidden call never runs, that a forbidden publish
reaches nobody, and that `loomd.error` says so."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
import zmq.auth

from loomd.errors import LoomdError
from loomd.messages import CapInvoke, CapResult, ErrorEvent
from loomd.sdk import Client, connect
from tests.conftest import LoomdProcess, free_port

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs a client as another uid")

DEMO = """
from loomd.agents import Agent, capability
from loomd.errors import CallError, LoomdError

RUNS = {"lock": 0, "private": 0}


@capability("demo.echo", sentences=["echo the demo"])
def echo(text: str = "") -> str:
    return text


@capability("demo.lock", sensitive=True, sentences=["lock the demo"])
def lock() -> str:
    RUNS["lock"] += 1
    return "locked"


@capability("demo.private", allowed_callers=["uid:1"])
def private() -> str:
    RUNS["private"] += 1
    return "secret"


@capability("demo.runs")
def runs() -> dict:
    return dict(RUNS)


class Prober(Agent):
    id = "prober"
    topics = ("probe.go",)
    publishes = ("probe.out",)
    calls = ("demo.echo",)

    async def on_event(self, ctx, event):
        out = {}
        for topic in ("probe.out", "action.secret"):
            try:
                await ctx.publish(topic, {"x": 1})
                out[topic] = "ok"
            except LoomdError as exc:
                out[topic] = exc.code
        for cap in ("demo.echo", "demo.lock", "demo.runs"):
            try:
                await ctx.call(cap)
                out[cap] = "ok"
            except CallError as exc:
                out[cap] = exc.code
        try:
            async with ctx.bus.subscribe("action.#"):
                out["sub action"] = "ok"
        except LoomdError as exc:
            out["sub action"] = exc.code
        await ctx.reply(event, out)
"""

GUEST_RULES = """
[[acl]]
identity = ["uid:65534"]
publish = ["sensor.#"]
subscribe = ["sensor.#"]
call = ["demo.*"]
state = ["guest"]
control = ["state.*", "mcp.expose", "agents.call", "assist.converse"]

[[acl]]
identity = ["curve:laptop"]
publish = ["sensor.#"]
subscribe = ["sensor.#"]
"""

# What the guest tries, in a child process that runs as `nobody`; prints one JSON line.
GUEST = """
import asyncio, json, sys
from loomd.errors import RemoteError
from loomd.messages import CapInvoke, CapResult
from loomd.sdk import connect
from tests.bus.test_acl_identities import drop_to_nobody

drop_to_nobody()

async def main():
    out = {}
    async with connect(sys.argv[1], name="guest") as bus:
        async def attempt(key, coro):
            try:
                await coro
                out[key] = "ok"
            except RemoteError as exc:
                out[key] = exc.code
        await attempt("pub sensor", bus.publish("sensor.kitchen.temp", {"c": 20}))
        await attempt("pub action", bus.publish("action.door.open", {"by": "guest"}))
        await attempt("sub sensor", bus.subscribe("sensor.#").ready())
        await attempt("sub all", bus.subscribe("#").ready())
        await attempt("sub action", bus.subscribe("action.#").ready())
        for cap in sys.argv[2].split(","):
            ev = await bus.request("caps.invoke", CapInvoke(cap).to_payload(), type=CapInvoke.TYPE)
            out["call " + cap] = CapResult.from_payload(ev.payload).code
        await attempt("state guest", bus.call("state.put", args=["k", 1], ns="guest"))
        await attempt("state user", bus.call("state.put", args=["k", 1], ns="user"))
        await attempt("agents.stop", bus.call("agents.stop", args=["demo"]))
        out["agents.call"] = (await bus.call("agents.call", args=["demo.lock"]))["code"]
        turn = await bus.call("assist.converse", args=["lock the demo"])
        out["assist"] = [a["code"] for a in turn["actions"]]
        st = (await bus.status())["status"]["components"]["bus"]["status"]
        out["you"] = st["you"]
        out["clients"] = sorted(st["clients"])
        out["owners"] = sorted({s["owner"] for s in st["subscriptions"]})
    print(json.dumps(out))

asyncio.run(main())
"""


def _daemon(root: Path, extra: str = "") -> LoomdProcess:
    os.chmod(root, 0o755)  # the guest must reach the socket
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "demo.py").write_text(DEMO)
    (root / "acl.d").mkdir()
    toml = (
        f'[bus]\nsocket_mode = "0666"\nacl_dir = "{root}/acl.d"\n{extra}'
        f'[agents]\ndirs = ["{plugins}"]\nentry_points = false\n'
        f"[home]\nenabled = false\n"
        f"{GUEST_RULES}"
    )
    return LoomdProcess(root, toml)


def drop_to_nobody() -> None:
    """Become uid/gid `nobody`, in a child that imported what it needs first (the Python
    install under /root is not readable by nobody): the kernel records the credentials at
    connect(), so the daemon sees uid 65534 on the unix socket."""
    import encodings.idna  # noqa: F401  (lazily imported by asyncio and zmq otherwise)

    import uvloop  # noqa: F401

    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    assert os.getuid() == NOBODY


# `loomctl mcp` as nobody: import it all, drop, then run it
MCP_AS_NOBODY = """
import sys
import mcp.server.stdio, mcp.server.lowlevel, loomd.ctl, loomd.mcp.cli, loomd.mcp.server
from tests.bus.test_acl_identities import drop_to_nobody

drop_to_nobody()
sys.exit(loomd.ctl.main(sys.argv[1:]))
"""


def _as_nobody(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
    )


def _guest(d: LoomdProcess, caps: str = "demo.echo,demo.lock,demo.private") -> dict[str, Any]:
    os.chmod(d.root / "run", 0o755)  # the runtime dir is the daemon's own (0700)
    script = d.root / "guest.py"
    script.write_text(GUEST)
    r = _as_nobody(sys.executable, str(script), d.endpoint, caps)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


async def _call(bus: Client, cap: str) -> CapResult:
    ev = await bus.request("caps.invoke", CapInvoke(cap).to_payload(), type=CapInvoke.TYPE)
    return CapResult.from_payload(ev.payload)


async def _plugins_up(bus: Client) -> None:
    """The plugins register their capabilities just after the daemon says READY."""
    for _ in range(100):
        if (await _call(bus, "demo.runs")).ok:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the demo plugin's capabilities did not appear within 10 s")


async def _acl_source(bus: Client) -> str:
    st = (await bus.status())["status"]["components"]["bus"]["status"]
    return str(st["acl"])


def test_unix_peer_of_another_uid(short_tmp: Path) -> None:
    d = _daemon(short_tmp)
    d.start()
    try:

        async def main() -> None:
            async with connect(d.endpoint, name="root-watch") as root:
                actions = root.subscribe("action.#", "reliable")
                errors = root.subscribe(ErrorEvent.TOPIC, "reliable")
                await actions.ready()
                await errors.ready()
                await _plugins_up(root)
                for _ in range(100):  # the assist reads the catalogue on caps.changed
                    turn = await root.call("assist.converse", args=["echo the demo"])
                    if turn["actions"]:
                        break
                    await asyncio.sleep(0.1)
                me = (await root.status())["status"]["components"]["bus"]["status"]
                assert me["you"].startswith("unix:root(0)")
                out = await asyncio.to_thread(_guest, d)
                assert out["you"] == "uid:65534" or out["you"].endswith("(65534)")
                assert out["pub sensor"] == "ok" and out["pub action"] == "forbidden"
                assert out["sub sensor"] == "ok"
                assert out["sub all"] == out["sub action"] == "forbidden"
                assert out["call demo.echo"] == "ok"
                assert out["call demo.lock"] == "forbidden"  # sensitive: no rule says so
                assert out["call demo.private"] == "forbidden"  # allowed_callers
                assert out["state guest"] == "ok" and out["state user"] == "forbidden"
                assert out["agents.stop"] == "forbidden"
                assert out["agents.call"] == "forbidden"  # the op is allowed, the call is not
                # the assist acts for the turn's identity: the spoken lock is refused
                assert out["assist"] == ["forbidden"]
                # other clients' labels only to root
                assert out["clients"] == [c for c in out["clients"] if c.startswith("guest#")]
                assert "root-watch" not in " ".join(out["owners"])
                # nothing forbidden ran, nothing forbidden was delivered
                assert (await _call(root, "demo.runs")).value == {"lock": 0, "private": 0}
                await root.publish("action.marker", {"after": "guest"})
                first = await actions.get(5)
                assert first.topic == "action.marker", first.topic
                seen = []
                async with asyncio.timeout(5):
                    while not any("65534" in str(e.payload) for e in seen):
                        seen.append(await errors.get())
                codes = {ErrorEvent.from_event(e).code for e in seen}
                assert "forbidden" in codes
                # root is never limited
                assert (await _call(root, "demo.lock")).ok
                # the rules change without a restart: acl.d/ is read when it changes
                (d.root / "acl.d" / "10-locks.toml").write_text(
                    '[[acl]]\nidentity = ["uid:65534"]\ncall = ["demo.lock"]\nsensitive = true\n'
                )
                for _ in range(100):  # polled every 2 s by the daemon: 10 s deadline
                    if "1 in" in await _acl_source(root):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("acl.d/ change not applied within 10 s")
                out = await asyncio.to_thread(_guest, d, "demo.lock,demo.private")
                assert out["call demo.lock"] == "ok"
                assert out["call demo.private"] == "forbidden"
                assert out["agents.call"] == "ok" and out["assist"] == ["ok"]
                # root's one, and the guest's three (caps.invoke, agents.call, the assist)
                assert (await _call(root, "demo.runs")).value == {"lock": 4, "private": 0}

        uvloop.run(main())
    finally:
        d.close()


def test_no_rules_keeps_the_bus_but_closes_sensitive(short_tmp: Path) -> None:
    d = _daemon(short_tmp)
    d.write_config(d.extra_toml.replace(GUEST_RULES, ""))
    d.start()
    try:

        async def up() -> None:
            async with connect(d.endpoint) as root:
                await _plugins_up(root)

        uvloop.run(up())
        out = _guest(d)
        assert out["pub action"] == "ok" and out["sub all"] == "ok"
        assert out["call demo.echo"] == "ok" and out["call demo.lock"] == "forbidden"
        assert out["state user"] == "ok"
    finally:
        d.close()


def test_curve_key_over_tcp(short_tmp: Path) -> None:
    port = free_port()
    d = _daemon(short_tmp, f"tcp_enabled = true\ntcp_port = {port}\n")
    keys = short_tmp / "state" / "curve"
    (keys / "authorized").mkdir(parents=True)
    mine = short_tmp / "mine"
    mine.mkdir()
    pub_file, secret_file = zmq.auth.create_certificates(str(mine), "laptop")
    shutil.copy(pub_file, keys / "authorized" / "laptop.key")
    tab_pub, tab_secret = zmq.auth.create_certificates(str(mine), "tablet")
    d.start()
    try:
        server_pub, _ = zmq.auth.load_certificate(str(keys / "server.key"))

        def curve(secret: str) -> tuple[bytes, bytes, bytes]:
            pub, sec = zmq.auth.load_certificate(secret)
            assert sec is not None
            return (server_pub, pub, sec)

        async def main() -> None:
            ep = f"tcp://127.0.0.1:{port}"
            async with connect(ep, curve=curve(secret_file), name="laptop") as tb:
                st = (await tb.status())["status"]["components"]["bus"]["status"]
                assert st["you"] == "curve:laptop"
                await tb.publish("sensor.garden.temp", {"c": 11})
                with pytest.raises(LoomdError, match="forbidden"):
                    await tb.publish("action.door.open", {})
                with pytest.raises(LoomdError, match="forbidden"):
                    await tb.subscribe("#").ready()
                assert (await _call(tb, "demo.lock")).code == "forbidden"
            # a key added while the daemon runs is admitted (no restart), as `curve:tablet`
            shutil.copy(tab_pub, keys / "authorized" / "tablet.key")
            deadline = time.monotonic() + 15
            while True:
                try:
                    async with connect(ep, curve=curve(tab_secret), timeout=1.0) as tab:
                        st = (await tab.status())["status"]["components"]["bus"]["status"]
                        assert st["you"] == "curve:tablet"
                        # named by no rule: the implicit minimum only
                        with pytest.raises(LoomdError, match="forbidden"):
                            await tab.publish("sensor.garden.temp", {"c": 11})
                    break
                except (TimeoutError, LoomdError) as exc:
                    if "forbidden" in str(exc) or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        uvloop.run(main())
    finally:
        d.close()


def test_plugin_identity_and_manifest(short_tmp: Path) -> None:
    d = _daemon(short_tmp)
    d.start()
    try:

        async def main() -> None:
            async with connect(d.endpoint) as root:
                await _plugins_up(root)
                out = (await root.request("probe.go", {}, timeout=10)).payload
                assert out == {
                    "probe.out": "ok",
                    "action.secret": "forbidden",
                    "demo.echo": "ok",
                    "demo.lock": "forbidden",
                    "demo.runs": "forbidden",  # not in its manifest's `calls`
                    "sub action": "forbidden",
                }
                assert (await _call(root, "demo.runs")).value == {"lock": 0, "private": 0}

        uvloop.run(main())
    finally:
        d.close()


def test_mcp_client_as_another_uid(short_tmp: Path) -> None:
    pytest.importorskip("mcp")
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    d = _daemon(short_tmp, "")
    d.write_config(d.extra_toml + '[mcp]\nexpose = ["demo.*"]\n')
    d.start()
    try:

        async def main() -> None:
            async with connect(d.endpoint) as root:
                await _plugins_up(root)
            os.chmod(d.root / "run", 0o755)
            params = StdioServerParameters(
                command=sys.executable,
                args=["-c", MCP_AS_NOBODY, "--socket", str(d.socket), "mcp"],
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
                cwd=str(REPO),
            )
            async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
                await s.initialize()
                tools = {t.name for t in (await s.list_tools()).tools}
                assert {"demo_echo", "demo_lock"} <= tools
                ok = await s.call_tool("demo_echo", {"text": "hi"})
                assert not ok.is_error and ok.content[0].text.strip('"') == "hi", ok
                no = await s.call_tool("demo_lock", {})
                assert no.is_error and "forbidden" in no.content[0].text
                pub = await s.call_tool("loomd_publish", {"topic": "action.door", "payload": 1})
                assert pub.is_error and "forbidden" in pub.content[0].text
            async with connect(d.endpoint) as root:
                assert (await _call(root, "demo.runs")).value == {"lock": 0, "private": 0}

        uvloop.run(main())
    finally:
        d.close()
