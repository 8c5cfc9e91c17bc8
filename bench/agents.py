"""Agents, capabilities and MCP: round trips and calls against their raw baselines.

    .venv/bin/python bench/agents.py [--quick]

In one run: a bus request/reply round trip in process and over the SDK against a raw pyzmq
REQ/REP round trip over ipc; capability call p50/p99 in process, from an SDK client through
the daemon to an SDK provider, and through MCP to `mcp-server-time` (against the raw `mcp`
client calling the same server); a fan-out to 10 agents with `majority`; the daemon's RSS
with 10 idle plugins against none. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import uvloop
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import daemon_config, spawn_daemon, wait_settled  # noqa: E402
from loomd.agents.ctx import AgentCtx, LocalBackend  # noqa: E402
from loomd.agents.sdk import sdk_ctx  # noqa: E402
from loomd.host import Host  # noqa: E402
from loomd.sdk import Client  # noqa: E402
from loomd.settings import load_config  # noqa: E402

PLUGIN = """
from loomd.agents import Agent, capability

class Echo(Agent):
    id = "echo"
    topics = ("bench.echo",)
    async def on_event(self, ctx, event):
        await ctx.reply(event, event.payload)

@capability("bench.add")
def add(a: int, b: int) -> int:
    return a + b
"""

FAN = """
from loomd.agents import Agent

class Fan{i}(Agent):
    id = "fan{i}"
    topics = ("bench.fan.{i}",)
    async def on_event(self, ctx, event):
        await ctx.reply(event, {i})
"""

PROVIDER = """
import sys, uvloop
from loomd.agents import Agent, capability
from loomd.agents.sdk import run_agent
from loomd.sdk import Client

class Prov(Agent):
    id = "benchprov"
    @capability("sdk.add")
    def add(self, a: int, b: int) -> int:
        return a + b

async def main():
    async with Client(sys.argv[1], name="benchprov") as c:
        await run_agent(c, Prov())

uvloop.run(main())
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def timed(n: int, fn: Callable[[], Awaitable[Any]], warm: int = 50) -> list[float]:
    for _ in range(warm):
        await fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


def raw_zmq_rtt(root: Path, n: int) -> list[float]:
    ctx = zmq.Context()
    addr = f"ipc://{root}/raw.sock"
    rep = ctx.socket(zmq.REP)
    rep.bind(addr)

    def serve() -> None:
        for _ in range(n + 50):
            rep.send(rep.recv())

    t = threading.Thread(target=serve)
    t.start()
    req = ctx.socket(zmq.REQ)
    req.connect(addr)
    out = []
    for i in range(n + 50):
        t0 = time.perf_counter()
        req.send(b"x" * 32)
        req.recv()
        if i >= 50:
            out.append(time.perf_counter() - t0)
    t.join()
    req.close(0)
    rep.close(0)
    ctx.term()
    return out


def _settings(root: Path, plugins: Path) -> Any:
    return load_config(
        None,
        overrides={
            "paths.runtime_dir": str(root / "run"),
            "paths.state_dir": str(root / "state"),
            "paths.cache_dir": str(root / "cache"),
            "metrics.enabled": False,
            "agents.dirs": [str(plugins)],
            "agents.entry_points": False,
        },
    )


def write_plugins(d: Path, fans: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "echo.py").write_text(PLUGIN)
    for i in range(fans):
        (d / f"fan{i}.py").write_text(FAN.format(i=i))


