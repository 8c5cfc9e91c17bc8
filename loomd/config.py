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
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from loomd.errors import ConfigError, LoomdError

__all__ = [
    "AUTO",
    "DIR_TEXT",
    "IP_TEXT",
    "MODE_TEXT",
    "SOCKET_TEXT",
    "UNKNOWN_KEY",
    "Bare",
    "Check",
    "DaemonSettings",
    "PathSettings",
    "Problem",
    "ResolvedPaths",
    "Section",
    "Switch",
    "build_section",
    "is_abs_or_auto",
    "is_ip",
    "is_octal_mode",
    "is_socket_path",
    "option",
    "resolve_dir",
    "split_reload",
    "suggest",
    "switch",
]

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
    reload: bool = False,
) -> Any:
    """A dataclass field whose constraints travel with it as metadata.

    `min`/`max`: inclusive numeric range; `at_least`: another field of the same
    section this one may not be below; `choices`: allowed strings; `max_len`:
    longest string; `valid` + `expected`: a predicate and the words for what it
    accepts; `check`: item-level checks for lists and tables (returns a Problem);
    `reload`: a running daemon applies a change of this option on SIGHUP (otherwise the
    change is reported as "needs restart" and the running value is kept).
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
        "reload": reload,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# A component that may run "auto"matically: on when what it needs is there.
Switch = bool | str
AUTO = "auto"


def switch(default: bool | str = AUTO, **kw: Any) -> Any:
    """`enabled = true | false | "auto"`: "auto" starts the component only when its
    packages import and its `check()` finds no problem (its models are installed, say);
    otherwise it stays off, and says why in `loomctl status`."""
    return option(default, valid=lambda v: v in (True, False, AUTO), expected=SWITCH_TEXT, **kw)


SWITCH_TEXT = 'true, false or "auto"'


# --- custom checks -----------------------------------------------------------


# Simple predicates: a field names one with `valid=` and says what it wants with
# `expected=`, so a wrong type and a wrong value get the same explanation.
IP_TEXT = 'an IP address like "127.0.0.1" or "::1"'
MODE_TEXT = 'an octal mode string from "0000" to "0777", like "0660"'
DIR_TEXT = 'an absolute path, or "" to choose automatically'
SOCKET_TEXT = f'an absolute path of at most {_MAX_SOCKET_PATH} bytes, or "" for the default'


def read_credential(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret systemd passed with `LoadCredential=NAME:...` (the file
    `$CREDENTIALS_DIRECTORY/NAME`, trailing newline dropped), or None when there is none."""
    env = os.environ if env is None else env
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not name or not directory or "/" in name:
        return None
    path = Path(directory) / name
    try:
        return path.read_text().rstrip("\r\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LoomdError(f"credential {name!r} ({path}): {exc.strerror or exc}") from None


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_octal_mode(value: str) -> bool:
    return re.fullmatch(r"[0-7]{1,4}", value) is not None and int(value, 8) <= 0o777


def is_abs_or_auto(value: str) -> bool:
    return not value or value.startswith("/")


def is_socket_path(value: str) -> bool:
    return is_abs_or_auto(value) and len(value.encode()) <= _MAX_SOCKET_PATH


# --- generic validation ------------------------------------------------------


class Bare(str):
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
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_section(tp):
        return "a table"
    if origin is tuple and args and _is_section(args[0]):
        return "an array of tables"
    if origin is tuple:
        return {int: "a list of integers", float: "a list of numbers"}.get(
            args[0] if args else str, "a list of strings"
        )
    if origin is Mapping and len(args) == 2 and _is_section(args[1]):
        return "a table of tables"
    if origin is Mapping and len(args) == 2 and args[1] is Any:
        return "a table"
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


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Section)


