"""`loomctl doctor`: one line per check of what a board needs, each with its fix.

Runs locally, without the daemon (one check asks it for its status). Each check is a small
function of a `Context`, independent of the others, run in its own thread with a deadline:
a check that crashes or hangs becomes a `fail` line naming its error and the rest still run.
The exit code is 1 when any check fails (a warning does not fail), 0 otherwise.

Hardware edges (thermal zones, the Raspberry Pi throttle file, /proc/asound, /dev/nvhost-*)
are read under `Context.hw_root`, so tests give a fake tree; everything else is real.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import grp
import importlib.util
import json
import logging
import os
import pwd
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from loomd.config import SYSTEM_CONFIG, Settings, default_config_path, load_config, resolve_paths
from loomd.errors import LoomdError, NotRunning, PermissionDenied

__all__ = [
    "CHECKS",
    "Check",
    "Context",
    "Result",
    "Status",
    "add_parser",
    "decode_throttled",
    "format_results",
    "run_checks",
]

log = logging.getLogger(__name__)

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
        return {
            "check": self.check,
            "status": str(self.status),
            "finding": self.finding,
            "fix": self.fix,
        }


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
    from loomd.sdk.client import default_endpoint

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


def _config_arg(ctx: Context) -> str:
    return f" --config {ctx.config_path}" if ctx.config_path else ""


def _unit_installed() -> bool:
    return any(p.is_file() for p in UNIT_FILES)


def _start_fix(ctx: Context) -> str:
    if _unit_installed() or ctx.packaged:
        return "sudo systemctl start loomd; journalctl -u loomd -e (why it stopped)"
    return f"loomd{_config_arg(ctx)} &"


def _restart_fix(ctx: Context) -> str:
    if _unit_installed() or ctx.packaged:
        return "sudo systemctl restart loomd; journalctl -u loomd -e (what it logged before)"
    return f"stop it (kill its pid), then: loomd{_config_arg(ctx)} &"


def _size(n: float) -> str:
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _duration(s: float) -> str:
    s = int(s)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s % 60}s"


# --- checks -----------------------------------------------------------------------------


def check_config(ctx: Context) -> Verdict:
    if ctx.config_denied:
        return fail(
            f"may not read {ctx.config_path}: the other checks assume the defaults",
            f"sudo adduser $USER {ctx.group}, then log out and in again (or: sudo loomctl doctor)",
        )
    if ctx.config_error:
        return fail(
            ctx.config_error, f"edit {ctx.config_path}, then: loomd --check{_config_arg(ctx)}"
        )
    return ok(str(ctx.config_path) if ctx.config_path else "no file: built-in defaults")


def check_daemon(ctx: Context) -> Verdict:
    try:
        st = ctx.daemon_status()
    except NotRunning:
        return fail(f"not running (nothing answers on {ctx.endpoint})", _start_fix(ctx))
    except PermissionDenied as exc:
        return fail(
            f"may not connect: {exc}", f"sudo adduser $USER {ctx.group}, then log out and in again"
        )
    except LoomdError as exc:  # it answered, but not as a daemon should (wedged, garbled)
        return fail(f"{ctx.endpoint}: {exc}", _restart_fix(ctx))
    d = st["daemon"]
    comps: dict[str, Any] = st.get("components", {})
    running = [n for n, c in comps.items() if c["state"] == "running"]
    broken = [
        f"{n} ({c['state']}: {c.get('reason') or '?'})"
        for n, c in comps.items()
        if c["state"] in ("failed", "broken")
    ]
    missing = [
        f"{n} ({c.get('reason') or 'unavailable'})"
        for n, c in comps.items()
        if c["state"] == "unavailable"
    ]
    sick = [n for n, c in comps.items() if c["state"] == "running" and c.get("healthy") is False]
    # A running component may still say it cannot do its job (the llm with a bad model).
    sick += [
        f"{n}: {(c.get('status') or {}).get('problem')}"
        for n, c in comps.items()
        if isinstance(c.get("status"), dict) and c["status"].get("problem")
    ]
    head = (
        f"loomd {d['version']} up {_duration(d['uptime_s'])}, "
        f"{len(running)}/{len(comps)} components running"
    )
    logs = "journalctl -u loomd -e" if (_unit_installed() or ctx.packaged) else "the daemon's log"
    if broken:
        return fail(
            f"{head}; failed: {', '.join(broken)}",
            f"loomctl status; {logs}; then sudo systemctl restart loomd",
        )
    if sick or not d.get("healthy", True):
        problems = [*d.get("problems", []), *sick]
        return warn(f"{head}; unhealthy: {', '.join(problems)}", f"loomctl status; {logs}")
    if missing:
        return warn(
            f"{head}; unavailable: {', '.join(missing)}",
            "install what the reason names, then sudo systemctl restart loomd",
        )
    return ok(f"{head} ({', '.join(running)})")


def _socket_stat(path: Path) -> tuple[os.stat_result | None, str]:
    try:
        return path.stat(), ""
    except FileNotFoundError:
        return None, "missing"
    except PermissionError:
        return None, "denied"


def check_group(ctx: Context) -> Verdict:
    path = ctx.socket_path
    st, why = _socket_stat(path)
    if st is None and why == "denied":
        try:  # the socket hides behind its directory; that directory names the group
            st = path.parent.stat()
        except OSError:
            st = None
    if st is None:
        return skip(f"no socket at {path}")
    gid = st.st_gid
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return skip(f"socket group {gid} has no name")
    user = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        return ok("root")
    if st.st_uid == os.geteuid():
        return ok(f"{user} owns the socket")
    if gid in os.getgroups() or gid == os.getegid():
        return ok(f"{user} is in group {group.gr_name}")
    if group.gr_name != ctx.group:
        return skip(f"socket group is {group.gr_name}, not {ctx.group}")
    if user in group.gr_mem:
        return warn(
            f"{user} was added to group {ctx.group} but this login predates it",
            f"log out and in again (or: newgrp {ctx.group})",
        )
    return fail(
        f"{user} is not in group {ctx.group}: loomctl may not use the socket",
        f"sudo adduser $USER {ctx.group}, then log out and in again",
    )


def check_socket(ctx: Context) -> Verdict:
    path = ctx.socket_path
    st, why = _socket_stat(path)
    if st is None:
        if why == "denied":
            return skip(f"{path}: not allowed to look (see the group check)")
        return skip(f"no socket at {path} (see the daemon check)")
    if not stat.S_ISSOCK(st.st_mode):
        return fail(f"{path} is not a socket", f"sudo rm {path}; sudo systemctl restart loomd")
    mode = stat.S_IMODE(st.st_mode)
    want = int(ctx.settings.bus.socket_mode, 8)
    problems, fixes = [], []
    if mode != want:
        problems.append(f"mode {mode:04o}, [bus] socket_mode says {want:04o}")
        fixes.append(f"sudo chmod {want:04o} {path}")
    loomd_gid = _gid(ctx.group)
    shared = loomd_gid is not None and (ctx.packaged or st.st_gid == loomd_gid)
    if shared:
        assert loomd_gid is not None
        if st.st_gid != loomd_gid:
            problems.append(f"group {_group_name(st.st_gid)}, not {ctx.group}")
            fixes.append(f"sudo chgrp {ctx.group} {path}")
        if _uid(ctx.group) is not None and ctx.packaged and st.st_uid != _uid(ctx.group):
            problems.append(f"owner {_user_name(st.st_uid)}, not {ctx.group}")
            fixes.append(f"sudo chown {ctx.group} {path}")
        if want & 0o060 != 0o060:
            problems.append(f"socket_mode {want:04o} shuts out group {ctx.group}")
            fixes.append(f'set [bus] socket_mode = "0660" in {ctx.config_path or "loomd.toml"}')
        try:
            dst = path.parent.stat()
            if dst.st_gid == loomd_gid and not dst.st_mode & stat.S_IXGRP:
                problems.append(f"{path.parent} is not searchable by group {ctx.group}")
                fixes.append(f"sudo chmod g+x {path.parent}")
        except OSError:
            pass
    if problems:
        fixes.append(
            "(the daemon sets them when it starts: sudo systemctl restart loomd)"
            if _unit_installed() or ctx.packaged
            else "(the daemon sets them when it starts)"
        )
        return fail("; ".join(problems), "; ".join(fixes))
    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}"
    return ok(f"{path} {mode:04o} {owner}")


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- audio -------------------------------------------------------------------------------

RATE = 16000


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

    cls = _component_class(name)
    if cls is None:
        return False, f"the {name} component does not import"
    try:  # the daemon's own rule, so doctor and `loomctl status` never disagree
        why = auto_off_reason(cls, section, ctx.paths)
    except PermissionError as exc:  # the models dir is loomd's (0750): the daemon may see more
        return False, f"cannot tell: may not look at {exc.filename} ({NOT_IN_GROUP})"
    return not why, why


def _component_class(name: str) -> Any:
    from loomd.components import registry

    return registry().classes().get(name)


def sound_cards(root: Path) -> list[str]:
    """Card names from /proc/asound/cards (` 0 [Headphones ]: bcm2835 - bcm2835 ...`)."""
    try:
        text = (root / "proc/asound/cards").read_text()
    except OSError:
        return []
    cards = []
    for line in text.splitlines():
        head, sep, desc = line.partition("]: ")
        if sep and head.strip()[:1].isdigit():
            cards.append(desc.split(" - ", 1)[-1].strip() or head.split("[", 1)[-1].strip())
    return cards


def _pyaudio_devices() -> tuple[list[str], list[str]]:
    """Input and output devices that accept 16 kHz mono s16 (what the voice pipeline opens)."""
    import pyaudio  # type: ignore[import-untyped]

    ins, outs = [], []
    with _quiet_stderr():  # ALSA and JACK print dozens of lines while PortAudio looks around
        pa = pyaudio.PyAudio()
        try:
            for i in range(pa.get_device_count()):
                info = pa.get_device_info_by_index(i)
                name = str(info.get("name", i))
                if int(info.get("maxInputChannels", 0)) > 0 and _supported(pa, pyaudio, i, True):
                    ins.append(name)
                if int(info.get("maxOutputChannels", 0)) > 0 and _supported(pa, pyaudio, i, False):
                    outs.append(name)
        finally:
            pa.terminate()
    return ins, outs


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """fd 2 to /dev/null: the C libraries write there directly, below Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _supported(pa: Any, pyaudio: Any, index: int, inp: bool) -> bool:
    kw = (
        {"input_device": index, "input_channels": 1, "input_format": pyaudio.paInt16}
        if inp
        else {"output_device": index, "output_channels": 1, "output_format": pyaudio.paInt16}
    )
    try:
        return bool(pa.is_format_supported(RATE, **kw))
    except ValueError:  # PyAudio raises instead of returning False
        return False


