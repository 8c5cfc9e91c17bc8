"""The examples run: the planner/researcher/writer trio as plugins plus an SDK critic, the
contract net (three bidders, one award), and a capability called from `loomctl call`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import uvloop

from loomd.sdk import Client
from tests.conftest import LoomdProcess

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def test_examples(short_tmp: Path) -> None:
    d = LoomdProcess(
        short_tmp, f'[agents]\ndirs = ["{EXAMPLES / "agents"}"]\nentry_points = false\n'
    )
    d.start()
    env = {**os.environ, "LOOMD_SOCKET": str(d.socket)}
    critic = subprocess.Popen([sys.executable, str(EXAMPLES / "sdk_critic.py")], env=env)
    try:

        async def trio() -> None:
            async with Client(d.endpoint, name="t") as c:
                async with asyncio.timeout(20):
                    while not any(  # noqa: ASYNC110 - another process: poll its registration
                        x["name"] == "critic.review"
                        for x in (await c.call("agents.caps"))["capabilities"]
                    ):
                        await asyncio.sleep(0.05)
                answer = (await c.request("team.goal", "solar", timeout=10)).payload
                assert answer["text"].startswith("# Solar\n- panels make")
                assert answer["review"] == {"score": 2, "note": "good"}
                assert answer["answered"] == 1
                state = await c.call("state.get", args=["done"], ns="agent.planner")
                assert state["found"] and state["value"] == 1

        uvloop.run(trio())

        def loomctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "loomd.ctl", *args],
                capture_output=True, text=True, timeout=30, env=env,
            )  # fmt: skip

        r = loomctl("call", "lights.set", '{"level": 30}')
        assert r.returncode == 0, r.stderr
        reply = "The living lights are at 30 percent"
        assert json.loads(r.stdout) == {"living": 30, "reply": reply}
        r = loomctl("call", "lights.set@1", '{"on": true}')
        assert json.loads(r.stdout) == {"living": 100, "kitchen": 100}, r.stderr
        r = loomctl("call", "research.find", '{"topic": "lava"}')
        assert r.returncode == 1 and "capability_error" in r.stderr and "nothing known" in r.stderr
        caps = loomctl("caps")
        assert "lights.set@2" in caps.stdout and '"enum": ["living", "kitchen"]' in caps.stdout

        m = subprocess.run(
            [sys.executable, str(EXAMPLES / "contract_net_manager.py"), "12"],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert m.returncode == 0, m.stderr
        out = json.loads(m.stdout)
        assert out["winner"] == "inkjet"
        assert out["result"] == {"printed": 12, "by": "inkjet"}
        assert out["bids"] == {"laser": 0.3, "inkjet": 0.8, "plotter": 0.5}
    finally:
        critic.terminate()
        critic.wait(10)
        d.close()
