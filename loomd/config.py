"""Settings: frozen dataclasses per TOML section, validated when they are built.

Each field carries its constraints in `dataclasses.field(metadata=...)`, and one
generic validator (run from `__post_init__`) checks type, range, choices,
length and custom checks. So settings built in code (tests, other modules) are
held to the same rules as settings read from `/etc/loomd/loomd.toml`, and the
schema lives in exactly one place.

Every mistake raises `ConfigError(key, value, expected, source)`, whose text is
one line naming the file, the key, the value and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from loomd.bus.topics import matches, validate_pattern
from loomd.errors import ConfigError, ProtocolError

__all__ = [
    "QOS_CLASSES",
    "SYSTEM_CONFIG",
    "BusSettings",
    "DaemonSettings",
    "MetricsSettings",
    "PathSettings",
    "ResolvedPaths",
    "Settings",
    "StateSettings",
    "changed_keys",
    "default_config_path",
    "load_config",
    "resolve_dir",
    "resolve_paths",
]

SYSTEM_CONFIG = Path("/etc/loomd/loomd.toml")
QOS_CLASSES = ("realtime", "batched", "reliable")
LOG_LEVELS = ("debug", "info", "warning", "error")

# sun_path is 108 bytes including the terminating NUL; longer socket paths fail
# at bind time with an obscure error, so reject them at load time instead.
_MAX_SOCKET_PATH = 107

# A problem found by a custom check: (key suffix, offending value, expectation).
Problem = tuple[str, Any, str]
Check = Callable[[Any], Problem | None]


def option(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    at_least: str | None = None,
    choices: tuple[str, ...] | None = None,
    max_len: int | None = None,
    valid: Callable[[Any], bool] | None = None,
    check: Check | None = None,
    expected: str | None = None,
) -> Any:
    """A dataclass field whose constraints travel with it as metadata.

    `min`/`max`: inclusive numeric range; `at_least`: another field of the same
    section this one may not be below; `choices`: allowed strings; `max_len`:
    longest string; `valid` + `expected`: a predicate and the words for what it
    accepts; `check`: item-level checks for lists and tables (returns a Problem).
    """
    meta = {
        "min": min,
        "max": max,
        "at_least": at_least,
        "choices": choices,
        "max_len": max_len,
        "valid": valid,
        "check": check,
        "expected": expected,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- custom checks -----------------------------------------------------------


# Simple predicates: a field names one with `valid=` and says what it wants with
# `expected=`, so a wrong type and a wrong value get the same explanation.
IP_TEXT = 'an IP address like "127.0.0.1" or "::1"'
MODE_TEXT = 'an octal mode string from "0000" to "0777", like "0660"'
DIR_TEXT = 'an absolute path, or "" to choose automatically'
SOCKET_TEXT = f'an absolute path of at most {_MAX_SOCKET_PATH} bytes, or "" for the default'


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_octal_mode(value: str) -> bool:
    return re.fullmatch(r"[0-7]{1,4}", value) is not None and int(value, 8) <= 0o777


def _is_abs_or_auto(value: str) -> bool:
    return not value or value.startswith("/")


def _is_socket_path(value: str) -> bool:
    return _is_abs_or_auto(value) and len(value.encode()) <= _MAX_SOCKET_PATH


def _pattern_problem(pattern: str) -> str | None:
    try:
        validate_pattern(pattern)
    except ProtocolError as exc:
        return f"a topic pattern ({exc.detail or exc.reason})"
    return None


def _check_patterns(value: tuple[str, ...]) -> Problem | None:
    for i, pattern in enumerate(value):
        problem = _pattern_problem(pattern)
        if problem is not None:
            return (f"[{i}]", pattern, problem)
    return None


def _check_qos_map(value: Mapping[str, str]) -> Problem | None:
    for pattern, qos in value.items():
        problem = _pattern_problem(pattern)
        if problem is not None:
            return (f'."{pattern}"', pattern, problem)
        if qos not in QOS_CLASSES:
            return (f'."{pattern}"', qos, "one of " + ", ".join(QOS_CLASSES))
    return None


# --- generic validation ------------------------------------------------------


class _Bare(str):
    """A string shown without quotes in a ConfigError (file-level messages)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What the field accepts, in words: used for type and range errors alike."""
    if meta["expected"]:
        return str(meta["expected"])
    if meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    if tp is bool:
        return "true or false"
    if tp is str and meta["max_len"]:
        return f"a string of at most {meta['max_len']} characters"
    if tp is str:
        return "a string"
    if tp in (int, float):
        return _describe_number("an integer" if tp is int else "a number", meta)
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list of strings"
    if origin is Mapping:
        return "a table of strings"
    return f"a {tp}"


def _describe_number(noun: str, meta: Mapping[str, Any]) -> str:
    lo, hi = meta["min"], meta["max"]
    if lo is not None and hi is not None:
        return f"{noun} from {_num(lo)} to {_num(hi)}"
    if lo is not None:
        return f"{noun} of at least {_num(lo)}"
    if hi is not None:
        return f"{noun} of at most {_num(hi)}"
    return noun


class _WrongType(Exception):
    pass


def _coerce(tp: Any, value: Any) -> Any:
    """Check `value` against the annotation; return it in its canonical (immutable) form."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        # bool is an int subclass in Python, but `port = true` is a mistake.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # TOML allows nan and inf; neither is a usable timeout or size.
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(tp) is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif typing.get_origin(tp) is Mapping:
        if isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return MappingProxyType(dict(value))
    raise _WrongType