def check_audio(ctx: Context) -> Verdict:
    voice = ctx.section("voice")
    on, why = component_on(ctx, "voice")
    if not on:
        return skip(f"voice is off: {why}")
    cards = sound_cards(ctx.hw_root)
    cards_text = f"cards: {', '.join(cards)}" if cards else "no sound cards in /proc/asound/cards"
    needs_mic, needs_spk = voice.source == "mic", voice.sink == "speaker"
    if importlib.util.find_spec("pyaudio") is None:
        if needs_mic or needs_spk:
            return warn(
                f"{cards_text}; PyAudio is not installed (source/sink use it)",
                "sudo apt install loomd-voice (or pip install 'loomd[voice]')",
            )
        return ok(f"{cards_text}; source {voice.source}, sink {voice.sink} (no PyAudio needed)")
    ins, outs = _pyaudio_devices()
    found = f"{cards_text}; 16 kHz mono: {len(ins)} input(s), {len(outs)} output(s)"
    lacks = []
    if needs_mic and not _matching(ins, voice.mic.device):
        lacks.append("microphone" + (f" matching {voice.mic.device!r}" if voice.mic.device else ""))
    if needs_spk and not outs:
        lacks.append("speaker")
    if lacks:
        return warn(
            f"{found}; no {' or '.join(lacks)} accepting 16 kHz mono",
            "plug in a USB microphone/speaker; list them with: arecord -l; aplay -l; "
            "set [voice.mic] device to part of its name",
        )
    detail = ", ".join([*(f"in: {n}" for n in ins[:2]), *(f"out: {n}" for n in outs[:2])])
    return ok(found + (f" ({detail})" if detail else ""))


