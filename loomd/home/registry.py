"""The device registry: devices and areas from several sources, joined and checked.

A source is a name and what it declares: the config file's `[home]` tables (`config`), each
`home.d/*.toml` file (`home.d/<file>`), the devices a capability says it acts for
(`agent:<provider>`), and later Home Assistant's exposed entities (`ha`). Each `Device`
knows its source; replacing a source (a file edited, an agent gone) replaces only its
devices. Pure: no I/O but `load_dir`, which reads the files it is given."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loomd.config import build_section
from loomd.errors import ConfigError, LoomdError
from loomd.home.settings import READ_ONLY, AreaSettings, DeviceSettings
from loomd.messages import Domain, HomeArea, HomeDevice, HomeSnapshot

__all__ = ["Device", "Registry", "Source", "load_dir", "source_from_tables"]


@dataclass(frozen=True)
class Device:
    """A device with its source; `spec` says how to act on it."""

    spec: DeviceSettings
    source: str

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def domain(self) -> Domain:
        return Domain(self.spec.domain)

    @property
    def name(self) -> str:
        return self.spec.title

    def confirm_actions(self) -> tuple[str, ...]:
        c = self.spec.confirm
        if c == "auto":
            return ("unlock",) if self.domain == Domain.LOCK else ()
        return ("*",) if c is True else ()

    def needs_confirm(self, action: str) -> bool:
        c = self.spec.confirm
        if c == "auto":
            return self.domain == Domain.LOCK and action == "unlock"
        return bool(c) and self.domain not in READ_ONLY


@dataclass(frozen=True)
class Source:
    name: str
    areas: tuple[AreaSettings, ...] = ()
    devices: tuple[DeviceSettings, ...] = ()


@dataclass
class Registry:
    """Every source's devices and areas. `set_source` validates the whole before it keeps
    the change: a bad source is refused with a clear error and the registry stays as it was."""

    sources: dict[str, Source] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    areas: dict[str, AreaSettings] = field(default_factory=dict)

    def set_source(self, source: Source) -> None:
        self.set_sources([source])

    def set_sources(self, sources: Iterable[Source]) -> None:
        """Several sources replaced at once: all kept, or none (the first error raised)."""
        trial = {**self.sources, **{s.name: s for s in sources}}
        devices, areas = _join(trial.values())
        self.sources, self.devices, self.areas = trial, devices, areas

    def drop_source(self, name: str) -> bool:
        if name not in self.sources:
            return False
        trial = {k: v for k, v in self.sources.items() if k != name}
        self.devices, self.areas = _join(trial.values())
        self.sources = trial
        return True

    def get(self, device_id: str) -> Device:
        d = self.devices.get(device_id)
        if d is None:
            known = ", ".join(sorted(self.devices)) or "none"
            raise LoomdError(f"no device {device_id!r} (devices: {known})")
        return d

    def ids(self, *domains: Domain) -> list[str]:
        return sorted(i for i, d in self.devices.items() if not domains or d.domain in domains)

    def snapshot(self, states: Mapping[str, Any] | None = None) -> HomeSnapshot:
        states = states or {}
        areas = tuple(HomeArea(a.id, a.title, a.aliases) for a in self.areas.values())
        devices = []
        for d in self.devices.values():
            st = states.get(d.id)
            devices.append(
                HomeDevice(
                    d.id,
                    d.name,
                    d.domain,
                    d.spec.area,
                    d.spec.aliases,
                    d.source,
                    d.spec.sensitive or d.domain == Domain.LOCK,
                    confirm=d.confirm_actions(),
                    state=str(getattr(st, "state", "") or ""),
                    unit=d.spec.unit,
                    attributes=dict(getattr(st, "attributes", None) or {}),
                )
            )
        return HomeSnapshot(areas, tuple(devices))


def _join(sources: Iterable[Source]) -> tuple[dict[str, Device], dict[str, AreaSettings]]:
    areas: dict[str, AreaSettings] = {}
    where: dict[str, str] = {}
    srcs = list(sources)
    for s in srcs:
        for a in s.areas:
            if a.id in areas:
                raise LoomdError(f"{s.name}: area {a.id!r} is declared twice ({where[a.id]})")
            areas[a.id], where[a.id] = a, s.name
    devices: dict[str, Device] = {}
    for s in srcs:
        for spec in s.devices:
            if spec.id in devices:
                raise LoomdError(
                    f"{s.name}: device {spec.id!r} is declared twice "
                    f"(also in {devices[spec.id].source})"
                )
            if spec.area and spec.area not in areas:
                known = ", ".join(sorted(areas)) or "none declared"
                raise LoomdError(
                    f"{s.name}: device {spec.id!r}: no area {spec.area!r} (areas: {known})"
                )
            devices[spec.id] = Device(spec, s.name)
    return devices, areas


def source_from_tables(name: str, table: Mapping[str, Any], prefix: str = "") -> Source:
    """A source from `{areas: [...], devices: [...]}` tables (a home.d file, an agent's
    declaration), with the config's own validation and errors naming `name`."""
    unknown = set(table) - {"areas", "devices"}
    if unknown:
        raise ConfigError(f"{prefix}{sorted(unknown)[0]}", "", "areas or devices", name)
    try:
        areas = tuple(
            build_section(AreaSettings, a, f"{prefix}areas[{i}]")
            for i, a in enumerate(_tables(table.get("areas"), f"{prefix}areas"))
        )
        devices = tuple(
            build_section(DeviceSettings, d, f"{prefix}devices[{i}]")
            for i, d in enumerate(_tables(table.get("devices"), f"{prefix}devices"))
        )
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.value, exc.expected, name) from None
    return Source(name, areas, devices)


def _tables(value: Any, key: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(key, value, "an array of tables ([[" + key + "]])")
    return value


def load_dir(folder: Path) -> list[Source]:
    """One source per `*.toml` file of `folder` (sorted by name); missing folder: none."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise LoomdError(f"{path}: {exc}") from None
        out.append(source_from_tables(f"home.d/{path.name}", data))
    return out
