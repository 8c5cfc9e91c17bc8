"""Router fixtures: a real Host (state, bus, llm) in process, and the test models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from loomd.host import Host
from loomd.settings import load_config
from tests.testmodels import SMOLLM, TINY, require

# The tool the router tests offer: a light switch (its JSON schema, and as a chat tool).
SWITCH_SCHEMA = {
    "type": "object",
    "properties": {"on": {"type": "boolean"}},
    "required": ["on"],
    "additionalProperties": False,
}
SWITCH = {"name": "switch", "description": "Switch the light", "parameters": SWITCH_SCHEMA}


@pytest.fixture
def tiny() -> Path:
    """The 0.5 MB random-weight llama: fast load and streaming tests (gibberish output)."""
    require(TINY)
    return TINY


@pytest.fixture
def smol() -> Path:
    require(SMOLLM)
    return SMOLLM


HostFactory = Callable[..., Any]


@pytest.fixture
def llm_host(tmp_path: Path) -> HostFactory:
    """`async with llm_host(model=..., **llm_options) as host:` a Host with state, bus, llm."""

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra llm)")

    @asynccontextmanager
    async def make(extra: str = "", **options: Any) -> AsyncIterator[Host]:
        lines = ["[llm]", "enabled = true"]
        for key, value in options.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str | Path):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value}")
        cfg = tmp_path / "loomd.toml"
        cfg.write_text(
            f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n'
            f'cache_dir = "{tmp_path}/cache"\n' + "\n".join(lines) + "\n" + extra
        )
        settings = load_config(cfg)
        async with Host(settings, names=["state", "bus", "llm"]) as host:
            yield host

    return make


def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run `coro` on a fresh loop with a deadline (the suite has no async plugin)."""
    import asyncio

    async def guarded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())