def _in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if meta["choices"] is not None and value not in meta["choices"]:
        return False
    if meta["max_len"] is not None and len(value) > meta["max_len"]:
        return False
    if meta["valid"] is not None and not meta["valid"](value):
        return False
    if meta["min"] is not None and value < meta["min"]:
        return False
    return not (meta["max"] is not None and value > meta["max"])


class _Section:
    """Mixin for section dataclasses: validates every field after construction."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        for f in fields:
            self._validate_field(f, hints[f.name])
        for f in fields:  # cross-field checks see the final values of every field
            self._validate_relation(f)

    def _validate_field(self, f: dataclasses.Field[Any], tp: Any) -> None:
        key, value = f"{self.SECTION}.{f.name}", getattr(self, f.name)
        try:
            value = _coerce(tp, value)
        except _WrongType:
            raise ConfigError(key, value, _describe(tp, f.metadata)) from None
        if not _in_range(value, f.metadata):
            raise ConfigError(key, value, _describe(tp, f.metadata))
        check: Check | None = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem is not None:
            suffix, bad, expected = problem
            raise ConfigError(key + suffix, bad, expected)
        object.__setattr__(self, f.name, value)  # frozen: store the canonical form

    def _validate_relation(self, f: dataclasses.Field[Any]) -> None:
        other = f.metadata.get("at_least")
        if other is None:
            return
        value, floor = getattr(self, f.name), getattr(self, other)
        if value < floor:
            expected = f"a value of at least {self.SECTION}.{other} ({_num(floor)})"
            raise ConfigError(f"{self.SECTION}.{f.name}", value, expected)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    """TOML/JSON-friendly form of a stored value."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


# --- the schema --------------------------------------------------------------


@dataclass(frozen=True)
class DaemonSettings(_Section):
    SECTION: ClassVar[str] = "daemon"

    device_id: str = option("", max_len=64)  # "" means the hostname
    log_level: str = option("info", choices=LOG_LEVELS)
    drain_timeout_s: float = option(5.0, min=0.1, max=300.0)


@dataclass(frozen=True)
class PathSettings(_Section):
    """Directories; "" means automatic (see `resolve_dir`)."""

    SECTION: ClassVar[str] = "paths"

    runtime_dir: str = option("", valid=_is_abs_or_auto, expected=DIR_TEXT)
    state_dir: str = option("", valid=_is_abs_or_auto, expected=DIR_TEXT)
    cache_dir: str = option("", valid=_is_abs_or_auto, expected=DIR_TEXT)


