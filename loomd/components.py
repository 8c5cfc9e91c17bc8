"""The component registry: `name -> "module:Class"`, imported lazily.

Adding a component is one line here (or, for a separate package, one entry point in the
group `loomd.components`); `daemon.py`, `config.py` and `ctl.py` never change. Its friendly
`loomctl` commands are one more line: `BUILTIN_CLI` (or the entry-point group `loomd.cli`)
names a function `add_cli(subparsers)`, imported only when `loomctl` builds its parser (see
`loomd.cli`). A component
module imports only light modules at its top: model libraries (llama.cpp, whisper.cpp,
onnxruntime, Piper) are imported in `start()`, so an idle daemon never loads them and
`loomd --check` can tell whether they are installed without importing them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loomd.errors import LoomdError

if TYPE_CHECKING:
    from loomd.component import Component
    from loomd.config import ResolvedPaths, Section

__all__ = [
    "BUILTIN",
    "BUILTIN_CLI",
    "BUILTIN_DOCTOR",
    "CLI_GROUP",
    "DOCTOR_GROUP",
    "ENTRY_POINT_GROUP",
    "Entry",
    "Registry",
    "registry",
]

log = logging.getLogger(__name__)

# Start order: state before the bus (the journal), the bus before everything that uses it.
BUILTIN: dict[str, str] = {
    "state": "loomd.state.component:StateComponent",
    "bus": "loomd.bus.component:BusComponent",
    "tokens": "loomd.web.tokens:TokensComponent",
    "metrics": "loomd.web.component:MetricsComponent",
    "agents": "loomd.agents.component:AgentsComponent",
    "mcp": "loomd.mcp.component:McpComponent",
    "llm": "loomd.router.component:LlmComponent",
    "mqtt": "loomd.bridges.mqtt:MqttComponent",
    "peers": "loomd.bridges.peers:PeersComponent",
    "home": "loomd.home.component:HomeComponent",
    "voice": "loomd.audio.component:VoiceComponent",
    "homeassistant": "loomd.homeassistant.component:HomeAssistantComponent",
    "assist": "loomd.assist.component:AssistComponent",
}

# The `loomctl` subcommands of each component: name -> "module:function(subparsers)".
BUILTIN_CLI: dict[str, str] = {
    "state": "loomd.state.cli:add_cli",
    "tokens": "loomd.web.cli:add_cli",
    "agents": "loomd.agents.cli:add_cli",
    "mcp": "loomd.mcp.cli:add_cli",
    "llm": "loomd.router.cli:add_cli",
    "mqtt": "loomd.bridges.cli:add_mqtt_cli",
    "peers": "loomd.bridges.cli:add_peers_cli",
    "voice": "loomd.audio.cli:add_cli",
    "home": "loomd.home.cli:add_cli",
    "assist": "loomd.assist.cli:add_cli",
}

# The `loomctl doctor` checks each component contributes: name -> "module:CHECKS" (a
# sequence of `loomd.doctor.context.Check`), imported only when doctor runs. The board's own
# checks (config, daemon, memory, disk, ...) are doctor's.
BUILTIN_DOCTOR: dict[str, str] = {
    "llm": "loomd.router.doctor:CHECKS",
    "mqtt": "loomd.bridges.doctor:CHECKS",
    "voice": "loomd.audio.doctor:CHECKS",
}

ENTRY_POINT_GROUP = "loomd.components"
CLI_GROUP = "loomd.cli"  # an entry point named like the component: its add_cli function
DOCTOR_GROUP = "loomd.doctor"  # an entry point named like the component: its CHECKS

AddCli = Callable[[Any], None]


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"
    origin: str  # "builtin", or the distribution that declared the entry point
    cli: str = ""  # "module:function" adding its `loomctl` subcommands, or ""
    doctor: str = ""  # "module:CHECKS", its `loomctl doctor` checks, or ""


class Registry:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries: dict[str, Entry] = {}
        for e in entries:
            if e.name in self.entries:
                log.error(
                    "component %r from %s ignored: %r from %s has the name",
                    e.name, e.origin, self.entries[e.name].target, self.entries[e.name].origin,
                )  # fmt: skip
                continue
            self.entries[e.name] = e
        self._classes: dict[str, type[Component[Any]]] = {}
        self.broken: dict[str, str] = {}  # name -> why its module did not import

    def names(self) -> list[str]:
        return list(self.entries)

    def load(self, name: str) -> type[Component[Any]]:
        """The component class; raises LoomdError if its module does not import."""
        known = self._classes.get(name)
        if known is not None:
            return known
        entry = self.entries.get(name)
        if entry is None:
            raise LoomdError(f"no component named {name!r}")
        module_name, _, attr = entry.target.partition(":")
        try:
            cls: type[Component[Any]] = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:
            self.broken[name] = f"{entry.target} did not import: {type(exc).__name__}: {exc}"
            raise LoomdError(f"component {name}: {self.broken[name]}") from exc
        if getattr(cls, "name", None) != name:
            raise LoomdError(f"component {entry.target} calls itself {cls.name!r}, not {name!r}")
        if hasattr(cls, "cli"):  # the old way: nothing reads it, so say where it goes now
            log.error(
                "component %s: its `cli` attribute is not read; name its add_cli function in "
                "loomd.components.BUILTIN_CLI (or the entry-point group %s)",
                name,
                CLI_GROUP,
            )
        self._classes[name] = cls
        return cls

    def classes(self) -> dict[str, type[Component[Any]]]:
        """Every component that imports; the others are logged and kept in `broken`."""
        out = {}
        for name in self.entries:
            try:
                out[name] = self.load(name)
            except LoomdError as exc:
                log.error("%s", exc)
        return out

    def settings_classes(self) -> dict[str, type[Section]]:
        return {name: cls.Settings for name, cls in self.classes().items()}

    def cli(self, name: str) -> AddCli | None:
        """The function adding component `name`'s `loomctl` subcommands (None if it has
        none); its module is imported now, the component's own module is not."""
        entry = self.entries.get(name)
        if entry is None or not entry.cli:
            return None
        try:
            add: AddCli = _attribute(entry.cli)
        except Exception as exc:
            log.error("component %s: its commands %s did not import: %s", name, entry.cli, exc)
            return None
        return add

    def doctor(self) -> dict[str, Any]:
        """Each component's contributed `loomctl doctor` checks (a sequence of `Check`),
        or the exception its module raised on import (doctor reports it as a failure)."""
        out: dict[str, Any] = {}
        for name, entry in self.entries.items():
            if entry.doctor:
                try:
                    out[name] = tuple(_attribute(entry.doctor))
                except Exception as exc:
                    out[name] = exc
        return out


