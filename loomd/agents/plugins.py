"""Finding plugins: `*.py` files in the plugins directories and the entry-point group
`loomd.agents`. A file is imported under a fresh module name each time it is (re)loaded,
so a new version never half-replaces the old one."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import itertools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from loomd.agents.agent import Agent
from loomd.agents.capability import specs_of

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModuleAgent",
    "Placement",
    "PluginDef",
    "agent_settings",
    "entry_point_plugins",
    "load_file",
]

log = logging.getLogger("loomd.agents.plugins")

ENTRY_POINT_GROUP = "loomd.agents"
_counter = itertools.count(1)


@dataclass(frozen=True)
class PluginDef:
    id: str
    source: str  # the file, or "entry point NAME (DIST)"
    make: Callable[[Any], Any]  # settings -> agent instance
    settings_cls: type[Any] | None
    path: Path | None = None


class ModuleAgent:
    """A module of `@capability` functions (and perhaps an `on_event` function) as an agent."""

    def __init__(self, module: ModuleType, agent_id: str) -> None:
        self.module = module
        self.id = agent_id
        self.topics = tuple(getattr(module, "TOPICS", ()))
        self.settings: Any = None

    def capabilities(self) -> list[Any]:
        return specs_of(self.module)

    async def on_event(self, ctx: Any, event: Any) -> None:
        fn = getattr(self.module, "on_event", None)
        if fn is not None:
            await fn(ctx, event)


def _is_agent_class(obj: Any, module: ModuleType) -> bool:
    if not inspect.isclass(obj) or obj is Agent or obj.__module__ != module.__name__:
        return False
    # A class without an `id` is a base for others (abstract), not an agent.
    aid = getattr(obj, "id", None)
    if not isinstance(aid, str) or not aid:
        return False
    return issubclass(obj, Agent) or callable(getattr(obj, "on_event", None))


def _defs_from_module(
    module: ModuleType, source: str, default_id: str, path: Path | None
) -> list[PluginDef]:
    out = []
    for _, cls in inspect.getmembers(module, lambda o: _is_agent_class(o, module)):
        aid = cls.id
        settings_cls = getattr(cls, "Settings", None)
        out.append(PluginDef(aid, source, _class_factory(cls), settings_cls, path))
    if specs_of(module):  # module-level @capability functions: the module is an agent too
        aid = str(getattr(module, "AGENT_ID", default_id))
        if any(d.id == aid for d in out):  # a class of the file has the name already
            aid += "-caps"
        settings_cls = getattr(module, "Settings", None)
        out.append(PluginDef(aid, source, _module_factory(module, aid), settings_cls, path))
    return out


def _module_factory(module: ModuleType, aid: str) -> Callable[[Any], Any]:
    def make(settings: Any) -> Any:
        agent = ModuleAgent(module, aid)
        agent.settings = settings
        return agent

    return make


def _class_factory(cls: type[Any]) -> Callable[[Any], Any]:
    def make(settings: Any) -> Any:
        try:
            inspect.signature(cls).bind(settings)
        except TypeError:
            agent = cls()
            agent.settings = settings
            return agent
        return cls(settings)

    return make


def load_file(path: Path) -> list[PluginDef]:
    """Import one plugin file (raises whatever its import raises)."""
    name = f"loomd_plugin_{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return _defs_from_module(module, str(path), path.stem, path)


def entry_point_plugins() -> tuple[list[PluginDef], dict[str, str]]:
    """Plugins of installed packages, and the entry points that failed to load (why)."""
    defs: list[PluginDef] = []
    broken: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        source = f"entry point {ep.name} ({dist})"
        try:
            obj = ep.load()
        except Exception as exc:
            broken[source] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(obj, ModuleType):
            defs.extend(_defs_from_module(obj, source, ep.name, None))
        elif inspect.isclass(obj):
            aid = getattr(obj, "id", "") or ep.name
            defs.append(PluginDef(aid, source, _class_factory(obj), getattr(obj, "Settings", None)))
        else:
            broken[source] = f"{ep.value} is neither an agent class nor a module"
    return defs, broken


@dataclass(frozen=True)
class Placement:
    """Where and whether an agent runs: the runtime's keys of `[agents.<id>]`."""

    enabled: bool = True
    isolation: str = "inproc"  # or "process": a supervised child over the SDK
    memory_mb: int = 0  # with isolation = "process": address-space limit, 0 = none


RUNTIME_KEYS = ("enabled", "isolation", "memory_mb")


def agent_settings(pdef: PluginDef, raw: Any) -> tuple[Placement, Any]:
    """Split `[agents.<id>]` into the runtime's keys and the plugin's own settings,
    validated by the plugin's `Settings` (a `Section` or a dataclass). Raises ConfigError
    naming `agents.<id>.<key>`."""
    import dataclasses

    from loomd.config import Section, build_section
    from loomd.errors import ConfigError

    key = f"agents.{pdef.id}"
    table = dict(raw or {})
    enabled = table.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.enabled", enabled, "true or false")
    isolation = table.pop("isolation", "inproc")
    if isolation not in ("inproc", "process"):
        raise ConfigError(f"{key}.isolation", isolation, "one of inproc, process")
    memory_mb = table.pop("memory_mb", 0)
    if not isinstance(memory_mb, int) or isinstance(memory_mb, bool) or memory_mb < 0:
        raise ConfigError(f"{key}.memory_mb", memory_mb, "an integer >= 0 (0 = no limit)")
    place = Placement(enabled, isolation, memory_mb)
    cls = pdef.settings_cls
    if cls is None:
        if table:
            k = next(iter(table))
            raise ConfigError(
                f"{key}.{k}", table[k], "a known key (the plugin declares no Settings)"
            )
        return place, None
    if isinstance(cls, type) and issubclass(cls, Section):
        return place, build_section(cls, table, key)
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        for k in table:
            if k not in names:
                raise ConfigError(
                    f"{key}.{k}", table[k], "a known key (keys: " + ", ".join(sorted(names)) + ")"
                )
    try:
        return place, cls(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, table, str(exc)) from None
