"""The `loomd` entry point: components as async context managers under one exit stack.

Signals set flags and wake the main task; the main task reloads (SIGHUP) or drains
and stops (SIGTERM/SIGINT) with a deadline, then the exit stack closes every
component in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq

from loomd import __version__
from loomd.bus.broker import Broker, BusLimits
from loomd.bus.server import BusServer, Session
from loomd.config import Settings, changed_keys, default_config_path, load_config
from loomd.errors import ConfigError, LoomdError
from loomd.logs import setup_logging
from loomd.metrics import Family, Histogram, MetricsServer
from loomd.notify import Notifier, watchdog_loop
from loomd.state import State

log = logging.getLogger("loomd.daemon")

# Keys a reload applies in place; the rest need a restart (logged, not applied).
RELOADABLE_SECTIONS = ("daemon", "metrics")
RELOADABLE_BUS_KEYS = frozenset(
    {
        "realtime_queue",
        "realtime_policy",
        "reliable_queue",
        "batch_max",
        "batch_interval_ms",
        "batch_budget",
        "default_ttl",
        "client_timeout_s",
        "durable",
        "default_qos",
    }
)

OPTIONAL_FEATURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "journald logging": ("systemd", ("systemd.journal",)),
    "voice": ("voice", ("pyaudio", "webrtcvad", "pywhispercpp", "openwakeword", "piper")),
    "local LLM": ("llm", ("llama_cpp",)),
    "MCP tools": ("mcp", ("mcp",)),
    "MQTT bridge": ("mqtt", ("paho.mqtt",)),
}


def bus_limits(s: Settings) -> BusLimits:
    b = s.bus
    return BusLimits(
        realtime_queue=b.realtime_queue,
        realtime_policy=b.realtime_policy,
        reliable_queue=b.reliable_queue,
        batch_max=b.batch_max,
        batch_interval_ms=float(b.batch_interval_ms),
        batch_budget=b.batch_budget,
        durable=tuple(b.durable),
        default_qos=tuple(b.default_qos.items()),
    )


def device_id(s: Settings) -> str:
    return s.daemon.device_id or socket.gethostname()


class LoopLag:
    """Measures how late the event loop wakes up: the health signal behind the watchdog."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.last_ms = 0.0
        self.max_ms = 0.0
        self.hist = Histogram()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, loop.time() - start - self.interval)
            self.last_ms = lag * 1000
            self.max_ms = max(self.max_ms, self.last_ms)
            self.hist.observe(lag)


