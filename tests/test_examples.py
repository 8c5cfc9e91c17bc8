"""The README's SDK example runs against a real daemon."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import uvloop

from loomd.sdk import connect
from tests.conftest import LoomdProcess

ROOT = Path(__file__).parent.parent


def test_echo_agent_example_answers_requests(daemon: LoomdProcess) -> None:
    env = {**os.environ, "LOOMD_SOCKET": str(daemon.socket)}
    agent = subprocess.Popen([sys.executable, str(ROOT / "examples" / "echo_agent.py")], env=env)

    async def main() -> None:
        async with connect(daemon.endpoint) as bus:
            async with asyncio.timeout(20):
                while True:  # until the agent has subscribed
                    st = (await bus.status())["status"]["components"]["bus"]["status"]
                    if any(s["pattern"] == "agent.echo.inbox" for s in st["subscriptions"]):
                        break
                    await asyncio.sleep(0.05)  # another process: status is the only signal
            reply = await bus.request("agent.echo.inbox", {"hi": 1}, timeout=5)
            assert reply.payload == {"echo": {"hi": 1}}

    try:
        uvloop.run(main())
    finally:
        agent.terminate()
        agent.wait(10)
