"""What every check shares: the verdicts, the `Context` a check looks at (the daemon's
configuration, its socket, the hardware root), and small helpers for fixes and sizes."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from loomd.errors import LoomdError
from loomd.settings import (
    SYSTEM_CONFIG,
    Settings,
    default_config_path,
    load_config,
    resolve_paths,
)

GB = 1 << 30
MB = 1 << 20
GROUP = "loomd"
UNIT_FILES = (Path("/lib/systemd/system/loomd.service"), Path("/etc/systemd/system/loomd.service"))
PACKAGED_SOCKET = Path("/run/loomd/bus.sock")
NOT_IN_GROUP = "run as a member of group loomd, or with sudo"


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Result:
    """One line of the report: the check's name, its verdict, what it found, and the exact
    command (or edit) that fixes it when the verdict is not ok."""

    check: str
    status: Status
    finding: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {**asdict(self), "status": str(self.status)}


@dataclass(frozen=True)
class Verdict:
    """What a check function returns; the runner adds the check's name."""

    status: Status
    finding: str
    fix: str = ""


def ok(finding: str) -> Verdict:
    return Verdict(Status.OK, finding)


def warn(finding: str, fix: str) -> Verdict:
    return Verdict(Status.WARN, finding, fix)


def fail(finding: str, fix: str) -> Verdict:
    return Verdict(Status.FAIL, finding, fix)


def skip(why: str) -> Verdict:
    return Verdict(Status.SKIP, why)


@dataclass
class Context:
    """What the checks look at. `settings` is the configuration the daemon runs with;
    `config_error` is set (and `settings` holds the defaults) when that file is invalid."""

    settings: Settings
    config_path: Path | None = None
    config_error: str = ""
    endpoint: str = ""
    hw_root: Path = Path("/")
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    disk_warn_bytes: int = 1 * GB
    disk_fail_bytes: int = 200 * MB
    mqtt_timeout_s: float = 2.0
    daemon_timeout_s: float = 3.0
    group: str = GROUP  # the group whose members may use the socket
    config_denied: bool = False  # the config file exists but this user may not read it
    _status: dict[str, Any] | None = None
    _status_error: LoomdError | None = None
    _status_done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- where things are -------------------------------------------------------------------
    @property
    def packaged(self) -> bool:
        """Whether this is the packaged daemon's configuration: then its directories are the
        unit's (/run/loomd, /var/lib/loomd), whoever runs the doctor."""
        return self.config_path == SYSTEM_CONFIG or (
            self.config_path is None and _exists(PACKAGED_SOCKET)
        )

    @property
    def paths(self) -> Any:
        if self.packaged:
            return resolve_paths(self.settings, env={}, euid=0)
        return resolve_paths(self.settings, env=self.env)

    @property
    def socket_path(self) -> Path:
        return Path(self.endpoint.removeprefix("ipc://"))

    @property
    def state_dir(self) -> Path:
        return Path(self.paths.state_dir)

    @property
    def models_dir(self) -> Path:
        return Path(self.paths.models_dir)

    def hw(self, path: str) -> Path:
        return self.hw_root / path.lstrip("/")

    def section(self, name: str) -> Any:
        try:
            return self.settings.section(name)
        except KeyError:
            return None

    # -- the daemon's own view, fetched once for every check that wants it ------------------
    def daemon_status(self) -> dict[str, Any]:
        """`status` from the running daemon; raises the client's LoomdError (NotRunning,
        PermissionDenied, ...) when it cannot be had. Asked once, shared by the checks."""
        with self._lock:
            if not self._status_done:
                try:
                    self._status = asyncio.run(self._fetch_status())
                except LoomdError as exc:
                    self._status_error = exc
                self._status_done = True
        if self._status_error is not None:
            raise self._status_error
        assert self._status is not None
        return self._status

    async def _fetch_status(self) -> dict[str, Any]:
        from loomd.sdk.client import Client

        t = self.daemon_timeout_s
        try:
            async with asyncio.timeout(t):  # the whole exchange, connect included
                async with Client(self.endpoint, name="loomctl-doctor", timeout=t) as c:
                    st: dict[str, Any] = (await c.status())["status"]
                    return st
        except TimeoutError:
            raise LoomdError(f"no answer within {t:g} s (a wedged or stopped daemon)") from None