def _matching(names: list[str], want: str) -> bool:
    return any(want.lower() in n.lower() for n in names) if want else bool(names)


# -- models ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFile:
    """A model file the configuration names, and what uses it."""

    role: str  # llm, stt, tts, wake
    path: Path
    required: bool  # false: the component manages without it (Piper falls back to espeak-ng)


def configured_models(ctx: Context) -> list[ModelFile]:
    """The model files the configuration actually names, for the components that are on."""
    from loomd.router.settings import model_file

    out: list[ModelFile] = []
    llm = ctx.section("llm")
    llm_path = model_file(llm.model, ctx.models_dir) if llm is not None else None
    if llm_path is not None and component_on(ctx, "llm")[0]:
        out.append(ModelFile("llm", llm_path, True))
    voice = ctx.section("voice")
    if voice is not None and component_on(ctx, "voice")[0]:
        base = Path(voice.models_dir) if voice.models_dir else ctx.models_dir
        out.append(ModelFile("stt", base / voice.stt.model, True))
        if voice.tts.engine == "piper":  # without its voice Piper falls back to espeak-ng
            tts = base / voice.tts.voice
            out += [ModelFile("tts", tts, False), ModelFile("tts", Path(f"{tts}.json"), False)]
        wakes = [base / m for m in voice.wake.models]
        if wakes:
            d = wakes[0].parent
            out += [
                ModelFile("wake", d / "melspectrogram.onnx", True),
                ModelFile("wake", d / "embedding_model.onnx", True),
            ]
        out += [ModelFile("wake", w, True) for w in wakes]
    return out


def auto_off(ctx: Context) -> list[str]:
    """Components left "auto" that stay off for a reason other than a missing extra (their
    models are missing, say): the user installed the package and probably expects them."""
    out = []
    for name in ("llm", "voice"):
        section = ctx.section(name)
        on, why = component_on(ctx, name)
        if section is not None and section.enabled == "auto" and not on:
            from loomd.components import missing_modules

            cls = _component_class(name)
            if why.startswith("cannot tell"):
                out.append(f"{name} ({section.enabled}): {why}")
            elif cls is not None and not missing_modules(cls):  # no extra: a choice
                out.append(f"{name} stays off: {why}")
    return out


