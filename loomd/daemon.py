"""The `loomd` entry point: the composition root.

Read the config, start the registered components (`loomd.host.Host`), tell systemd, then
wait for signals: SIGHUP reloads; SIGTERM/SIGINT stop in phases (stop intake, drain until
the deadline, cancel and report what was cut). A second SIGTERM stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from loomd import __version__
from loomd.bus import wire
from loomd.components import auto_off_reason, install_hint, missing_modules, registry
from loomd.config import AUTO
from loomd.errors import ConfigError, LoomdError
from loomd.heap import freeze_heap
from loomd.host import Host
from loomd.logs import setup_logging
from loomd.messages import ErrorCode
from loomd.notify import Notifier, watchdog_loop
from loomd.settings import Settings, default_config_path, load_config

log = logging.getLogger("loomd.daemon")

STATUS_EVERY_S = 5.0
EXTEND_GRACE_S = 5.0  # asked of systemd on top of the drain deadline


class Daemon:
    def __init__(
        self, settings: Settings, config_path: Path | None, overrides: dict[str, Any] | None = None
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides
        self.notifier = Notifier()
        self.host: Host | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._stops = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        paths = self.settings.resolved
        _ensure_runtime_dir(paths.runtime_dir)
        refuse_if_running(paths.bus_socket)  # before opening state: never touch a live one
        async with Host(self.settings) as host, asyncio.TaskGroup() as tg:
            self.host = host
            background = [tg.create_task(self._status_loop(), name="loomd.status")]
            interval = self.notifier.watchdog_interval()
            if interval:
                watchdog = watchdog_loop(self.notifier, interval, host.healthy, host.unhealthy)
                background.append(tg.create_task(watchdog, name="loomd.watchdog"))
            freeze_heap()
            self.notifier.ready(host.summary())
            bus = host.status()["components"]["bus"]["status"]
            log.info("loomd %s ready: bus at %s", __version__, ", ".join(bus["endpoints"]))
            await self._serve()
            await self._shutdown(host)
            for task in background:
                task.cancel()
        log.info("loomd stopped")
        return 0

    def _on_stop(self) -> None:
        self._stops += 1
        if self._stops > 1:
            log.warning("second stop signal: stopping at once")
        self._stop.set()

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

    async def _shutdown(self, host: Host) -> None:
        """Phases 1 and 2: take no new work, then drain until the deadline (or a 2nd signal).
        Phase 3, cancelling what is left, is leaving the host's context."""
        drain_s = self.settings.daemon.drain_timeout_s
        self.notifier.stopping("draining")
        # systemd cannot tell us TimeoutStopSec=; asking for the drain deadline plus a grace
        # never shortens it, and lengthens it when our deadline is the longer one.
        self.notifier.extend_timeout(drain_s + EXTEND_GRACE_S)
        log.info("stopping: draining for up to %.1f s", drain_s)
        await host.stop_intake()
        deadline = time.monotonic() + drain_s
        left = host.pending()
        while left and self._stops < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # shutdown only: a short poll bounded by the deadline
            left = host.pending()
        if left:
            why = "second stop signal" if self._stops > 1 else "drain deadline reached"
            cut = ", ".join(f"{name} {n}" for name, n in left.items())
            log.warning("%s: cutting work still in flight (%s)", why, cut)

    async def reload(self) -> None:
        assert self.host is not None
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, overrides=self.overrides)
        except ConfigError as exc:
            log.error("reload failed: %s; keeping the running configuration", exc)
            if self.host.services.broker is not None:
                self.host.services.broker.error(ErrorCode.CONFIG, f"reload failed: {exc}")
            self.notifier.ready(self.host.summary())
            return
        applied, restart = await self.host.reload(new)
        self.settings = self.host.settings
        setup_logging(self.settings.daemon.log_level)
        if restart:
            log.warning("reload: %s need a restart to take effect", ", ".join(restart))
        log.info("configuration reloaded (%s)", ", ".join(applied) or "no changes")
        self.notifier.ready(self.host.summary())

    async def _status_loop(self) -> None:
        assert self.host is not None
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self.notifier.status(self.host.summary())


def _ensure_runtime_dir(path: Path) -> None:
    """Create the runtime dir; a fallback under /tmp must be ours and private."""
    if path.exists():
        if str(path).startswith("/tmp/") and path.stat().st_uid != os.geteuid():
            raise LoomdError(f"{path} belongs to another user; set paths.runtime_dir")
        return
    path.mkdir(parents=True, mode=0o700 if str(path).startswith("/tmp/") else 0o755)


def refuse_if_running(sock_path: Path) -> None:
    """A live daemon on our socket is an error; a stale socket file is removed by bind.
    The probe is a well-formed ping, so a live daemon answers it and counts nothing."""
    if not sock_path.exists():
        return
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(f"ipc://{sock_path}")
        try:
            s.send(wire.pack_control({"op": "ping", "rid": 1}), zmq.NOBLOCK)
        except zmq.Again:
            return  # nobody accepted the connection: a stale socket file
        if s.poll(300, zmq.POLLIN):
            raise LoomdError(f"another loomd is already running on {sock_path}")
    finally:
        s.close(linger=0)


def check(settings: Settings, path: Path | None) -> int:
    """`loomd --check`: the config is valid; which components run, which cannot and why.
    Exit 1 when an enabled component reports a problem (a missing optional package is
    not one: the daemon runs on without that component and says how to get it)."""
    print(f"config OK: {path or 'embedded defaults'}")
    paths = settings.resolved
    print(f"  bus socket: {paths.bus_socket}")
    print(f"  state dir:  {paths.state_dir}")
    print(f"  models dir: {paths.models_dir}")
    print("components:")
    reg = registry()
    problems = 0
    for name in reg.names():
        try:
            cls = reg.load(name)
        except LoomdError as exc:
            print(f"  {name:9} broken: {exc}")
            continue
        section = settings.section(name)
        enabled = getattr(section, "enabled", True)
        missing = missing_modules(cls)
        if missing:
            state = f"missing {', '.join(missing)} ({install_hint(cls)})"
        else:
            state = "available"
        if enabled == AUTO:
            why_not = auto_off_reason(cls, section, settings.resolved)
            switch = "auto: off" if why_not else "auto: on"
            print(f"  {name:9} {switch:9}  {state}  - {cls.summary}")
            if why_not and not missing:  # not a problem: "auto" waits for the models
                print(f"  {'':9} off because: {why_not}")
            continue
        print(f"  {name:9} {'enabled' if enabled else 'disabled':9}  {state}  - {cls.summary}")
        if enabled:
            for problem in cls.check(section, settings.resolved):
                print(f"  {'':9} problem: {problem}")
                problems += 1
    return 1 if problems else 0


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
        "--check", action="store_true", help="validate the config, report components, exit"
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