def load_context(
    config: Path | None, endpoint: str | None = None, *, hw_root: Path = Path("/")
) -> Context:
    """The configuration the daemon uses (`--config`, $LOOMD_CONFIG, /etc/loomd/loomd.toml,
    else the defaults) and the socket to ask: `--socket`, $LOOMD_SOCKET, the configured one,
    else the same default loomctl uses."""
    from loomd.sdk.endpoint import default_endpoint

    try:
        path = config if config is not None else default_config_path()
    except PermissionError:  # /etc/loomd is 0750 root:loomd: outsiders may not even look
        path = SYSTEM_CONFIG
    error = ""
    try:
        settings = load_config(path)
    except LoomdError as exc:
        settings, error = Settings(), str(exc)
    ctx = Context(settings=settings, config_path=path, config_error=error, hw_root=hw_root)
    ctx.config_denied = path is not None and bool(error) and not _readable(path)
    if endpoint:
        ctx.endpoint = endpoint
    elif os.environ.get("LOOMD_SOCKET"):
        ctx.endpoint = os.environ["LOOMD_SOCKET"]
    elif path is not None and (settings.bus.socket or settings.paths.runtime_dir):
        ctx.endpoint = str(ctx.paths.bus_socket)
    else:
        ctx.endpoint = default_endpoint()
    return ctx


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except PermissionError:
        return False
    except OSError:
        return True  # missing or broken: the config check says so in its own words


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except PermissionError:  # /run/loomd is 0750: outsiders may not look, but it is there
        return True


def config_arg(ctx: Context) -> str:
    return f" --config {ctx.config_path}" if ctx.config_path else ""


def unit_installed() -> bool:
    return any(p.is_file() for p in UNIT_FILES)


def start_fix(ctx: Context) -> str:
    if unit_installed() or ctx.packaged:
        return "sudo systemctl start loomd; journalctl -u loomd -e (why it stopped)"
    return f"loomd{config_arg(ctx)} &"


def restart_fix(ctx: Context) -> str:
    if unit_installed() or ctx.packaged:
        return "sudo systemctl restart loomd; journalctl -u loomd -e (what it logged before)"
    return f"stop it (kill its pid), then: loomd{config_arg(ctx)} &"


def size_text(n: float) -> str:
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def duration_text(s: float) -> str:
    s = int(s)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s % 60}s"


@dataclass(frozen=True)
class Check:
    """A named check with its deadline. The board's own are in `loomd.doctor.run`; each
    component contributes its own (`loomd.components.BUILTIN_DOCTOR` names a module's
    `CHECKS`)."""

    name: str
    fn: Callable[[Context], Verdict]
    timeout_s: float = 5.0


def component_on(ctx: Context, name: str) -> tuple[bool, str]:
    """Whether the daemon runs component `name` with these settings (the daemon's own rule
    for `enabled = "auto"`: its packages import and its `check()` finds nothing), and if
    not, why: ("", when on)."""
    section = ctx.section(name)
    if section is None:
        return False, f"no component {name}"
    enabled = getattr(section, "enabled", True)
    if enabled is False:
        return False, f"[{name}] enabled = false"
    if enabled is True:
        return True, ""
    from loomd.components import auto_off_reason

    cls = component_class(name)
    if cls is None:
        return False, f"the {name} component does not import"
    try:  # the daemon's own rule, so doctor and `loomctl status` never disagree
        why = auto_off_reason(cls, section, ctx.paths)
    except PermissionError as exc:  # the models dir is loomd's (0750): the daemon may see more
        return False, f"cannot tell: may not look at {exc.filename} ({NOT_IN_GROUP})"
    return not why, why


def component_class(name: str) -> Any:
    from loomd.components import registry

    return registry().classes().get(name)