@dataclass(frozen=True)
class BusSettings(_Section):
    SECTION: ClassVar[str] = "bus"

    # "" means <runtime_dir>/bus.sock
    socket: str = option("", valid=_is_socket_path, expected=SOCKET_TEXT)
    socket_mode: str = option("0660", valid=_is_octal_mode, expected=MODE_TEXT)
    tcp_enabled: bool = option(False)
    tcp_bind: str = option("127.0.0.1", valid=_is_ip, expected=IP_TEXT)
    tcp_port: int = option(7781, min=1, max=65535)
    max_frame_bytes: int = option(1048576, min=1024, max=268435456)
    realtime_queue: int = option(1024, min=1, max=1000000)
    realtime_policy: str = option("drop_oldest", choices=("drop_oldest", "keep_latest"))
    reliable_queue: int = option(4096, min=1, max=1000000)
    credit_window: int = option(1024, min=1, max=100000)
    batch_max: int = option(100, min=1, max=100000)
    batch_interval_ms: int = option(100, min=1, max=60000)
    batch_budget: int = option(10000, min=1, max=10000000)
    default_ttl: int = option(16, min=1, max=255)
    client_timeout_s: float = option(15.0, min=1.0, max=3600.0)
    durable: tuple[str, ...] = option(
        factory=lambda: ("control.#", "action.#"),
        check=_check_patterns,
        expected="a list of topic patterns",
    )
    default_qos: Mapping[str, str] = option(
        factory=lambda: MappingProxyType({}),
        check=_check_qos_map,
        expected="a table of topic pattern = " + "|".join(QOS_CLASSES),
    )

    @property
    def socket_mode_int(self) -> int:
        return int(self.socket_mode, 8)

    def qos_for(self, topic: str) -> str | None:
        """The configured default QoS for `topic`: the first matching pattern, in file order."""
        for pattern, qos in self.default_qos.items():
            if matches(pattern, topic):
                return qos
        return None


@dataclass(frozen=True)
class StateSettings(_Section):
    SECTION: ClassVar[str] = "state"

    map_size_mb: int = option(64, min=1, max=1048576)
    max_map_size_mb: int = option(1024, min=1, max=1048576, at_least="map_size_mb")
    commit_window_ms: float = option(0.0, min=0.0, max=1000.0)
    journal_max_mb: int = option(64, min=1, max=1048576)
    journal_max_age_s: int = option(86400, min=1, max=31536000)


@dataclass(frozen=True)
class MetricsSettings(_Section):
    SECTION: ClassVar[str] = "metrics"

    enabled: bool = option(True)
    bind: str = option("127.0.0.1", valid=_is_ip, expected=IP_TEXT)
    port: int = option(9478, min=1, max=65535)


_SECTIONS: dict[str, type[_Section]] = {
    cls.SECTION: cls
    for cls in (DaemonSettings, PathSettings, BusSettings, StateSettings, MetricsSettings)
}


# --- paths -------------------------------------------------------------------

DirKind = Literal["runtime", "state", "cache"]

# kind -> (systemd variable, directory when root, XDG variable, fallback under $HOME)
_DIR_RULES: dict[str, tuple[str, str, str, str]] = {
    "runtime": ("RUNTIME_DIRECTORY", "/run/loomd", "XDG_RUNTIME_DIR", ""),
    "state": ("STATE_DIRECTORY", "/var/lib/loomd", "XDG_STATE_HOME", ".local/state"),
    "cache": ("CACHE_DIRECTORY", "/var/cache/loomd", "XDG_CACHE_HOME", ".cache"),
}


def resolve_dir(
    kind: DirKind,
    configured: str = "",
    *,
    env: Mapping[str, str] | None = None,
    euid: int | None = None,
) -> Path:
    """Where a directory lives: the configured path, else systemd's, else root's, else XDG."""
    if configured:
        return Path(configured)
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    sd_var, root_dir, xdg_var, home_sub = _DIR_RULES[kind]
    # systemd passes one path per RuntimeDirectory= entry, colon-separated.
    sd_dir = env.get(sd_var, "").split(":")[0]
    if sd_dir:
        return Path(sd_dir)
    if euid == 0:
        return Path(root_dir)
    xdg = env.get(xdg_var, "")
    if xdg.startswith("/"):  # the XDG spec says to ignore relative values
        return Path(xdg) / "loomd"
    if kind == "runtime":
        # No per-user runtime dir: the daemon must create this 0700 and check its owner.
        return Path(f"/tmp/loomd-{euid}")
    home = env.get("HOME") or str(Path.home())
    return Path(home) / home_sub / "loomd"