async def in_process(root: Path, n: int) -> dict[str, float]:
    plugins = root / "plugins-in"
    write_plugins(plugins, 10)
    async with Host(_settings(root / "inproc", plugins), names=["state", "bus", "agents"]) as h:
        comp: Any = h.get("agents")
        async with asyncio.timeout(20):
            while comp.broker.resolve("bench.add") is None or len(comp.slots) < 12:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            while any(v["state"] != "running" for v in comp._views()):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        ctx = AgentCtx("bench", comp.ctx.bus, LocalBackend(comp.broker, h.services.state.kv))  # type: ignore[union-attr]
        rtt = await timed(n, lambda: ctx.request("bench.echo", 1, timeout=5))
        call = await timed(n * 2, lambda: ctx.call("bench.add", a=1, b=2))
        topics = [f"bench.fan.{i}" for i in range(10)]
        fan = await timed(max(100, n // 4), lambda: ctx.fanout(topics, 1, strategy="majority"))
    return {
        "request_rtt_inproc_p50_ms": pct(rtt, 0.5),
        "inproc_call_p50_ms": pct(call, 0.5),
        "inproc_call_p99_ms": pct(call, 0.99),
        "fanout10_p50_ms": pct(fan, 0.5),
        "fanout10_p99_ms": pct(fan, 0.99),
    }


class Daemon:
    def __init__(self, root: Path, fans: int) -> None:
        self.root = root
        plugins = root / "plugins"
        write_plugins(plugins, fans) if fans else plugins.mkdir(parents=True, exist_ok=True)
        if not fans:
            (plugins / "echo.py").write_text(PLUGIN)
        cfg = daemon_config(
            root,
            f'[metrics]\nenabled = false\n[agents]\ndirs = ["{plugins}"]\nentry_points = false\n',
        )
        self.endpoint = f"ipc://{root}/run/bus.sock"
        env = {**os.environ}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = spawn_daemon(cfg, env=env)

    async def ready(self, agents: int) -> None:
        async with asyncio.timeout(30):
            while not (self.root / "run" / "bus.sock").exists():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            async with Client(self.endpoint, name="bench-wait") as c:
                while True:
                    r = await c.call("agents.list")
                    if sum(a["state"] == "running" for a in r["agents"]) >= agents:
                        break
                    await asyncio.sleep(0.05)
        await asyncio.to_thread(wait_settled, self.proc.pid)  # the rest of the start

    def rss_mb(self) -> float:
        return float(psutil.Process(self.proc.pid).memory_info().rss / 2**20)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


async def over_sdk(root: Path, n: int, provider_only: bool = False) -> dict[str, float]:
    d = Daemon(root / "sdk", 0)
    prov = None
    try:
        await d.ready(2)
        script = root / "provider.py"
        script.write_text(PROVIDER)
        prov = subprocess.Popen([sys.executable, str(script), d.endpoint])  # noqa: ASYNC220
        async with Client(d.endpoint, name="bench") as c:
            async with asyncio.timeout(30):
                while not any(  # noqa: ASYNC110
                    x["name"] == "sdk.add" for x in (await c.call("agents.caps"))["capabilities"]
                ):
                    await asyncio.sleep(0.05)
            ctx = sdk_ctx(c, "bench")
            out = {}
            if not provider_only:
                rtt = await timed(n, lambda: ctx.request("bench.echo", 1, timeout=5))
                local = await timed(n, lambda: ctx.call("bench.add", a=1, b=2))
                out["request_rtt_sdk_p50_ms"] = pct(rtt, 0.5)
                out["sdk_to_plugin_call_p50_ms"] = pct(local, 0.5)
            began = time.monotonic_ns()
            sdk = await timed(n, lambda: ctx.call("sdk.add", a=1, b=2))
            window = [began, time.monotonic_ns()]  # to line up other records (GC, perf)
        return out | {
            "sdk_call_window_ns": window,
            "sdk_call_p50_ms": pct(sdk, 0.5),
            "sdk_call_p90_ms": pct(sdk, 0.9),
            "sdk_call_p99_ms": pct(sdk, 0.99),
        }
    finally:
        if prov is not None:
            prov.kill()
            prov.wait(10)
        d.stop()


async def plugins_rss(root: Path, settle: float) -> dict[str, float]:
    out = {}
    for fans in (0, 10):
        d = Daemon(root / f"rss{fans}", fans)
        try:
            await d.ready(1 + fans)
            await asyncio.sleep(settle)
            out[fans] = d.rss_mb()
        finally:
            d.stop()
    return {
        "daemon_rss_0_plugins_mb": out[0],
        "daemon_rss_10_plugins_mb": out[10],
        "plugins10_rss_mb": out[10] - out[0],
    }


async def mcp_calls(root: Path, n: int) -> dict[str, float | None]:
    """Raw `mcp` client against `mcp-server-time`, then the same tool as a capability."""
    if shutil.which("mcp-server-time") is None and not _importable("mcp_server_time"):
        return {"mcp_call_p50_ms": None, "raw_mcp_call_p50_ms": None}
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server_time"])
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        raw = await timed(n, lambda: s.call_tool("get_current_time", {"timezone": "UTC"}))
    out: dict[str, float | None] = {
        "raw_mcp_call_p50_ms": pct(raw, 0.5),
        "raw_mcp_call_p99_ms": pct(raw, 0.99),
    }
    # The same tool through the daemon's path: agents broker -> bus -> mcp component -> stdio.
    settings = _settings(root / "mcp", root / "plugins-mcp")
    (root / "plugins-mcp").mkdir(parents=True, exist_ok=True)
    server = {"name": "time", "command": sys.executable, "args": ["-m", "mcp_server_time"],
              "init_timeout_s": 60}  # fmt: skip
    settings = load_config(
        None,
        overrides={**{f"paths.{k}": str(root / "mcp" / k.split("_")[0])
                      for k in ("runtime_dir", "state_dir", "cache_dir")},
                   "metrics.enabled": False, "agents.dirs": [str(root / "plugins-mcp")],
                   "agents.entry_points": False, "mcp.servers": [server]},
    )  # fmt: skip
    async with Host(settings, names=["state", "bus", "agents", "mcp"]) as h:
        comp: Any = h.get("agents")
        async with asyncio.timeout(60):
            while comp.broker.resolve("time:get_current_time") is None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        ctx = AgentCtx("bench", comp.ctx.bus, LocalBackend(comp.broker, h.services.state.kv))  # type: ignore[union-attr]
        via = await timed(n, lambda: ctx.call("time:get_current_time", timezone="UTC"))
    out["mcp_call_p50_ms"] = pct(via, 0.5)
    out["mcp_call_p99_ms"] = pct(via, 0.99)
    return out


async def mcp_rounds(root: Path, n: int, rounds: int) -> dict[str, Any]:
    """`mcp_calls` `rounds` times (raw, then via the broker, alternately): medians and
    each round's ratio, since the raw client's own p50 swings between runs."""
    runs = []
    for i in range(rounds):
        runs.append(await mcp_calls(root / f"r{i}", n))
    if any(r.get("mcp_call_p50_ms") is None for r in runs):
        return {"mcp_call_p50_ms": None, "raw_mcp_call_p50_ms": None}
    ratios = [r["mcp_call_p50_ms"] / r["raw_mcp_call_p50_ms"] for r in runs]
    return {
        "mcp_call_p50_ms": statistics.median(r["mcp_call_p50_ms"] for r in runs),
        "raw_mcp_call_p50_ms": statistics.median(r["raw_mcp_call_p50_ms"] for r in runs),
        "mcp_ratio_per_round": [round(x, 3) for x in ratios],
        "mcp_ratio_median": statistics.median(ratios),
        "mcp_rounds": rounds,
        "mcp_calls_per_round": n,
    }


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma list of: sdk, mcp (default: everything)")
    ap.add_argument("--n", type=int, default=0, help="calls per measure (default 500/3000)")
    ap.add_argument(
        "--mcp-rounds",
        type=int,
        default=1,
        help="mcp: raw and via the broker alternately this many times (medians)",
    )
    a = ap.parse_args()
    n = a.n or (500 if a.quick else 3000)
    only = set(filter(None, a.only.split(",")))
    root = Path(tempfile.mkdtemp(prefix="lb-", dir="/tmp"))
    t0 = time.monotonic()
    res: dict[str, Any] = {}
    if only:
        try:
            if "sdk" in only:
                res.update(uvloop.run(over_sdk(root, n, provider_only=True)))
            if "mcp" in only:
                res.update(uvloop.run(mcp_rounds(root, max(100, n // 3), a.mcp_rounds)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        res["seconds"] = time.monotonic() - t0
        res["loadavg"] = os.getloadavg()
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
        return
    try:
        raw = raw_zmq_rtt(root, n)
        res["raw_zmq_rtt_p50_ms"] = pct(raw, 0.5)
        res.update(uvloop.run(in_process(root, n)))
        res.update(uvloop.run(over_sdk(root, n)))
        res.update(uvloop.run(mcp_calls(root, max(100, n // 3))))
        res.update(uvloop.run(plugins_rss(root, 0.5 if a.quick else 2.0)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["request_rtt_p50_ms"] = res["request_rtt_sdk_p50_ms"]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["seconds"] = time.monotonic() - t0

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def ratio(x: float | None, y: float | None) -> str:
        return "-" if x is None or not y else f"{x / y:.2f}x"

    rows = [
        ("bus request/reply in process, p50", res["request_rtt_inproc_p50_ms"],
         res["raw_zmq_rtt_p50_ms"], "raw zmq REQ/REP"),
        ("bus request/reply over the SDK, p50", res["request_rtt_sdk_p50_ms"],
         res["raw_zmq_rtt_p50_ms"], "raw zmq REQ/REP"),
        ("capability call in process, p50", res["inproc_call_p50_ms"], None, ""),
        ("capability call in process, p99 (<= 0.2)", res["inproc_call_p99_ms"], None, ""),
        ("SDK client -> plugin capability, p50", res["sdk_to_plugin_call_p50_ms"],
         res["request_rtt_sdk_p50_ms"], "SDK request rtt"),
        ("SDK client -> SDK provider, p50", res["sdk_call_p50_ms"],
         res["request_rtt_sdk_p50_ms"], "SDK request rtt"),
        ("SDK client -> SDK provider, p99 (<= 1)", res["sdk_call_p99_ms"], None, ""),
        ("MCP tool via broker, p50 (<= 1.2x raw)", res.get("mcp_call_p50_ms"),
         res.get("raw_mcp_call_p50_ms"), "raw mcp client"),
        ("fan-out to 10, majority, p50", res["fanout10_p50_ms"], None, ""),
        ("10 idle plugins, added RSS MB (<= 5)", res["plugins10_rss_mb"],
         res["daemon_rss_0_plugins_mb"], "daemon RSS, 0 plugins"),
    ]  # fmt: skip
    print(f"{'measure':<44} {'ms / MB':>9} {'baseline':>9} {'ratio':>7}  baseline is")
    for name, x, y, what in rows:
        print(f"{name:<44} {f(x):>9} {f(y):>9} {ratio(x, y):>7}  {what}")
    print(f"bench peak RSS {res['peak_rss_mb']:.0f} MB, {res['seconds']:.0f} s")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
