"""The whole configuration: every section a config file may hold (the daemon's own and each
registered component's), loaded from TOML, overridden from the command line, and compared on
reload. The section machinery it is built from (`Section`, `option`, validation, paths) is
`loomd.config`; this module sits above the component registry, which names the sections."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loomd.config import (
    UNKNOWN_KEY,
    Bare,
    DaemonSettings,
    PathSettings,
    ResolvedPaths,
    Section,
    build_section,
    resolve_dir,
    suggest,
)
from loomd.errors import ConfigError

__all__ = [
    "CORE_SECTIONS",
    "SYSTEM_CONFIG",
    "Settings",
    "changed_keys",
    "default_config_path",
    "load_config",
    "resolve_paths",
    "section_classes",
]

SYSTEM_CONFIG = Path("/etc/loomd/loomd.toml")

CORE_SECTIONS: dict[str, type[Section]] = {
    cls.SECTION: cls for cls in (DaemonSettings, PathSettings)
}


def section_classes() -> dict[str, type[Section]]:
    """Every section a config file may hold: the daemon's own plus each registered component's
    (the registry imports component modules, which stay light: no model libraries)."""
    from loomd.components import registry

    return {**CORE_SECTIONS, **registry().settings_classes()}


def resolve_paths(
    settings: Settings, *, env: Mapping[str, str] | None = None, euid: int | None = None
) -> ResolvedPaths:
    p = settings.paths
    runtime = resolve_dir("runtime", p.runtime_dir, env=env, euid=euid)
    state = resolve_dir("state", p.state_dir, env=env, euid=euid)
    return ResolvedPaths(
        runtime_dir=runtime,
        state_dir=state,
        cache_dir=resolve_dir("cache", p.cache_dir, env=env, euid=euid),
        bus_socket=Path(settings.bus.socket) if settings.bus.socket else runtime / "bus.sock",
        models_dir=Path(p.models_dir) if p.models_dir else state / "models",
    )


class Settings:
    """Every section, validated: `settings.bus`, `settings.daemon`, `settings.section("mqtt")`.

    Built with no arguments it holds the defaults of every known section; keyword arguments
    replace whole sections. Equality compares values, not where they came from."""

    __slots__ = ("_sections", "source")

    def __init__(self, *, source: Path | None = None, **sections: Section) -> None:
        known = section_classes()
        for name in sections:
            if name not in known:
                raise TypeError(f"unknown settings section {name!r}")
        self._sections: dict[str, Section] = {
            name: sections.get(name) or cls() for name, cls in known.items()
        }
        self.source = source

    @classmethod
    def of(cls, sections: Mapping[str, Section], source: Path | None = None) -> Settings:
        """Exactly these sections (a host with its own set of components, e.g. in tests)."""
        new = cls.__new__(cls)
        new._sections = dict(sections)
        new.source = source
        return new

    def __getattr__(self, name: str) -> Any:
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._sections == other._sections

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self._sections.items())})"

    @property
    def daemon(self) -> DaemonSettings:
        return self._sections["daemon"]  # type: ignore[return-value]

    @property
    def paths(self) -> PathSettings:
        return self._sections["paths"]  # type: ignore[return-value]

    def section(self, name: str) -> Any:
        return self._sections[name]

    @property
    def names(self) -> list[str]:
        return list(self._sections)

    def replace(self, *, source: Path | object | None = ..., **sections: Section) -> Settings:
        new = Settings.__new__(Settings)
        new._sections = {**self._sections, **sections}
        new.source = self.source if source is ... else source  # type: ignore[assignment]
        return new

    @property
    def resolved(self) -> ResolvedPaths:
        """Where things are, by the one set of rules (`resolve_paths`)."""
        return resolve_paths(self)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: section.to_dict() for name, section in self._sections.items()}


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose value differs: what a reload changed."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b.get(s, {}).get(k)]


def default_config_path(
    env: Mapping[str, str] | None = None, system_path: Path = SYSTEM_CONFIG
) -> Path | None:
    """$LOOMD_CONFIG if set, else the system file if it exists, else None (defaults only)."""
    env = os.environ if env is None else env
    if env.get("LOOMD_CONFIG"):
        return Path(env["LOOMD_CONFIG"])
    return system_path if system_path.is_file() else None


def load_config(path: Path | None, *, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read and validate settings; `overrides` maps dotted keys (from the CLI) to values."""
    data = _read_toml(path) if path is not None else {}
    settings = _build(data, str(path) if path is not None else "")
    settings = settings.replace(source=path)
    if overrides:
        settings = _override(settings, overrides, "command line")
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(
            "<file>", Bare(exc.strerror or str(exc)), "a readable TOML file", source=str(path)
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "<file>", Bare(f"not UTF-8 at byte {exc.start}"), "UTF-8 TOML text", source=str(path)
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", Bare(str(exc)), "valid TOML syntax", source=str(path)) from None


# Top-level arrays of tables that belong to a section: `[[acl]]` is `bus.acl`.
ARRAYS = {"acl": ("bus", "acl")}


def _build(data: Mapping[str, Any], source: str) -> Settings:
    known = section_classes()
    for name, (section, key) in ARRAYS.items():
        if isinstance(data.get(name), list):
            table = data.get(section, {})
            if isinstance(table, Mapping) and key not in table:
                data = {**{k: v for k, v in data.items() if k != name},
                        section: {**table, key: data[name]}}  # fmt: skip
    for name, table in data.items():
        _check_section(known, name, table, source)
    sections = {name: _construct(known, name, data.get(name, {}), source) for name in known}
    return Settings(**sections)


def _construct(
    known: Mapping[str, type[Section]], name: str, values: Mapping[str, Any], source: str
) -> Any:
    try:
        return build_section(known[name], values)
    except ConfigError as exc:  # add where the value came from
        expected = exc.expected
        if expected.startswith(UNKNOWN_KEY + "keys of") and exc.key.count(".") == 1:
            guess = suggest(exc.key, _all_keys(known))  # a key put in the wrong section
            if guess:
                expected = f"{UNKNOWN_KEY}did you mean {guess}?)"
        raise ConfigError(exc.key, exc.value, expected, source=source) from None


def _override(settings: Settings, overrides: Mapping[str, Any], source: str) -> Settings:
    known = section_classes()
    per_section: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        name, _, key = dotted.partition(".")
        _check_section(known, name, {}, source, dotted=dotted)
        per_section.setdefault(name, {})[key] = value
    changes = {
        name: _construct(known, name, settings.section(name).to_dict() | values, source)
        for name, values in per_section.items()
    }
    return settings.replace(**changes)


def _all_keys(known: Mapping[str, type[Section]]) -> list[str]:
    return [f"{s}.{f.name}" for s, cls in known.items() for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def _check_section(
    known: Mapping[str, type[Section]],
    name: str,
    table: Any,
    source: str,
    *,
    dotted: str | None = None,
) -> None:
    if name not in known:
        guess = suggest(dotted or name, list(known) + _all_keys(known))
        hint = f"did you mean {guess}?" if guess else "sections: " + ", ".join(known)
        shown = Bare("{...}") if isinstance(table, Mapping) else table
        raise ConfigError(
            dotted or name, shown, f"a known section (unknown; {hint})", source=source
        )
    if not isinstance(table, Mapping):
        raise ConfigError(name, table, f"a table ([{name}])", source=source)