@dataclass(frozen=True)
class ResolvedPaths:
    runtime_dir: Path
    state_dir: Path
    cache_dir: Path
    bus_socket: Path


def resolve_paths(
    settings: Settings, *, env: Mapping[str, str] | None = None, euid: int | None = None
) -> ResolvedPaths:
    p = settings.paths
    runtime = resolve_dir("runtime", p.runtime_dir, env=env, euid=euid)
    return ResolvedPaths(
        runtime_dir=runtime,
        state_dir=resolve_dir("state", p.state_dir, env=env, euid=euid),
        cache_dir=resolve_dir("cache", p.cache_dir, env=env, euid=euid),
        bus_socket=Path(settings.bus.socket) if settings.bus.socket else runtime / "bus.sock",
    )


# --- the whole ---------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    state: StateSettings = field(default_factory=StateSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    # Where these settings came from; not part of equality (same values = same settings).
    source: Path | None = field(default=None, compare=False)

    @property
    def runtime_dir(self) -> Path:
        return resolve_dir("runtime", self.paths.runtime_dir)

    @property
    def state_dir(self) -> Path:
        return resolve_dir("state", self.paths.state_dir)

    @property
    def cache_dir(self) -> Path:
        return resolve_dir("cache", self.paths.cache_dir)

    @property
    def bus_socket(self) -> Path:
        return Path(self.bus.socket) if self.bus.socket else self.runtime_dir / "bus.sock"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).to_dict() for name in _SECTIONS}


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose value differs: what a reload changed."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]


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
    settings = dataclasses.replace(settings, source=path)
    if overrides:
        settings = _override(settings, overrides, "command line")
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(
            "<file>", _Bare(exc.strerror or str(exc)), "a readable TOML file", source=str(path)
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "<file>", _Bare(f"not UTF-8 at byte {exc.start}"), "UTF-8 TOML text", source=str(path)
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            "<file>", _Bare(str(exc)), "valid TOML syntax", source=str(path)
        ) from None


def _build(data: Mapping[str, Any], source: str) -> Settings:
    for name, table in data.items():
        _check_section(name, table, source)
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = data.get(name, {})
        for key in table:
            _check_key(name, key, table[key], source)
        sections[name] = _construct(cls, table, source)
    return Settings(**sections)


def _construct(cls: type[_Section], values: Mapping[str, Any], source: str) -> Any:
    try:
        return cls(**values)
    except ConfigError as exc:  # add where the value came from
        raise ConfigError(exc.key, exc.value, exc.expected, source=source) from None


def _override(settings: Settings, overrides: Mapping[str, Any], source: str) -> Settings:
    per_section: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        name, _, key = dotted.partition(".")
        _check_section(name, {}, source, dotted=dotted)
        _check_key(name, key, value, source)
        per_section.setdefault(name, {})[key] = value
    changes = {
        name: _construct(
            type(getattr(settings, name)), getattr(settings, name).to_dict() | values, source
        )
        for name, values in per_section.items()
    }
    return dataclasses.replace(settings, **changes)


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def _suggest(word: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _check_section(name: str, table: Any, source: str, *, dotted: str | None = None) -> None:
    if name not in _SECTIONS:
        guess = _suggest(dotted or name, list(_SECTIONS) + _all_keys())
        hint = f"did you mean {guess}?" if guess else "sections: " + ", ".join(_SECTIONS)
        shown = _Bare("{...}") if isinstance(table, Mapping) else table
        raise ConfigError(
            dotted or name, shown, f"a known section (unknown; {hint})", source=source
        )
    if not isinstance(table, Mapping):
        raise ConfigError(name, table, f"a table ([{name}])", source=source)


def _check_key(section: str, key: str, value: Any, source: str) -> None:
    names = [f.name for f in dataclasses.fields(_SECTIONS[section])]  # type: ignore[arg-type]
    if key in names:
        return
    local = _suggest(key, names)
    guess = f"{section}.{local}" if local else _suggest(f"{section}.{key}", _all_keys())
    hint = f"did you mean {guess}?" if guess else f"keys of [{section}]: " + ", ".join(names)
    raise ConfigError(
        f"{section}.{key}", value, f"a known key (unknown key; {hint})", source=source
    )
