"""The host: starts the registered components in order and is their single control plane.

It builds each component's `Context`, enters it, and serves what spans all of them: the
`status` tree, the metrics scrape, the health behind the watchdog, `<name>.<op>` commands,
live reloads, and the phases of a graceful stop. The daemon (`loomd.daemon`) is signals,
sd_notify and this.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loomd import __version__
from loomd.component import Command, Component, Context, Services
from loomd.components import (
    Registry,
    auto_off_reason,
    install_hint,
    missing_modules,
    registry,
    wanted,
)
from loomd.config import AUTO, split_reload
from loomd.errors import LoomdError
from loomd.messages import ControlOp, ErrorCode
from loomd.metrics import Family, Histogram
from loomd.settings import Settings

__all__ = ["Host", "LoopLag", "Slot"]

log = logging.getLogger("loomd.host")

# Components the daemon cannot run without: if one fails to start, the daemon fails.
ESSENTIAL = frozenset({"state", "bus"})


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


@dataclass
class Slot:
    """One registered component and where it stands."""

    name: str
    cls: type[Component[Any]] | None
    state: str = "stopped"  # running | disabled | unavailable | failed | broken | stopped
    reason: str = ""
    instance: Component[Any] | None = None

    def view(self) -> dict[str, Any]:
        c = self.instance if self.state == "running" else None
        status: dict[str, Any] | None = None
        text: list[str] = []
        if c is not None:
            try:  # one component's broken status() must not break `loomctl status`
                block = c.status()
                if block is not None:
                    status, text = block.to_dict(), block.lines()
            except Exception as exc:
                log.exception("%s: status() failed", self.name)
                text = [f"status unavailable: {type(exc).__name__}: {exc}"]
        return {
            "state": self.state,
            "healthy": _healthy(c) if c is not None else None,
            "reason": self.reason or (c.failure if c is not None else None) or "",
            "status": status,
            "text": text,
        }


def device_id(settings: Settings) -> str:
    import socket

    return settings.daemon.device_id or socket.gethostname()


class Host:
    def __init__(
        self,
        settings: Settings,
        *,
        names: Iterable[str] | None = None,
        reg: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = reg or registry()
        self.names = list(names) if names is not None else self.registry.names()
        self.started = time.monotonic()
        self.reloads = 0
        self.lag = LoopLag()
        self.max_lag_ms = settings.daemon.max_loop_lag_s * 1000
        self.services = Services(settings.resolved.bus_socket, control=self.control)
        self.services.collect = self.collect
        self.slots: dict[str, Slot] = {}
        self._lag_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Host:
        self._lag_task = asyncio.create_task(self.lag.run(), name="loomd.loop-lag")
        try:
            for name in self.names:
                await self._start(name)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for slot in reversed(list(self.slots.values())):
            await self._stop(slot)
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)

    def _context(self, name: str) -> Context[Any]:
        s = self.settings
        paths = s.resolved
        return Context(
            name,
            s.section(name),
            services=self.services,
            state_dir=paths.state_dir,
            runtime_dir=paths.runtime_dir,
            cache_dir=paths.cache_dir,
            device_id=device_id(s),
            models_dir=paths.models_dir,
            config_path=s.source,
        )

    async def _start(self, name: str) -> None:
        slot = self.slots.get(name) or Slot(name, None)
        self.slots[name] = slot
        try:
            slot.cls = self.registry.load(name)
        except LoomdError as exc:
            slot.state, slot.reason = "broken", str(exc)
            self._report(name, ErrorCode.COMPONENT_BROKEN, slot.reason)
            return
        cls = slot.cls
        enabled = getattr(self.settings.section(name), "enabled", True)
        if enabled is False:
            slot.state, slot.reason = "disabled", ""
            return
        if enabled == AUTO:
            why_not = auto_off_reason(cls, self.settings.section(name), self.settings.resolved)
            if why_not:
                slot.state, slot.reason = "disabled", f"auto: {why_not}"
                log.info('%s is off (enabled = "auto"): %s', name, why_not)
                return
        missing = missing_modules(cls)
        if missing:
            slot.state = "unavailable"
            slot.reason = f"missing {', '.join(missing)}: {install_hint(cls)}"
            self._report(
                name, ErrorCode.COMPONENT_UNAVAILABLE, f"{name} is unavailable: {slot.reason}"
            )
            return
        component = cls(self._context(name))
        try:
            await component.__aenter__()
        except Exception as exc:
            if name in ESSENTIAL:
                raise
            slot.state, slot.reason = "failed", f"start failed: {type(exc).__name__}: {exc}"
            log.error("%s: %s", name, slot.reason, exc_info=exc)
            self._report(name, ErrorCode.COMPONENT_FAILED, f"{name}: {slot.reason}")
            return
        slot.instance, slot.state, slot.reason = component, "running", ""

    async def _stop(self, slot: Slot) -> None:
        c, slot.instance = slot.instance, None
        if c is None:
            return
        slot.state = "stopped"
        try:
            await c.__aexit__(None, None, None)
        except Exception:
            log.exception("%s did not stop cleanly", slot.name)

    def _report(self, name: str, code: ErrorCode, message: str) -> None:
        log.warning("%s", message)
        if self.services.broker is not None:
            self.services.broker.error(code, message, component=name)

    def running(self) -> dict[str, Component[Any]]:
        return {n: s.instance for n, s in self.slots.items() if s.instance is not None}

    def get(self, name: str) -> Component[Any] | None:
        slot = self.slots.get(name)
        return slot.instance if slot is not None else None

    # -- shutdown phases ----------------------------------------------------------------------
    async def stop_intake(self) -> None:
        for name, c in self.running().items():
            try:
                await c.stop_intake()
            except Exception:
                log.exception("%s: stop_intake failed", name)

    def pending(self) -> dict[str, int]:
        out = {}
        for name, c in self.running().items():
            try:
                n = c.pending()
            except Exception:
                log.exception("%s: pending() failed", name)
                n = 0
            if n:
                out[name] = n
        return out

    # -- health -------------------------------------------------------------------------------
    def unhealthy(self) -> list[str]:
        """Why the watchdog should not be pinged: failing components and a lagging loop."""
        out = [
            f"{name}: {c.failure or 'unhealthy'}"
            for name, c in self.running().items()
            if not _healthy(c)
        ]
        if self.lag.last_ms > self.max_lag_ms:
            out.append(f"event loop lag {self.lag.last_ms:.0f} ms > {self.max_lag_ms:.0f} ms")
        return out

    def healthy(self) -> bool:
        return not self.unhealthy()

    # -- status -------------------------------------------------------------------------------
    def summary(self) -> str:
        bus = self.get("bus")
        line = bus.summary_line() if bus is not None else "starting"  # type: ignore[attr-defined]
        bad = [n for n, s in self.slots.items() if s.state in ("failed", "broken", "unavailable")]
        extra = f", {len(bad)} components down ({', '.join(bad)})" if bad else ""
        return f"{line}, loop lag {self.lag.last_ms:.1f} ms{extra}"

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "daemon": {
                "version": __version__,
                "pid": os.getpid(),
                "device_id": device_id(s),
                "uptime_s": round(time.monotonic() - self.started, 3),
                "reloads": self.reloads,
                "config_path": str(s.source) if s.source else None,
                "loop_lag_ms": {
                    "last": round(self.lag.last_ms, 3),
                    "max": round(self.lag.max_ms, 3),
                },
                "healthy": self.healthy(),
                "problems": self.unhealthy(),
            },
            "components": {name: slot.view() for name, slot in self.slots.items()},
        }

    # -- metrics ------------------------------------------------------------------------------
    def collect(self) -> Iterable[Family]:
        yield Family(
            "loomd_daemon_loop_lag_seconds",
            "histogram",
            "Event loop wake-up lag.",
            [({}, self.lag.hist)],
        )
        yield Family(
            "loomd_daemon_uptime_seconds",
            "gauge",
            "Seconds since start.",
            [({}, time.monotonic() - self.started)],
        )
        yield Family(
            "loomd_daemon_component_up",
            "gauge",
            "1 if the component runs and is healthy, else 0.",
            [
                (
                    {"component": n, "state": s.state},
                    float(s.instance is not None and _healthy(s.instance)),
                )
                for n, s in self.slots.items()
            ],
        )
        for name, c in self.running().items():
            prefix = f"loomd_{name}_"
            try:
                for fam in c.metrics():
                    if fam.name.startswith(prefix):
                        yield fam
                    else:
                        log.error(
                            "%s: metric %s does not start with %s: skipped", name, fam.name, prefix
                        )
            except Exception:
                log.exception("%s: metrics() failed", name)

    # -- control ------------------------------------------------------------------------------
    def commands(self) -> dict[str, Command]:
        out: dict[str, Command] = {}
        for name, c in self.running().items():
            for op, cmd in c.commands().items():
                out[f"{name}.{op}"] = cmd
        return out

    async def control(self, session: Any, msg: dict[str, Any]) -> dict[str, Any]:
        """A control request from the socket: `status`, `commands`, or `<name>.<op>`."""
        req = ControlOp.from_payload(msg)
        op = req.op
        if op == "status":
            return {"status": self.status()}
        if op == "commands":
            return {
                "commands": {k: v.describe() for k, v in sorted(self.commands().items())},
                "components": {n: s.state for n, s in self.slots.items()},
            }
        name, dot, sub = op.partition(".")
        if not dot:
            raise LoomdError(f"unknown op {op!r}: expected status, commands or <component>.<op>")
        slot = self.slots.get(name)
        if slot is None:
            raise LoomdError(f"no component named {name!r} (components: {', '.join(self.slots)})")
        if slot.instance is None:
            why = f": {slot.reason}" if slot.reason else ""
            raise LoomdError(f"component {name} is {slot.state}{why}")
        cmd = slot.instance.commands().get(sub)
        if cmd is None:
            ops = ", ".join(sorted(slot.instance.commands())) or "none"
            raise LoomdError(f"{name} has no operation {sub!r} (operations: {ops})")
        return dict(await cmd.call(req.args, req.kwargs))

    # -- reload -------------------------------------------------------------------------------
    async def reload(self, new: Settings) -> tuple[list[str], list[str]]:
        """Apply what may change live; return (applied keys, keys that need a restart). The
        running settings never hold a value that is not in effect."""
        applied: list[str] = []
        restart: list[str] = []
        sections: dict[str, Any] = {}
        for name in new.names:
            old_sec, new_sec = self.settings.section(name), new.section(name)
            slot = self.slots.get(name)
            cls = slot.cls if slot is not None else None
            old_on = getattr(old_sec, "enabled", True)
            new_on = getattr(new_sec, "enabled", True)
            # "auto" is looked at again on every reload: models installed since the start
            # (`loomctl models fetch`) bring the component up without a restart, and
            # removed ones take it down.
            if old_sec == new_sec and not (new_on == AUTO and slot is not None):
                continue
            if AUTO in (old_on, new_on):
                was_on = slot is not None and slot.instance is not None
                now_on = wanted(cls, new_sec, new.resolved)
            else:
                was_on, now_on = old_on, new_on
            if slot is not None and name not in ESSENTIAL and was_on != now_on:
                # Switching a component on or off takes effect at once.
                sections[name] = new_sec
                self.settings = self.settings.replace(**{name: new_sec})
                if now_on:
                    await self._start(name)
                else:
                    await self._stop(slot)
                    slot.state = "disabled"
                applied.append(f"{name}.enabled")
                continue
            running, live, later = split_reload(old_sec, new_sec)
            c = self.get(name)
            if c is not None and live:
                try:
                    refused = [k for k in await c.reload(running) if k not in later]
                    if refused:  # keep running values for what the component could not apply
                        keep = {k: getattr(old_sec, k) for k in refused}
                        running = dataclasses.replace(running, **keep)  # type: ignore[type-var]
                        c.ctx.settings = running
                        later += refused
                except Exception as exc:
                    log.exception("%s: reload failed", name)
                    self._report(name, ErrorCode.RELOAD_FAILED, f"{name}: reload failed: {exc}")
                    later += live
                    live, running = [], old_sec
            sections[name] = running
            applied += [f"{name}.{k}" for k in live if k not in later]
            restart += [f"{name}.{k}" for k in later]
        self.settings = self.settings.replace(**sections)
        self.max_lag_ms = self.settings.daemon.max_loop_lag_s * 1000
        self.reloads += 1
        return applied, restart


def _healthy(c: Component[Any]) -> bool:
    try:
        return bool(c.healthy())
    except Exception:
        log.exception("%s: healthy() failed", c.name)
        return False