def _attribute(target: str) -> Any:
    """`"module:name"` imported."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def missing_modules(cls: type[Component[Any]]) -> list[str]:
    """The modules a component needs that are not installed (found without importing)."""
    return [m for m in cls.requires if not _importable(m)]


def install_hint(cls: type[Component[Any]]) -> str:
    """How a user gets what `cls` needs: the apt package and the pip extra."""
    ways = []
    if cls.apt:
        ways.append(f"apt install {cls.apt}")
    if cls.extra:
        ways.append(f"pip install 'loomd[{cls.extra}]'")
    return " or ".join(ways) or "install " + ", ".join(cls.requires)


def auto_off_reason(cls: type[Component[Any]], section: Any, paths: ResolvedPaths) -> str:
    """Why a component with `enabled = "auto"` stays off; "" when it may start (its
    packages import and its `check()` finds nothing wrong, e.g. its models are installed)."""
    missing = missing_modules(cls)
    if missing:
        return f"missing {', '.join(missing)} ({install_hint(cls)})"
    return "; ".join(cls.check(section, paths))


def wanted(cls: type[Component[Any]] | None, section: Any, paths: ResolvedPaths) -> bool:
    """Whether the settings ask for the component to run now."""
    enabled = getattr(section, "enabled", True)
    if enabled == "auto":
        return cls is not None and not auto_off_reason(cls, section, paths)
    return enabled is not False


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def registry() -> Registry:
    """The built-in components, then those of installed packages (entry points)."""
    entries = [
        Entry(name, target, "builtin", BUILTIN_CLI.get(name, ""), BUILTIN_DOCTOR.get(name, ""))
        for name, target in BUILTIN.items()
    ]
    clis = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=CLI_GROUP)}
    doctors = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=DOCTOR_GROUP)}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = ep.dist.name if ep.dist is not None else "an entry point"
        entries.append(
            Entry(ep.name, ep.value, origin, clis.get(ep.name, ""), doctors.get(ep.name, ""))
        )
    return Registry(entries)
