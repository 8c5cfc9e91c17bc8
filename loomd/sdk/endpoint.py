"""Where the daemon listens, as a client finds it: `$LOOMD_SOCKET`, the packaged socket,
else the per-user one; and a quick check that something answers there."""

from __future__ import annotations

import os
from pathlib import Path

from loomd.config import resolve_dir
from loomd.errors import NotRunning, PermissionDenied

__all__ = ["DEFAULT_SOCKET", "check_reachable", "default_endpoint", "to_endpoint"]

DEFAULT_SOCKET = "/run/loomd/bus.sock"


def default_endpoint() -> str:
    """$LOOMD_SOCKET, else the packaged socket if present, else the per-user one."""
    env = os.environ.get("LOOMD_SOCKET")
    if env:
        return env
    if _exists(Path(DEFAULT_SOCKET)):
        return DEFAULT_SOCKET
    return str(resolve_dir("runtime") / "bus.sock")  # the daemon's own rule for its default


def _exists(path: Path) -> bool:
    """True also when we may not look: /run/loomd is 0750, so outsiders get EACCES."""
    try:
        return path.exists()
    except PermissionError:
        return True


def to_endpoint(where: str) -> str:
    return where if "://" in where else f"ipc://{where}"


def check_reachable(endpoint: str) -> None:
    """Fail fast with one clear line when an ipc socket is missing or not ours to use."""
    if not endpoint.startswith("ipc://"):
        return
    path = Path(endpoint[len("ipc://") :])
    if not _exists(path):
        raise NotRunning(f"loomd is not running (no socket at {path})")
    if not os.access(path, os.R_OK | os.W_OK):
        raise PermissionDenied(
            f"permission denied on {path}: add your user to the 'loomd' group "
            f"(sudo adduser $USER loomd, then log in again)"
        )