class Daemon:
    def __init__(
        self, settings: Settings, config_path: Path | None, overrides: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides
        self.notifier = Notifier()
        self.started = time.monotonic()
        self.reloads = 0
        self.rate_in = 0.0
        self.rate_out = 0.0
        self.lag = LoopLag()
        self.latency = Histogram()
        self.state: State | None = None
        self.broker: Broker | None = None
        self.server: BusServer | None = None
        self.metrics: MetricsServer | None = None
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        async with self._stack:
            await self._start()
            self.notifier.ready(self.summary())
            log.info(
                "loomd %s ready: bus at %s",
                __version__,
                ", ".join(self.server.bound if self.server else ()),
            )
            await self._serve()
            self.notifier.stopping("draining")
            log.info("stopping: draining for up to %.1f s", self.settings.daemon.drain_timeout_s)
            await self._drain()
            pending = [t for t in self._tasks if not t.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            log.debug("cancelled %d background tasks", len(pending))
        log.info("loomd stopped")
        return 0

    async def _start(self) -> None:
        s = self.settings
        runtime = s.runtime_dir
        _ensure_runtime_dir(runtime)
        _refuse_if_running(s.bus_socket)  # before opening state: never touch a live daemon's
        self.state = await self._stack.enter_async_context(
            State(
                s.state_dir / "db",
                map_size_mb=s.state.map_size_mb,
                max_map_size_mb=s.state.max_map_size_mb,
                commit_window_ms=s.state.commit_window_ms,
                journal_max_mb=s.state.journal_max_mb,
                journal_max_age_s=float(s.state.journal_max_age_s),
            )
        )
        self.broker = Broker(bus_limits(s), self.state.journal)
        endpoints = [f"ipc://{s.bus_socket}"]
        if s.bus.tcp_enabled:
            endpoints.append(f"tcp://{s.bus.tcp_bind}:{s.bus.tcp_port}")
        self.server = BusServer(
            self.broker,
            endpoints,
            max_frame_bytes=s.bus.max_frame_bytes,
            socket_mode=s.bus.socket_mode_int,
            client_timeout_s=s.bus.client_timeout_s,
            credit_window=s.bus.credit_window,
            control=self._control,
        )
        self.server.latency = self._observe_latency
        await self._stack.enter_async_context(self.server)
        await self._start_metrics()
        self._spawn(self.lag.run(), "loop-lag")
        interval = self.notifier.watchdog_interval()
        if interval:
            self._spawn(watchdog_loop(self.notifier, interval, lambda: True), "watchdog")
        self._spawn(self._status_loop(), "status")

    async def _start_metrics(self) -> None:
        m = self.settings.metrics
        if not m.enabled:
            return
        server = MetricsServer(m.bind, m.port, self._collect)
        try:
            await server.__aenter__()
        except OSError as exc:
            log.error("metrics disabled: cannot listen on %s:%d: %s", m.bind, m.port, exc)
            assert self.broker is not None
            self.broker.error("metrics", f"cannot listen on {m.bind}:{m.port}: {exc}")
            return
        self.metrics = server
        self._stack.push_async_callback(self._stop_metrics, server)

    async def _stop_metrics(self, server: MetricsServer) -> None:
        if self.metrics is server:
            self.metrics = None
        await server.__aexit__(None, None, None)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"loomd.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s crashed", task.get_name(), exc_info=task.exception())

    async def _serve(self) -> None:
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self.reload()

    async def _drain(self) -> None:
        """Give clients the queued events and pending acks, up to the drain deadline."""
        deadline = time.monotonic() + self.settings.daemon.drain_timeout_s
        assert self.broker is not None
        busy = 0
        while time.monotonic() < deadline:
            busy = sum(
                sub.pending() for sub in self.broker.subscriptions() if sub.sink is not None
            ) + (self.state.stats().get("pending", 0) if self.state else 0)
            if not busy:
                return
            await asyncio.sleep(0.01)  # shutdown only: a short poll bounded by the deadline
        log.warning("drain deadline reached: %d events/writes still queued", busy)

    # -- reload -------------------------------------------------------------------------------
    async def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, overrides=self.overrides)
        except ConfigError as exc:
            log.error("reload failed: %s; keeping the running configuration", exc)
            assert self.broker is not None
            self.broker.error("config", f"reload failed: {exc}")
            self.notifier.ready(self.summary())
            return
        changed = changed_keys(self.settings, new)
        applied, ignored = [], []
        for key in changed:
            section, name = key.split(".", 1)
            if section in RELOADABLE_SECTIONS or (section == "bus" and name in RELOADABLE_BUS_KEYS):
                applied.append(key)
            else:
                ignored.append(key)
        # Only the reloadable keys change; the rest keep their running values.
        kept: dict[str, Any] = {
            "paths": self.settings.paths,
            "state": self.settings.state,
            "bus": dataclasses.replace(
                new.bus, **{k: getattr(self.settings.bus, k) for k in _bus_restart_keys()}
            ),
        }
        old = self.settings
        self.settings = dataclasses.replace(new, **kept)
        setup_logging(self.settings.daemon.log_level)
        assert self.broker is not None and self.server is not None
        self.broker.reconfigure(bus_limits(self.settings))
        self.server.client_timeout_s = self.settings.bus.client_timeout_s
        if old.metrics != self.settings.metrics:
            if self.metrics is not None:
                await self._stop_metrics(self.metrics)
            await self._start_metrics()
        self.reloads += 1
        if ignored:
            log.warning("reload: %s need a restart to take effect", ", ".join(ignored))
        log.info("configuration reloaded (%s)", ", ".join(applied) or "no changes")
        self.notifier.ready(self.summary())

    # -- status -------------------------------------------------------------------------------
    def summary(self) -> str:
        b, srv = self.broker, self.server
        if b is None or srv is None:
            return "starting"
        drops = sum(b.drops.values())
        return (
            f"{len(srv.sessions)} clients, {len(list(b.subscriptions()))} subscriptions, "
            f"{b.events_in} events in ({self.rate_in:.0f}/s), {drops} dropped, "
            f"loop lag {self.lag.last_ms:.1f} ms"
        )

    async def _status_loop(self) -> None:
        """Once a second: event rates (a moving average over ~5 s); every 5 s: STATUS=."""
        last_in = last_out = 0
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            if self.broker is not None:
                b = self.broker
                self.rate_in += 0.2 * ((b.events_in - last_in) - self.rate_in)
                self.rate_out += 0.2 * ((b.events_out - last_out) - self.rate_out)
                last_in, last_out = b.events_in, b.events_out
            tick += 1
            if tick % 5 == 0:
                self.notifier.status(self.summary())

    def _observe_latency(self, ns: int) -> None:
        self.latency.observe(ns / 1e9)

    def status(self) -> dict[str, Any]:
        assert self.broker is not None and self.server is not None and self.state is not None
        bstats = self.broker.stats()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "device_id": device_id(self.settings),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "reloads": self.reloads,
            "config_path": str(self.config_path) if self.config_path else None,
            "endpoints": self.server.bound,
            "clients": {s.ident.hex(): s.info() for s in self.server.sessions.values()},
            "events_in": bstats["events_in"],
            "events_out": bstats["events_out"],
            "rates": {"in_per_s": round(self.rate_in, 1), "out_per_s": round(self.rate_out, 1)},
            "drops": bstats["drops"],
            "rejected": bstats["rejected"],
            "topics": bstats["topics"],
            "subscriptions": bstats["subscriptions"],
            "loop_lag_ms": {"last": round(self.lag.last_ms, 3), "max": round(self.lag.max_ms, 3)},
            "latency_ms": {
                "p50": round(self.latency.quantile(0.5) * 1000, 3) if self.latency.count else None,
                "p99": round(self.latency.quantile(0.99) * 1000, 3) if self.latency.count else None,
            },
            "state": self.state.stats(),
            "metrics": self.metrics.url if self.metrics else None,
        }

    async def _control(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg["op"]
        assert self.state is not None
        if op == "status":
            return {"status": self.status()}
        ns, key = msg.get("ns", "user"), msg.get("key")
        if not isinstance(ns, str) or not ns:
            raise LoomdError("state namespace must be a non-empty string")
        kv = self.state.kv(ns)
        if op == "state_get":
            if not isinstance(key, str) or not key:
                raise LoomdError("state_get needs a key")
            sentinel = object()
            value = kv.get(key, sentinel)
            if value is sentinel:
                return {"found": False}
            return {"found": True, "value": value}
        if op == "state_put":
            if not isinstance(key, str) or not key:
                raise LoomdError("state_put needs a key")
            await kv.put(key, msg.get("value"))
            return {}
        if op == "state_del":
            if not isinstance(key, str) or not key:
                raise LoomdError("state_del needs a key")
            return {"deleted": await kv.delete(key)}
        if op == "state_ls":
            return {"keys": kv.keys(str(msg.get("prefix") or ""))}
        raise LoomdError(f"unknown op {op!r}")

    # -- metrics ------------------------------------------------------------------------------
    def _collect(self) -> Iterable[Family]:
        b, srv = self.broker, self.server
        assert b is not None and srv is not None
        qos_out: dict[str, float] = {}
        qos_drop: dict[str, float] = {}
        depth: list[tuple[dict[str, str], float]] = []
        for sub in b.subscriptions():
            q = str(sub.qos)
            qos_out[q] = qos_out.get(q, 0) + sub.stats.delivered
            qos_drop[q] = qos_drop.get(q, 0) + sum(sub.stats.dropped.values())
            depth.append(({"sid": str(sub.sid), "pattern": sub.pattern, "qos": q}, sub.depth()))
        st = self.state.stats() if self.state else {}
        yield Family(
            "loomd_events_in_total",
            "counter",
            "Events published into the bus.",
            [({}, float(b.events_in))],
        )
        yield Family(
            "loomd_events_out_total",
            "counter",
            "Events delivered, by subscription QoS class.",
            [({"qos": q}, v) for q, v in qos_out.items()],
        )
        yield Family(
            "loomd_events_dropped_total",
            "counter",
            "Events dropped, by reason.",
            [({"reason": r}, float(v)) for r, v in b.drops.items()],
        )
        yield Family(
            "loomd_subscription_dropped_total",
            "counter",
            "Events dropped, by subscription QoS class.",
            [({"qos": q}, v) for q, v in qos_drop.items()],
        )
        yield Family(
            "loomd_frames_rejected_total",
            "counter",
            "Malformed frames rejected, by reason.",
            [({"reason": r}, float(v)) for r, v in b.rejected.items()],
        )
        yield Family("loomd_queue_depth", "gauge", "Events queued per subscription.", depth)
        yield Family(
            "loomd_clients", "gauge", "Connected socket clients.", [({}, float(len(srv.sessions)))]
        )
        yield Family(
            "loomd_loop_lag_seconds", "histogram", "Event loop wake-up lag.", [({}, self.lag.hist)]
        )
        yield Family(
            "loomd_publish_deliver_seconds",
            "histogram",
            "Latency from publish (header ts) to hand-off to a socket subscriber.",
            [({}, self.latency)],
        )
        yield Family(
            "loomd_state_used_bytes",
            "gauge",
            "LMDB bytes in use.",
            [({}, float(st.get("used_bytes", 0)))],
        )
        yield Family(
            "loomd_journal_entries",
            "gauge",
            "Durable journal entries retained.",
            [({}, float(st.get("journal_entries", 0)))],
        )
        yield Family(
            "loomd_uptime_seconds",
            "gauge",
            "Seconds since start.",
            [({}, time.monotonic() - self.started)],
        )


def _bus_restart_keys() -> list[str]:
    from loomd.config import BusSettings

    return [f.name for f in dataclasses.fields(BusSettings) if f.name not in RELOADABLE_BUS_KEYS]


def _ensure_runtime_dir(path: Path) -> None:
    """Create the runtime dir; a fallback under /tmp must be ours and private."""
    if path.exists():
        if str(path).startswith("/tmp/") and path.stat().st_uid != os.geteuid():
            raise LoomdError(f"{path} belongs to another user; set paths.runtime_dir")
        return
    path.mkdir(parents=True, mode=0o700 if str(path).startswith("/tmp/") else 0o755)


def _refuse_if_running(sock_path: Path) -> None:
    """A live daemon on our socket is an error; a stale socket file is removed by bind."""
    if not sock_path.exists():
        return
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(f"ipc://{sock_path}")
        import cbor2

        with contextlib.suppress(zmq.Again):
            s.send_multipart([b"", cbor2.dumps({"op": "ping", "rid": 1})], zmq.NOBLOCK)
        if s.poll(300, zmq.POLLIN):
            raise LoomdError(f"another loomd is already running on {sock_path}")
    finally:
        s.close(linger=0)


def check(settings: Settings, path: Path | None) -> int:
    print(f"config OK: {path or 'embedded defaults'}")
    print(f"  bus socket: {settings.bus_socket}")
    print(f"  state dir:  {settings.state_dir}")
    m = settings.metrics
    print(f"  metrics:    {f'http://{m.bind}:{m.port}/metrics' if m.enabled else 'off'}")
    print("optional features:")
    for feature, (extra, modules) in OPTIONAL_FEATURES.items():
        missing = [m for m in modules if not _importable(m)]
        if missing:
            print(f"  {feature:17} missing: {', '.join(missing)} (pip install 'loomd[{extra}]')")
        else:
            print(f"  {feature:17} available")
    return 0


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loomd", description="loomd: an edge daemon for private AI agents"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="config file (default: $LOOMD_CONFIG, /etc/loomd/loomd.toml, else built-in defaults)",
    )
    p.add_argument(
        "--check", action="store_true", help="validate the config, report optional features, exit"
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="override daemon.log_level",
    )
    p.add_argument("--version", action="version", version=f"loomd {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.config or default_config_path()
    overrides = {"daemon.log_level": args.log_level} if args.log_level else None
    try:
        settings = load_config(path, overrides=overrides)
    except ConfigError as exc:
        print(f"loomd: config error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return check(settings, path)
    setup_logging(settings.daemon.log_level)
    try:
        return _run(Daemon(settings, path, overrides))
    except LoomdError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(daemon: Daemon) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        return asyncio.run(daemon.run())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(daemon.run())


if __name__ == "__main__":
    sys.exit(main())
