"""`isolation = "process"`: the same plugin in a supervised child over the SDK.

The child (`python -m loomd.agents.process ENDPOINT ID FILE|-` + the agent's settings table as
JSON on argv) loads the plugin as the daemon would, builds its settings with the same
validation, and runs it with `run_agent` (same runtime, same ctx, capabilities on a lease).
The parent restarts a child that exits, with the same backoff and crash limit as an
in-process agent; `memory_mb` caps the child's address space (RLIMIT_AS), so a leak ends in
a `MemoryError` in the child, not in the daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from loomd.agents.broker import Report
from loomd.agents.plugins import PluginDef
from loomd.agents.runtime import CrashWindow, Policy
from loomd.messages import ErrorCode

__all__ = ["ProcessRunner"]

log = logging.getLogger("loomd.agents.process")


class ProcessRunner:
    def __init__(
        self,
        pdef: PluginDef,
        endpoint: str,
        table: Any,
        memory_mb: int,
        *,
        policy: Policy,
        report: Report,
    ) -> None:
        self.pdef = pdef
        self.id = pdef.id
        self.source = pdef.source
        self.endpoint = endpoint
        self.table = dict(table)
        self.memory_mb = memory_mb
        self.policy = policy
        self._report = report
        self.state = "created"
        self.restarts = 0
        self.errors = 0
        self.events = 0
        self.last_error = ""
        self.reload_error = ""
        self.pid = 0
        self.task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._crashes = CrashWindow(policy)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": f"{self.source} (process {self.pid or '-'})",
            "state": self.state,
            "topics": [],
            "capabilities": [],
            "restarts": self.restarts,
            "errors": self.errors,
            "events": self.events,
            "last_error": self.reload_error or self.last_error,
            "max_step_ms": 0.0,
        }

    def _limit(self) -> None:  # runs in the child between fork and exec
        if self.memory_mb:
            size = self.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    async def run(self) -> None:
        where = str(self.pdef.path) if self.pdef.path else "-"
        while not self._stopping:
            began = time.monotonic()
            self.state = "starting"
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "loomd.agents.process",
                self.endpoint, self.id, where, json.dumps(self.table),
                preexec_fn=self._limit, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
            self.pid = self._proc.pid
            self.state = "running"
            code = await self._proc.wait()
            self.pid = 0
            if self._stopping:
                break
            self.last_error = f"process exited with {code}"
            self._report(
                ErrorCode.AGENT_CRASHED, f"agent {self.id}: {self.last_error}", {"agent": self.id}
            )
            if self._crashes.crashed():
                self.state = "failed"
                self._report(
                    ErrorCode.AGENT_FAILED,
                    f"agent {self.id} failed: its process exited {len(self._crashes.times)} times",
                    {"agent": self.id},
                )
                return
            self.state = "backoff"
            self.restarts += 1
            await self._crashes.backoff(began)
        self.state = "stopped"

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.state != "failed":
            self.state = "stopped"


def _child(endpoint: str, agent_id: str, where: str, table_json: str) -> None:
    import signal

    import uvloop

    from loomd.agents.plugins import agent_settings, entry_point_plugins, load_file
    from loomd.agents.sdk import run_agent
    from loomd.sdk import Client

    logging.basicConfig(level=logging.INFO, format=f"agent {agent_id}: %(message)s")
    defs = load_file(Path(where)) if where != "-" else entry_point_plugins()[0]
    pdef = next((d for d in defs if d.id == agent_id), None)
    if pdef is None:
        sys.exit(f"no agent {agent_id!r} in {where}")
    _, settings = agent_settings(pdef, json.loads(table_json))
    agent = pdef.make(settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        async with Client(endpoint, name=agent_id) as client:
            await run_agent(client, agent, settings=settings)

    try:
        uvloop.run(main())
    except asyncio.CancelledError:
        pass


if __name__ == "__main__":
    _child(*sys.argv[1:5])