def check_models(ctx: Context) -> Verdict:
    """Installed models verified against their checksums (loomd.models), and the files the
    configuration names present (and, for a GGUF, readable as one)."""
    problems, fixes, notes = [], [], []
    try:
        states = _installed(ctx.models_dir)
    except PermissionError as exc:
        return fail(
            f"may not look at {exc.filename or ctx.models_dir}",
            f"sudo adduser $USER {ctx.group}, then log out and in again (or: sudo loomctl doctor)",
        )
    if states is not None:
        bad = [s for s in states if getattr(s, "verified", "") == "bad"]
        present = [s for s in states if getattr(s, "present", False)]
        notes.append(f"{len(present)} installed in {ctx.models_dir}, {len(bad)} corrupt")
        for s in bad:
            mid = getattr(s, "id", None) or getattr(s, "model", "?")
            problems.append(f"{mid}: {getattr(s, 'problem', '') or 'checksum mismatch'}")
            fixes.append(f"loomctl models fetch {mid}")
    else:
        notes.append(f"models dir {ctx.models_dir}")
    files = configured_models(ctx)
    soft: list[str] = []
    for m in files:
        why = _model_problem(m)
        if not why:
            continue
        (problems if m.required else soft).append(
            f"{m.role}: {why}" + ("" if m.required else " (it falls back)")
        )
    fix_fetch = "loomctl models fetch (or offline: loomctl models install DIR|TARBALL)"
    if problems:
        return fail("; ".join(problems), "; ".join(dict.fromkeys([*fixes, fix_fetch])))
    soft += auto_off(ctx)
    if soft:
        return warn("; ".join(soft), fix_fetch)
    if not files and states is None:
        return skip("no component that uses models is on")
    notes.append(f"{len(files)} configured file(s) present")
    return ok(", ".join(notes))


def _installed(models_dir: Path) -> list[Any] | None:
    """`loomd.models.installed(verify=True)` when that package exists, else None."""
    if importlib.util.find_spec("loomd.models") is None:
        return None
    # Imported by name: part A's package may not be on this branch's main yet.
    fn = getattr(importlib.import_module("loomd.models"), "installed", None)
    return list(fn(models_dir, verify=True)) if fn is not None else None


def _model_problem(m: ModelFile) -> str:
    try:
        if not m.path.is_file():
            return f"{m.path} is missing"
    except PermissionError:
        return f"may not look at {m.path} ({NOT_IN_GROUP})"
    if m.path.suffix == ".gguf":
        from loomd.router.facts import read_gguf_shape

        try:
            read_gguf_shape(m.path)
        except LoomdError as exc:
            return str(exc)
    return ""


# -- memory ------------------------------------------------------------------------------

# Resident memory beyond the model file (weights are mapped, so the file counts in full),
# imports included, measured with the test models in a fresh process (docs/design/doctor.md):
# llama.cpp ~56 MB besides its KV cache, whisper.cpp ~100 MB, Piper ~80 MB, openWakeWord
# ~180 MB (it imports scipy and scikit-learn). The daemon itself is BASE.
OVERHEAD = {"llm": 56 * MB, "stt": 100 * MB, "tts": 80 * MB, "wake": 180 * MB}
BASE = 60 * MB


def model_need_bytes(ctx: Context) -> dict[str, int]:
    """Bytes each configured model role needs resident: the files (weights are mapped, so
    they count in full) plus its runtime's overhead, plus the LLM's KV cache."""
    need: dict[str, int] = {}
    for m in configured_models(ctx):
        try:
            if not m.path.is_file():
                continue
        except PermissionError:  # the models check names it; count what can be seen
            continue
        need[m.role] = need.get(m.role, OVERHEAD[m.role]) + m.path.stat().st_size
        if m.role == "llm":
            from loomd.router.facts import read_gguf_shape

            try:
                need["llm"] += read_gguf_shape(m.path).kv_bytes(ctx.section("llm").context)
            except LoomdError:
                pass
    return need


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def _cgroup_limit(pid: int | None) -> tuple[int | None, int]:
    """The tightest memory.max over the daemon's cgroup and its parents, and the memory the
    cgroup already uses; (None, 0) where there is no limit or it cannot be read."""
    cg = None
    if pid is not None:
        try:
            rel = Path(f"/proc/{pid}/cgroup").read_text().strip().splitlines()[-1]
            cg = Path("/sys/fs/cgroup") / rel.split(":", 2)[-1].lstrip("/")
        except (OSError, IndexError):
            cg = None
    if cg is None:
        unit = Path("/sys/fs/cgroup/system.slice/loomd.service")
        cg = unit if unit.is_dir() else None
    best: tuple[int | None, int] = (None, 0)
    while cg is not None and cg != Path("/sys/fs/cgroup") and cg.is_dir():
        try:
            limit = (cg / "memory.max").read_text().strip()
            if limit != "max" and (best[0] is None or int(limit) < best[0]):
                best = (int(limit), int((cg / "memory.current").read_text().strip()))
        except (OSError, ValueError):
            pass
        cg = cg.parent
    return best


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_memory(ctx: Context) -> Verdict:
    need = model_need_bytes(ctx)
    mem = meminfo()
    pid = None
    try:
        pid = int(ctx.daemon_status()["daemon"]["pid"])
    except (LoomdError, KeyError, ValueError):
        pass
    # A running daemon may hold its models already: what it uses now is its to reuse.
    held = _rss(pid) if pid is not None else 0
    budget = mem.get("MemAvailable", 0) + held
    where = "MemAvailable" + (" + the daemon's RSS" if held else "")
    limit, used = _cgroup_limit(pid)
    if limit is not None:
        room = limit - used + (held if pid is not None else 0)
        if room < budget:
            budget, where = room, "the unit's MemoryMax"
    elif _unit_installed() and mem.get("MemTotal"):
        cap = int(mem["MemTotal"] * 0.8)  # the unit's MemoryMax=80%, not yet in effect
        if cap < budget:
            budget, where = cap, "MemoryMax=80% of RAM"
    if not need:
        return ok(f"no local models configured; {_size(budget)} available ({where})")
    need = {"loomd": BASE, **need}
    total_need = sum(need.values())
    parts = ", ".join(f"{k} {_size(v)}" for k, v in need.items())
    head = f"need ~{_size(total_need)} ({parts}); {_size(budget)} available ({where})"
    if total_need > budget:
        return fail(
            head,
            "use smaller models (whisper tiny.en, a smaller GGUF) or a smaller "
            "[llm] context; stop other services",
        )
    if total_need > 0.8 * budget:
        return warn(
            head + "; under 20% to spare",
            "use a smaller [llm] context or model; stop other services",
        )
    return ok(head)


