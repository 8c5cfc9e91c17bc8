"""In-process daemon (a real `Host` with state, bus and agents) for the agents tests."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from loomd.agents.component import AgentsComponent
from loomd.host import Host
from loomd.settings import load_config
from tests.conftest import eventually


def settings_for(root: Path, extra: dict[str, Any] | None = None, **agents: Any) -> Any:
    overrides: dict[str, Any] = {
        "paths.runtime_dir": str(root / "run"),
        "paths.state_dir": str(root / "state"),
        "paths.cache_dir": str(root / "cache"),
        "metrics.enabled": False,
        "agents.dirs": [str(root / "plugins")],
        "agents.entry_points": False,
        "agents.reload_interval_s": 0.1,
    }
    overrides.update({f"agents.{k}": v for k, v in agents.items()})
    overrides.update(extra or {})
    return load_config(None, overrides=overrides)


@contextlib.asynccontextmanager
async def running(
    root: Path, extra: dict[str, Any] | None = None, **agents: Any
) -> AsyncIterator[tuple[Host, AgentsComponent]]:
    """state, bus and agents (and mcp, when `extra` configures it) in this process."""
    (root / "plugins").mkdir(exist_ok=True)
    names = ["state", "bus", "agents"] + (
        ["mcp"] if extra and any(k.startswith("mcp.") for k in extra) else []
    )
    async with Host(settings_for(root, extra, **agents), names=names) as host:
        comp = host.get("agents")
        assert isinstance(comp, AgentsComponent), host.status()
        yield host, comp


def write_plugin(root: Path, name: str, code: str) -> Path:
    path = root / "plugins" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(textwrap.dedent(code))
    tmp.rename(path)  # atomic, as an editor or a package manager writes
    return path


async def wait_until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll an in-process condition with a deadline (the state lives in this process)."""
    return await eventually(pred, timeout, what or str(pred))


def agent_state(comp: AgentsComponent, aid: str) -> str:
    for v in comp._views():
        if v["id"] == aid:
            return str(v["state"])
    return "absent"
