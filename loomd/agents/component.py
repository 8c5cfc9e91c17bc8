"""The `agents` component: runs plugins, serves the action broker and the daemon side of the
collaboration primitives, and keeps SDK providers on a lease."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomd.agents.broker import (
    ActionBroker,
)
from loomd.agents.ctx import AgentCtx, LocalBackend
from loomd.agents.plugins import (
    Placement,
    PluginDef,
    agent_settings,
    entry_point_plugins,
    load_file,
)
from loomd.agents.process import ProcessRunner
from loomd.agents.runtime import AgentRunner, Policy
from loomd.agents.service import CapabilityService
from loomd.agents.settings import AgentsSettings
from loomd.bus.acl import Manifest, current_caller
from loomd.bus.envelope import QoS
from loomd.bus.local import LocalBus
from loomd.component import Command, Component, StatusBlock
from loomd.errors import ConfigError, LoomdError
from loomd.messages import CapCode, CapsChanged, ErrorCode
from loomd.metrics import Family

__all__ = ["AgentsComponent", "AgentsStatus"]


@dataclass(frozen=True)
class AgentsStatus(StatusBlock):
    agents: list[dict[str, Any]]
    capabilities: int
    providers: int
    calls: int
    broken: dict[str, str]

    def lines(self) -> list[str]:
        out = [
            f"{len(self.agents)} agents, {self.capabilities} capabilities, "
            f"{self.providers} SDK providers, {self.calls} calls"
        ]
        for a in self.agents:
            extra = f" ({a['last_error']})" if a["last_error"] else ""
            out.append(f"{a['id']}: {a['state']}, {a['restarts']} restarts{extra}")
        out.extend(f"broken {src}: {why}" for src, why in self.broken.items())
        return out


@dataclass
class _Slot:
    pdef: PluginDef
    runner: AgentRunner | ProcessRunner | None = None
    state: str = "created"
    why: str = ""


def manifest_of(agent: Any, agent_id: str) -> Manifest:
    """What an in-process plugin declares: `topics` (and its inbox) to subscribe to,
    `publishes` topic patterns, `calls` capability patterns; its own state namespace. With
    ACL rules in force that is what it may do (plus what rules naming `plugin:<id>` grant)."""
    return Manifest(
        subscribe=(*getattr(agent, "topics", ()), f"agent.{agent_id}.inbox"),
        # its lifecycle events, which the runtime publishes on its behalf
        publish=(*getattr(agent, "publishes", ()), "loomd.agent.up", "loomd.agent.down"),
        call=tuple(getattr(agent, "calls", ())),
        state=(f"agent.{agent_id}",),
    )


def _default_dirs(state_dir: Path) -> list[Path]:
    dirs = []
    if os.geteuid() == 0:
        dirs.append(Path("/etc/loomd/agents.d"))
    dirs.append(state_dir / "agents.d")
    return dirs


class AgentsComponent(Component[AgentsSettings]):
    summary = "Python agent plugins, collaboration and the action broker"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.broker = ActionBroker()
        self.slots: dict[str, _Slot] = {}
        self.files: dict[Path, float] = {}  # plugin file -> mtime loaded
        self.broken: dict[str, str] = {}  # source -> why it did not load
        self.service: CapabilityService | None = None  # the bus side, from start()
        self.errors = 0

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._changed = asyncio.Event()
        self.broker = ActionBroker(
            idem=self.ctx.state.kv("agents.idempotency"),
            idem_ttl_s=s.idempotency_ttl_s,
            on_change=self._changed.set,
        )
        self.service = CapabilityService(
            self.ctx.bus, self.broker, lambda: self.settings, self._report, self.log
        )
        for name, work in self.service.workers():
            self.spawn(work, name, restart=True)
        for pdef in self._discover():
            await self._add(pdef)
        self.spawn(self._watch_files, "reload", restart=True)
        self.spawn(self._announce_changes, "caps.changed", restart=True)

    async def _announce_changes(self) -> None:
        """One `caps.changed` per burst of registrations (a plugin or an SDK agent brings
        several capabilities at once): the assist and the home read the catalogue then."""
        while True:
            await self._changed.wait()
            await asyncio.sleep(0.05)  # let the rest of the burst land: one event for it
            self._changed.clear()
            await CapsChanged(self.broker.count()).publish(self.ctx.bus, wait=False)

    async def stop_intake(self) -> None:
        if self.service is not None:
            self.service.intake = False

    def pending(self) -> int:
        return self.broker.pending() + (self.service.pending() if self.service else 0)

    @property
    def barriers(self) -> dict[str, Any]:
        """Barriers waiting for members (nothing is left behind after a timeout)."""
        return self.service.barriers if self.service is not None else {}

    async def stop(self) -> None:
        for slot in list(self.slots.values()):
            if slot.runner is not None:
                await slot.runner.stop()
        if self.service is not None:
            await self.service.close()

    def _policy(self) -> Policy:
        s = self.settings
        return Policy(
            crash_limit=s.crash_limit,
            crash_window_s=s.crash_window_s,
            backoff_max_s=s.backoff_max_s,
            handler_timeout_s=s.handler_timeout_s,
            slow_ms=s.slow_handler_ms,
        )

    def _report(self, code: ErrorCode, message: str, details: dict[str, Any]) -> None:
        self.errors += 1
        self.ctx.error(code, message, **{k: v for k, v in details.items() if k != "traceback"})
        if code in (ErrorCode.AGENT_ERROR, ErrorCode.AGENT_CRASHED) and self.service is not None:
            self.service.serve(
                self.ctx.bus.publish("loomd.agent.error", details, qos=QoS.REALTIME, wait=False)
            )

    # -- plugins ----------------------------------------------------------------------------
    def plugin_dirs(self) -> list[Path]:
        if self.settings.dirs:
            return [Path(d) for d in self.settings.dirs]
        return _default_dirs(self.ctx.state_dir)

    def _plugin_files(self) -> list[Path]:
        out = []
        for d in self.plugin_dirs():
            if d.is_dir():
                out.extend(sorted(p for p in d.glob("*.py") if not p.name.startswith("_")))
        return out

    def _discover(self) -> list[PluginDef]:
        defs: list[PluginDef] = []
        for path in self._plugin_files():
            defs.extend(self._load(path) or [])
        if self.settings.entry_points:
            ep_defs, broken = entry_point_plugins()
            for src, why in broken.items():
                self._broken(src, why)
            defs.extend(ep_defs)
        return defs

    def _load(self, path: Path) -> list[PluginDef] | None:
        try:
            mtime = path.stat().st_mtime
            defs = load_file(path)
        except BaseException as exc:  # SystemExit from a plugin too: the daemon stays
            if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
                raise
            self.files[path] = path.stat().st_mtime if path.exists() else 0.0
            self._broken(str(path), f"{type(exc).__name__}: {exc}")
            return None
        self.files[path] = mtime
        self.broken.pop(str(path), None)
        if not defs:
            self._broken(str(path), "defines no agent class and no @capability function")
        return defs

    def _broken(self, source: str, why: str) -> None:
        self.broken[source] = why
        self._report(
            ErrorCode.PLUGIN_BROKEN, f"plugin {source} did not load: {why}", {"source": source}
        )

    def _agent_settings(self, pdef: PluginDef) -> tuple[Placement, Any]:
        return agent_settings(pdef, self.settings.agent.get(pdef.id))

    async def _add(self, pdef: PluginDef) -> None:
        if pdef.id in self.slots and self.slots[pdef.id].pdef.source != pdef.source:
            other = self.slots[pdef.id].pdef.source
            self._broken(pdef.source, f"agent id {pdef.id!r} is already taken by {other}")
            return
        slot = self.slots[pdef.id] = _Slot(pdef)
        await self._start_slot(slot)

    async def _start_slot(self, slot: _Slot) -> None:
        pdef = slot.pdef
        try:
            place, settings = self._agent_settings(pdef)
        except ConfigError as exc:
            slot.state, slot.why = "failed", str(exc)
            self._report(ErrorCode.AGENT_CONFIG, f"agent {pdef.id}: {exc}", {"agent": pdef.id})
            return
        if not place.enabled:
            slot.state, slot.why = "disabled", ""
            return
        if place.isolation == "process":
            proc = ProcessRunner(
                pdef, f"ipc://{self.ctx.services.bus_socket}",
                self.settings.agent.get(pdef.id) or {}, place.memory_mb,
                policy=self._policy(), report=self._report,
            )  # fmt: skip
            if slot.runner is not None:
                proc.restarts = slot.runner.restarts + 1
            slot.runner, slot.state, slot.why = proc, "running", ""
            proc.task = self.spawn(proc.run, f"agent.{pdef.id}", restart=False, critical=False)
            return
        try:
            agent = pdef.make(settings)
        except Exception as exc:
            slot.state, slot.why = "failed", f"__init__ raised {type(exc).__name__}: {exc}"
            self._report(ErrorCode.AGENT_INIT, f"agent {pdef.id}: {slot.why}", {"agent": pdef.id})
            return
        bus: Any = self.ctx.bus
        if isinstance(bus, LocalBus):  # its own identity, `plugin:<id>`, and its manifest
            bus = bus.as_plugin(pdef.id, manifest_of(agent, pdef.id))
        ctx = AgentCtx(
            pdef.id,
            bus,
            LocalBackend(self.broker, self.ctx.state.kv, getattr(bus, "caller_or_none", None)),
            settings=settings,
        )
        runner = AgentRunner(
            agent, ctx, self.broker, source=pdef.source, policy=self._policy(),
            report=self._report,
        )  # fmt: skip
        if slot.runner is not None:
            runner.restarts = slot.runner.restarts + 1
        slot.runner, slot.state, slot.why = runner, "running", ""
        runner.task = self.spawn(runner.run, f"agent.{pdef.id}", restart=False, critical=False)

    async def _stop_slot(self, slot: _Slot) -> None:
        if slot.runner is not None:
            await slot.runner.stop()
        slot.state = "stopped"

    def _views(self) -> list[dict[str, Any]]:
        out = []
        for aid, slot in sorted(self.slots.items()):
            if slot.runner is not None and slot.state not in ("failed", "disabled"):
                v = slot.runner.view()
            else:
                v = {
                    "id": aid, "source": slot.pdef.source, "state": slot.state, "topics": [],
                    "capabilities": [], "restarts": 0, "errors": 0, "events": 0,
                    "last_error": slot.why, "max_step_ms": 0.0,
                }  # fmt: skip
            if slot.state == "stopped":
                v["state"] = "stopped"
            if isinstance(slot.runner, ProcessRunner):
                v["capabilities"] = [
                    f"{c['name']}@{c['version']}"
                    for c in self.broker.list()
                    if c["provider"] == aid
                ]
            src_err = self.broken.get(slot.pdef.source)
            if src_err:
                v["last_error"] = f"reload failed, old version kept: {src_err}"
            out.append(v)
        return out

    async def _watch_files(self) -> None:
        while True:
            interval = self.settings.reload_interval_s
            await asyncio.sleep(interval or 1.0)
            if interval <= 0:
                continue
            await self.rescan()

    async def rescan(self) -> list[str]:
        """Load new and changed plugin files; a file that no longer imports keeps its old
        agents running. Returns the ids (re)started."""
        changed: list[str] = []
        seen = set()
        for path in self._plugin_files():
            seen.add(path)
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if self.files.get(path) == mtime:
                continue
            defs = self._load(path)
            if defs is None:  # broken: keep what runs
                continue
            old = [s for s in self.slots.values() if s.pdef.path == path]
            for s in old:
                await self._stop_slot(s)
                del self.slots[s.pdef.id]
            for pdef in defs:
                self.log.info("agent %s (re)loaded from %s", pdef.id, path)
                await self._add(pdef)
                changed.append(pdef.id)
        for path in [p for p in self.files if p not in seen]:
            del self.files[path]
            self.broken.pop(str(path), None)
            for s in [s for s in self.slots.values() if s.pdef.path == path]:
                await self._stop_slot(s)
                del self.slots[s.pdef.id]
        return changed

    # -- operator ---------------------------------------------------------------------------
    def status(self) -> AgentsStatus:
        return AgentsStatus(
            agents=self._views(),
            capabilities=self.broker.count(),
            providers=len(self.service.providers) if self.service else 0,
            calls=self.broker.stats.calls,
            broken=dict(self.broken),
        )

    def metrics(self) -> Iterable[Family]:
        views = self._views()
        yield Family(
            "loomd_agents_agents", "gauge", "Agents by state.",
            [({"state": st}, float(sum(1 for v in views if v["state"] == st)))
             for st in sorted({v["state"] for v in views})],
        )  # fmt: skip
        yield Family(
            "loomd_agents_handler_errors_total", "counter", "Exceptions raised by on_event.",
            [({"agent": v["id"]}, float(v["errors"])) for v in views],
        )  # fmt: skip
        yield Family(
            "loomd_agents_calls_total", "counter", "Capability calls by result code.",
            [({"code": c}, float(n)) for c, n in sorted(self.broker.stats.by_code.items())],
        )  # fmt: skip
        yield Family(
            "loomd_agents_errors_total", "counter", "Errors reported by the agents component.",
            [({}, float(self.errors))],
        )  # fmt: skip

    def commands(self) -> Mapping[str, Command]:
        return {
            "list": Command(self._cmd_list, "agents with their state"),
            "start": Command(self._cmd_start, "start a stopped or failed agent", ("id",)),
            "stop": Command(self._cmd_stop, "stop an agent", ("id",)),
            "restart": Command(self._cmd_restart, "restart an agent", ("id",)),
            "rescan": Command(self._cmd_rescan, "load new or changed plugin files now"),
            "caps": Command(self._cmd_caps, "capabilities with their schemas"),
            "call": Command(
                self._cmd_call, "call a capability", ("name", "params", "timeout", "key")
            ),
        }

    async def _cmd_list(self) -> dict[str, Any]:
        return {"agents": self._views(), "broken": dict(self.broken)}

    def _slot(self, aid: Any) -> _Slot:
        slot = self.slots.get(str(aid))
        if slot is None:
            raise LoomdError(
                f"no agent {aid!r} (agents: {', '.join(sorted(self.slots)) or 'none'})"
            )
        return slot

    async def _cmd_start(self, id: Any) -> dict[str, Any]:
        slot = self._slot(id)
        if slot.runner is not None and slot.runner.state in ("running", "starting", "backoff"):
            return {"state": slot.runner.state}
        await self._start_slot(slot)
        return {"state": slot.state}

    async def _cmd_stop(self, id: Any) -> dict[str, Any]:
        slot = self._slot(id)
        await self._stop_slot(slot)
        return {"state": slot.state}

    async def _cmd_restart(self, id: Any) -> dict[str, Any]:
        slot = self._slot(id)
        await self._stop_slot(slot)
        await self._start_slot(slot)
        return {"state": slot.state}

    async def _cmd_rescan(self) -> dict[str, Any]:
        return {"reloaded": await self.rescan(), "broken": dict(self.broken)}

    async def _cmd_caps(self) -> dict[str, Any]:
        return {"capabilities": self.broker.list()}

    async def _cmd_call(
        self, name: Any, params: Any = None, timeout: Any = None, key: Any = None
    ) -> dict[str, Any]:
        if params is not None and not isinstance(params, dict):
            raise LoomdError("params must be a JSON object")
        t = float(timeout) if timeout is not None else self.settings.call_timeout_s
        r = await self.broker.call(
            str(name), params or {}, timeout=t, idempotency_key=str(key) if key else None,
            caller=current_caller(),  # who asked over the socket (None: the daemon itself)
        )  # fmt: skip
        if r.code == CapCode.FORBIDDEN and self.service is not None:
            self.service.forbidden(r.error, str(name))
        return r.to_payload()