def _scalar(tp: Any, value: Any) -> Any:
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
    elif tp is str and isinstance(value, str):
        return value
    raise _WrongType


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation; return it in its canonical (immutable) form.

    Nested tables (a `Section` type), arrays of tables (`tuple[Section, ...]`) and tables of
    tables (`Mapping[str, Section]`) are built here, so their errors carry the full key path
    (`mqtt.map[2].qos`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_section(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return build_section(tp, value, key)
        raise ConfigError(key, value, "a table")  # names the element: `mqtt.map[2]`
    elif origin is tuple and args and _is_section(args[0]):
        if isinstance(value, list | tuple):
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    elif origin is tuple:
        if isinstance(value, list | tuple):
            return tuple(_scalar(args[0] if args else str, v) for v in value)
    elif origin is Mapping and len(args) == 2 and _is_section(args[1]):
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return MappingProxyType(
                {k: _coerce(args[1], v, f"{key}.{_table_key(k)}") for k, v in value.items()}
            )
    elif origin is Mapping and len(args) == 2 and args[1] is Any:
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return MappingProxyType(dict(value))
    elif origin is Mapping:
        if isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return MappingProxyType(dict(value))
    elif origin is types.UnionType:  # `bool | str` (a switch): the first type that fits
        for alternative in args:
            try:
                return _scalar(alternative, value)
            except _WrongType:
                pass
    else:
        return _scalar(tp, value)
    raise _WrongType


def _table_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


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


class Section:
    """Mixin for settings dataclasses: validates every field after construction.

    A top-level section sets `SECTION` (its TOML table name); a nested table (an element of
    `[[mqtt.map]]`, say) leaves it empty and its errors are prefixed with the path it was
    read from."""

    SECTION: ClassVar[str] = ""
    # The name of a `Mapping[str, Any]` field that takes every sub-table not named by a
    # field: `[agents.butler]` lands in `AgentsSettings.agent["butler"]`, validated later
    # by whoever owns it (the plugin); `to_dict()` puts them back at the top.
    TABLES: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        for f in fields:
            self._validate_field(f, hints[f.name])
        for f in fields:  # cross-field checks see the final values of every field
            self._validate_relation(f)

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def _validate_field(self, f: dataclasses.Field[Any], tp: Any) -> None:
        key, value = self._key(f.name), getattr(self, f.name)
        try:
            value = _coerce(tp, value, key)
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
            expected = f"a value of at least {self._key(other)} ({_num(floor)})"
            raise ConfigError(self._key(f.name), value, expected)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if self.TABLES:
            out.update(out.pop(self.TABLES))
        return out

    @classmethod
    def reloadable(cls) -> frozenset[str]:
        """Fields whose change a running daemon applies live (declared with `reload=True`)."""
        return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("reload"))  # type: ignore[arg-type]


_Section = Section  # the name the schema below was written with


def _plain(value: Any) -> Any:
    """TOML/JSON-friendly form of a stored value."""
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


UNKNOWN_KEY = "a known key (unknown key; "


def build_section(cls: type[Section], table: Mapping[str, Any], path: str = "") -> Any:
    """Build `cls` from a TOML table: unknown keys are errors with a suggestion, and a nested
    table's errors are prefixed with `path` (`mqtt.map[2]`)."""
    path = path or cls.SECTION
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if cls.TABLES:  # unknown sub-tables belong to the catch-all field
        tables = {k: v for k, v in table.items() if k not in names and isinstance(v, Mapping)}
        table = {k: v for k, v in table.items() if k not in tables}
        table[cls.TABLES] = {**tables, **table.get(cls.TABLES, {})}
        names.remove(cls.TABLES)  # not a key of its own in the file
    for key, value in table.items():
        if key == cls.TABLES:
            continue
        if key not in names:
            guess = suggest(key, names)
            hint = (
                f"did you mean {path}.{guess}?"
                if guess
                else f"keys of [{path}]: " + ", ".join(names)
            )
            raise ConfigError(f"{path}.{key}", value, f"{UNKNOWN_KEY}{hint})")
    try:
        return cls(**table)
    except ConfigError as exc:
        if cls.SECTION or not path:
            raise
        raise ConfigError(f"{path}.{exc.key}", exc.value, exc.expected) from None


# --- the schema --------------------------------------------------------------


@dataclass(frozen=True)
class DaemonSettings(_Section):
    SECTION: ClassVar[str] = "daemon"

    device_id: str = option("", max_len=64, reload=True)  # "" means the hostname
    log_level: str = option("info", choices=LOG_LEVELS, reload=True)
    drain_timeout_s: float = option(5.0, min=0.1, max=300.0, reload=True)
    # The watchdog ping stops while the event loop wakes up later than this.
    max_loop_lag_s: float = option(2.0, min=0.05, max=60.0, reload=True)


@dataclass(frozen=True)
class PathSettings(_Section):
    """Directories; "" means automatic (see `resolve_dir`)."""

    SECTION: ClassVar[str] = "paths"

    runtime_dir: str = option("", valid=is_abs_or_auto, expected=DIR_TEXT)
    state_dir: str = option("", valid=is_abs_or_auto, expected=DIR_TEXT)
    cache_dir: str = option("", valid=is_abs_or_auto, expected=DIR_TEXT)
    # Models (`loomctl models`): "" = <state_dir>/models.
    models_dir: str = option("", valid=is_abs_or_auto, expected=DIR_TEXT)


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
    models_dir: Path


def split_reload(old: Section, new: Section) -> tuple[Section, list[str], list[str]]:
    """What a reload of one section may apply: (running settings, applied keys, keys that
    need a restart). The running settings take the new value of every reloadable option and
    keep the old value of the rest, so they never hold a value that is not in effect."""
    fields = [f.name for f in dataclasses.fields(old)]  # type: ignore[arg-type]
    changed = [k for k in fields if getattr(old, k) != getattr(new, k)]
    live = type(old).reloadable()
    applied = [k for k in changed if k in live]
    restart = [k for k in changed if k not in live]
    if not restart:
        return new, applied, restart
    try:
        merged = dataclasses.replace(new, **{k: getattr(old, k) for k in restart})  # type: ignore[type-var]
    except ConfigError:  # the mix of old and new breaks a cross-field rule: keep all old
        return old, [], changed
    return merged, applied, restart


def suggest(word: str, candidates: list[str]) -> str | None:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None
