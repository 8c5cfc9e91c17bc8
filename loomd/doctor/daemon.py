"""The daemon itself: its configuration, whether it runs and answers, the group and the
socket a user needs to talk to it."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from loomd.doctor.context import (
    Context,
    Verdict,
    config_arg,
    duration_text,
    fail,
    ok,
    restart_fix,
    skip,
    start_fix,
    unit_installed,
    warn,
)
from loomd.errors import LoomdError, NotRunning, PermissionDenied

# --- checks -----------------------------------------------------------------------------


def check_config(ctx: Context) -> Verdict:
    if ctx.config_denied:
        return fail(
            f"may not read {ctx.config_path}: the other checks assume the defaults",
            f"sudo adduser $USER {ctx.group}, then log out and in again (or: sudo loomctl doctor)",
        )
    if ctx.config_error:
        return fail(
            ctx.config_error, f"edit {ctx.config_path}, then: loomd --check{config_arg(ctx)}"
        )
    return ok(str(ctx.config_path) if ctx.config_path else "no file: built-in defaults")


def check_daemon(ctx: Context) -> Verdict:
    try:
        st = ctx.daemon_status()
    except NotRunning:
        return fail(f"not running (nothing answers on {ctx.endpoint})", start_fix(ctx))
    except PermissionDenied as exc:
        return fail(
            f"may not connect: {exc}", f"sudo adduser $USER {ctx.group}, then log out and in again"
        )
    except LoomdError as exc:  # it answered, but not as a daemon should (wedged, garbled)
        return fail(f"{ctx.endpoint}: {exc}", restart_fix(ctx))
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
        f"loomd {d['version']} up {duration_text(d['uptime_s'])}, "
        f"{len(running)}/{len(comps)} components running"
    )
    logs = "journalctl -u loomd -e" if (unit_installed() or ctx.packaged) else "the daemon's log"
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
            if unit_installed() or ctx.packaged
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