# -- temperature and throttling ----------------------------------------------------------

TEMP_WARN_C = 70.0
TEMP_FAIL_C = 80.0


def check_temperature(ctx: Context) -> Verdict:
    temps: list[tuple[float, str]] = []
    for path in sorted(ctx.hw("sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            temps.append((int(path.read_text().strip()) / 1000.0, path.parent.name))
        except (OSError, ValueError):
            continue
    if not temps:
        return skip("no thermal zones in /sys/class/thermal")
    c, zone = max(temps)
    text = f"{c:.1f} °C ({zone}, hottest of {len(temps)})"
    fix = "improve cooling: a heatsink or fan, a ventilated case; check load with top"
    if c >= TEMP_FAIL_C:
        return fail(text + f" >= {TEMP_FAIL_C:.0f} °C: the CPU throttles", fix)
    if c >= TEMP_WARN_C:
        return warn(text + f" >= {TEMP_WARN_C:.0f} °C", fix)
    return ok(text)


# Raspberry Pi firmware `get_throttled` bits: (bit, what, is it a failure when current).
THROTTLE_BITS = (
    (0, "under-voltage", True),
    (1, "ARM frequency capped", False),
    (2, "throttled", True),
    (3, "soft temperature limit", False),
)


def decode_throttled(value: int) -> tuple[list[str], list[str]]:
    """(conditions now, conditions since boot) from the firmware's bit field: bits 0-3 are
    now, bits 16-19 the same conditions at any time since boot."""
    now = [what for bit, what, _ in THROTTLE_BITS if value & (1 << bit)]
    since = [what for bit, what, _ in THROTTLE_BITS if value & (1 << (bit + 16))]
    return now, since


def _read_throttled(ctx: Context) -> int | None:
    if ctx.hw_root == Path("/") and shutil.which("vcgencmd"):
        out = subprocess.run(
            ["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2, check=False
        ).stdout
        if "=" in out:
            return int(out.split("=", 1)[1].strip(), 16)
    path = ctx.hw("sys/devices/platform/soc/soc:firmware/get_throttled")
    try:
        return int(path.read_text().strip(), 16)
    except FileNotFoundError:
        return None


def check_throttling(ctx: Context) -> Verdict:
    value = _read_throttled(ctx)
    if value is None:
        return skip("not a Raspberry Pi (no vcgencmd, no firmware get_throttled)")
    now, since = decode_throttled(value)
    text = f"0x{value:x}: now {', '.join(now) or 'none'}; since boot {', '.join(since) or 'none'}"
    power = "use the official supply (5 V 3 A for a Pi 4, 5 V 5 A for a Pi 5) and a short cable"
    cool = "improve cooling: a heatsink or fan"
    seen = {*now, *since}
    fix = "; ".join(
        [
            *([power] if "under-voltage" in seen else []),
            *([cool] if seen - {"under-voltage"} else []),
        ]
    )
    hard = [what for bit, what, hard in THROTTLE_BITS if hard and value & (1 << bit)]
    if hard:
        return fail(text, fix)
    if now or since:
        return warn(text, fix)
    return ok(text)


# -- disk --------------------------------------------------------------------------------


def check_disk(ctx: Context) -> Verdict:
    dirs = dict.fromkeys([ctx.state_dir, ctx.models_dir])
    worst: tuple[int, Path] | None = None
    for d in dirs:
        probe = d
        while True:
            try:
                free = shutil.disk_usage(probe).free
                break
            except (FileNotFoundError, PermissionError):
                # not created yet, or not ours to enter: the filesystem it is (will be) on
                if probe == probe.parent:
                    raise
                probe = probe.parent
        if worst is None or free < worst[0]:
            worst = (free, d)
    if worst is None:
        return skip(f"may not look at {', '.join(map(str, dirs))}")
    free, d = worst
    text = f"{_size(free)} free for {d}"
    fix = (
        "free space: sudo journalctl --vacuum-size=100M; sudo apt clean; "
        "loomctl models remove ID (unused models)"
    )
    if free < ctx.disk_fail_bytes:
        return fail(text + f" (< {_size(ctx.disk_fail_bytes)})", fix)
    if free < ctx.disk_warn_bytes:
        return warn(text + f" (< {_size(ctx.disk_warn_bytes)})", fix)
    return ok(text)


# -- MQTT --------------------------------------------------------------------------------

CONNACK_TEXT = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
    0x84: "unsupported protocol version",
    0x85: "client id rejected",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
}


def _mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect_packet(
    client_id: str, *, v5: bool, keepalive: int, username: str = "", password: bytes = b""
) -> bytes:
    """A CONNECT with a clean session (nothing left on the broker)."""
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password else 0)
    var = _mqtt_str("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
    if v5:
        var += b"\x00"  # no properties
    body = var + _mqtt_str(client_id)
    if username:
        body += _mqtt_str(username)
        if password:
            body += _mqtt_str(password)
    return b"\x10" + _varint(len(body)) + body


def mqtt_probe(
    s: Any, timeout: float, *, password: bytes = b"", tls: ssl.SSLContext | None = None
) -> int:
    """CONNECT to the broker `s` ([mqtt] settings) and return the CONNACK code (0 = accepted).
    Raises OSError/ssl.SSLError/TimeoutError on a network or TLS failure."""
    sock = socket.create_connection((s.host, s.port), timeout=timeout)
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=s.host)
        v5 = str(s.protocol) == "5"
        # Our own client id: reusing the daemon's would make the broker drop the daemon.
        cid = f"loomd-doctor-{os.getpid()}"
        sock.sendall(
            mqtt_connect_packet(cid, v5=v5, keepalive=10, username=s.username, password=password)
        )
        head = _recv(sock, 2)
        if head[0] != 0x20:
            raise OSError(f"not an MQTT CONNACK (first byte 0x{head[0]:02x})")
        length, shift, byte = head[1] & 0x7F, 7, head[1]
        while byte & 0x80:
            byte = _recv(sock, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
        body = _recv(sock, length)
        code = body[1]
        if code == 0:
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        return code
    finally:
        sock.close()


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError("the broker closed the connection")
        out += chunk
    return out


def check_mqtt(ctx: Context) -> Verdict:
    s = ctx.section("mqtt")
    if s is None or not s.enabled:
        return skip("MQTT bridge is disabled ([mqtt] enabled)")
    where = f"{'mqtts' if s.tls else 'mqtt'}://{s.host}:{s.port}"
    cfg = ctx.config_path or "loomd.toml"
    # The files first: a missing password or CA file is not the broker's fault.
    try:
        password = Path(s.password_file).read_bytes().strip() if s.password_file else b""
        tls = None
        if s.tls:
            tls = ssl.create_default_context(cafile=s.ca_file or None)
            if s.cert_file:
                tls.load_cert_chain(s.cert_file, s.key_file or None)
    except PermissionError as exc:
        return fail(f"may not read {exc.filename}", "sudo loomctl doctor (the file is loomd's)")
    except OSError as exc:
        return fail(
            f"{exc.filename or '[mqtt] TLS files'}: {exc.strerror or exc}",
            f"fix [mqtt] password_file/ca_file/cert_file/key_file in {cfg}",
        )
    try:
        code = mqtt_probe(s, ctx.mqtt_timeout_s, password=password, tls=tls)
    except ssl.SSLError as exc:
        return fail(
            f"{where}: TLS failed: {exc.reason or exc}",
            f"check [mqtt] ca_file/cert_file/key_file and host in {cfg}",
        )
    except TimeoutError:
        return fail(
            f"{where}: no answer within {ctx.mqtt_timeout_s:g} s",
            f"check the broker's address ([mqtt] host/port in {cfg}) and firewall",
        )
    except OSError as exc:
        return fail(
            f"{where}: {exc.strerror or exc}",
            f"start the broker (sudo systemctl start mosquitto) or fix [mqtt] host/port in {cfg}",
        )
    if code:
        why = CONNACK_TEXT.get(code, f"code 0x{code:02x}")
        return fail(
            f"{where}: broker refused: {why}",
            f"check [mqtt] username/password_file in {cfg} against the broker",
        )
    return ok(f"{where} accepted a connection" + (f" as {s.username}" if s.username else ""))


# -- cloud key ---------------------------------------------------------------------------


def check_cloud_key(ctx: Context) -> Verdict:
    """Whether the cloud key exists. Never reads it into the output: not the key, not its
    length, not a prefix."""
    llm = ctx.section("llm")
    if llm is None or not llm.cloud.base_url:
        return skip("no cloud configured ([llm.cloud] base_url)")
    c = llm.cloud
    places = []
    cred = ctx.env.get("CREDENTIALS_DIRECTORY")
    if cred and c.key_name:
        places.append(Path(cred) / c.key_name)
    # Outside the unit there is no $CREDENTIALS_DIRECTORY: look where LoadCredential= reads.
    places += [Path("/etc/credstore") / c.key_name, Path("/etc/loomd/credentials") / c.key_name]
    for p in places:
        try:
            if p.is_file() and p.stat().st_size > 0:
                return ok(f"key present in {p} (not shown)")
        except PermissionError:
            return ok(f"{p} exists (not readable by this user, not shown)")
    if c.key_env and ctx.env.get(c.key_env, "").strip():
        return ok(f"key present in ${c.key_env} (not shown)")
    return warn(
        f"no key for {c.base_url}: none in $CREDENTIALS_DIRECTORY/{c.key_name} or ${c.key_env}",
        f"sudo install -D -m 0600 /dev/stdin /etc/credstore/{c.key_name} (paste the key, "
        f"Ctrl-D); add LoadCredential={c.key_name} to the unit (systemctl edit loomd)",
    )


# -- clock -------------------------------------------------------------------------------

STA_UNSYNC = 0x0040
TIME_ERROR = 5
# Above this the kernel's own estimate says the clock is not trustworthy (NTP's 16 s).
MAX_ERROR_US = 16_000_000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def adjtimex() -> tuple[int, int, int] | None:
    """(return state, status bits, maxerror in µs) from the kernel, read-only (modes = 0)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    tx = _Timex()
    state = int(libc.adjtimex(ctypes.byref(tx)))
    if state < 0:
        return None
    return state, int(tx.status), int(tx.maxerror)


def clock_synced(state: int, status: int, maxerror_us: int) -> bool:
    return state != TIME_ERROR and not status & STA_UNSYNC and maxerror_us < MAX_ERROR_US


def check_clock(ctx: Context) -> Verdict:
    fix = "sudo timedatectl set-ntp true (needs systemd-timesyncd or chrony, and network)"
    kernel = adjtimex()
    if kernel is not None:
        state, status, maxerror = kernel
        if clock_synced(state, status, maxerror):
            return ok(f"synchronised (kernel: max error {maxerror / 1000:.0f} ms)")
        # The kernel flag lags behind chrony in some containers: ask timedatectl too.
    answer = _timedatectl()
    if answer == "yes":
        return ok("synchronised (timedatectl)")
    if kernel is None and answer is None:
        return skip("neither adjtimex nor timedatectl answered")
    detail = (
        f" (kernel status 0x{kernel[1]:x}, max error {kernel[2] / 1e6:.1f} s)" if kernel else ""
    )
    return warn(
        "not synchronised" + detail + ": TLS, MQTT certificates and logs need the time", fix
    )


def _timedatectl() -> str | None:
    if not shutil.which("timedatectl"):
        return None
    try:
        r = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


# -- GPU ---------------------------------------------------------------------------------


def check_gpu(ctx: Context) -> Verdict:
    devs = sorted(p.name for p in ctx.hw("dev").glob("nvhost-*"))
    smi = shutil.which("nvidia-smi") if ctx.hw_root == Path("/") else None
    if not devs and not smi:
        return skip("no GPU (no /dev/nvhost-*, no nvidia-smi)")
    found = "Jetson (" + ", ".join(devs[:3]) + ")" if devs else "NVIDIA GPU (nvidia-smi)"
    llm = ctx.section("llm")
    layers = llm.gpu_layers if llm is not None else 0
    if importlib.util.find_spec("llama_cpp") is None:
        return warn(
            f"{found}; llama-cpp-python is not installed",
            "install the CUDA flavour of loomd-llm (docs/design/packaging.md)",
        )
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return warn(
            f"{found}; this llama-cpp-python build has no GPU offload",
            "install the CUDA flavour of loomd-llm (docs/design/packaging.md)",
        )
    if layers == 0:
        return warn(
            f"{found}; the build offloads but [llm] gpu_layers = 0",
            f"set [llm] gpu_layers = 999 in {ctx.config_path or 'loomd.toml'}, then "
            "sudo systemctl restart loomd",
        )
    used = _gpu_in_use(ctx)
    return ok(f"{found}; offload build, gpu_layers = {layers}; {used}")


def _gpu_in_use(ctx: Context) -> str:
    """What the running llm component says about offload (`LlmStatus.gpu_layers`)."""
    try:
        comp = ctx.daemon_status()["components"].get("llm") or {}
    except LoomdError:
        return "daemon not running: cannot tell whether layers are offloaded"
    st = comp.get("status") or {}
    if not st.get("loaded"):
        return "the model is not loaded yet: no layers offloaded"
    layers = int(st.get("gpu_layers") or 0)
    if layers:
        return f"GPU used: {layers} layers offloaded"
    return "GPU not used: all layers on the CPU"


# --- running ----------------------------------------------------------------------------


def check_llm_choice(ctx: Context) -> Verdict:
    """Which catalogue LLM suits this board's RAM: the tool-capable model the catalogue
    recommends from `min_ram_mb` up (the assist's LLM turns), SmolLM2 below. Self-contained:
    RAM from the hardware tree's /proc/meminfo, models from the shipped catalogue."""
    from loomd.models.catalogue import catalogue
    from loomd.router.settings import model_file

    llm = ctx.section("llm")
    if llm is None or not component_on(ctx, "llm")[0]:
        return skip("the llm component is off")
    try:
        text = ctx.hw("/proc/meminfo").read_text()
    except OSError as exc:
        return skip(f"cannot read the RAM size ({exc.strerror})")
    total_mb = next(
        (
            int(line.split()[1]) // 1024
            for line in text.splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    fits = sorted(
        (m for m in catalogue() if m.kind == "llm" and m.tools and 0 < m.min_ram_mb <= total_mb),
        key=lambda m: m.min_ram_mb,
    )
    configured = model_file(llm.model, ctx.models_dir)
    name = configured.name if configured is not None else "none"
    if not fits:
        return ok(f"{total_mb} MB RAM: {name} (a tool-capable model needs more RAM)")
    best = fits[-1]
    paths = {ctx.models_dir / f.path for m in fits for f in m.files}
    if configured is not None and configured in paths:
        return ok(f"{total_mb} MB RAM: {name}, a tool-capable model")
    (gguf,) = (f.path for f in best.files)
    return warn(
        f"{total_mb} MB RAM, model {name}: {best.id} ({best.bytes / GB:.1f} GB, tool calls) "
        f"fits this board (from {best.min_ram_mb} MB) and understands commands far better",
        f'loomctl models fetch {best.id}; then [llm] model = "{gguf}" in '
        f"{ctx.config_path or 'loomd.toml'}, and restart loomd",
    )


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Context], Verdict]
    timeout_s: float = 5.0


CHECKS: tuple[Check, ...] = (
    Check("config", check_config),
    Check("daemon", check_daemon, 6.0),  # daemon_timeout_s (3 s) and a margin
    Check("group", check_group),
    Check("socket", check_socket),
    Check("audio", check_audio, 10.0),
    Check("models", check_models, 120.0),  # sha256 of a few hundred MB on a Pi
    Check("memory", check_memory, 6.0),  # may wait for the daemon's status
    Check("llm model", check_llm_choice),
    Check("temperature", check_temperature),
    Check("throttling", check_throttling),
    Check("disk", check_disk),
    Check("mqtt", check_mqtt),
    Check("cloud key", check_cloud_key),
    Check("clock", check_clock),
    Check("gpu", check_gpu, 15.0),  # importing llama_cpp loads its library
)


def run_checks(ctx: Context, checks: tuple[Check, ...] | list[Check] = CHECKS) -> list[Result]:
    """Every check at once, each in its own daemon thread with its deadline: a hung check
    cannot hold the exit, a crash becomes its own `fail` line."""
    boxes: list[list[Verdict]] = [[] for _ in checks]

    def one(i: int, c: Check) -> None:
        try:
            boxes[i].append(c.fn(ctx))
        except Exception as exc:  # a crashing check is a finding, not the end of the report
            log.debug("check %s crashed", c.name, exc_info=True)
            boxes[i].append(
                fail(
                    f"check crashed: {type(exc).__name__}: {exc}",
                    "report this: loomctl doctor --json output and the traceback "
                    "from `python -m loomd.doctor --debug`",
                )
            )

    threads = [
        threading.Thread(target=one, args=(i, c), name=f"doctor-{c.name}", daemon=True)
        for i, c in enumerate(checks)
    ]
    for t in threads:
        t.start()
    start = time.monotonic()
    results = []
    for i, (c, t) in enumerate(zip(checks, threads, strict=True)):
        t.join(max(0.0, start + c.timeout_s - time.monotonic()))
        v = (
            boxes[i][0]
            if boxes[i]
            else fail(f"no answer within {c.timeout_s:g} s", "run it again; if it hangs, report it")
        )
        results.append(Result(c.name, v.status, v.finding, v.fix))
    return results


MARK = {Status.OK: "ok  ", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}


def format_results(results: list[Result]) -> str:
    width = max(len(r.check) for r in results)
    lines = []
    for r in results:
        lines.append(f"{MARK[r.status]}  {r.check:<{width}}  {r.finding}")
        if r.fix and r.status in (Status.WARN, Status.FAIL):
            lines.append(f"      {'':<{width}}  fix: {r.fix}")
    fails = sum(r.status == Status.FAIL for r in results)
    warns = sum(r.status == Status.WARN for r in results)
    lines.append(
        f"{fails} failed, {warns} warning(s), {sum(r.status == Status.OK for r in results)} ok"
    )
    return "\n".join(lines)


def exit_code(results: list[Result]) -> int:
    return 1 if any(r.status == Status.FAIL for r in results) else 0


# --- loomctl doctor ---------------------------------------------------------------------


def add_parser(cmds: Any) -> None:
    """`loomctl doctor`: registered from loomd/ctl.py; runs locally (`local=True`)."""
    p = cmds.add_parser(
        "doctor",
        help="check this board: daemon, permissions, audio, models, "
        "memory, temperature, disk, MQTT, cloud key, clock, GPU",
        description="One line per check with its fix. Runs without the daemon (it is one "
        "of the checks). Exit 1 when a check fails; warnings do not fail.",
    )
    p.add_argument("--json", action="store_true", help="the checks as a JSON list")
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="the daemon's configuration (default: $LOOMD_CONFIG, else /etc/loomd/loomd.toml)",
    )
    p.set_defaults(func=main_args, local=True)


def main_args(args: argparse.Namespace) -> int:
    ctx = load_context(args.config, getattr(args, "socket", None))
    if getattr(args, "timeout", None):
        ctx.daemon_timeout_s = min(float(args.timeout), 3.0)
    results = run_checks(ctx)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        print(format_results(results))
    return exit_code(results)


def main(argv: list[str] | None = None) -> int:
    """`python -m loomd.doctor`: the same as `loomctl doctor`, plus --debug (tracebacks)."""
    p = argparse.ArgumentParser(prog="python -m loomd.doctor")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", type=Path)
    p.add_argument("--socket")
    p.add_argument("--debug", action="store_true", help="log each crashing check's traceback")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    return main_args(args)


if __name__ == "__main__":
    sys.exit(main())
