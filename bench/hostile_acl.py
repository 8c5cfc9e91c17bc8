"""`acl_denied` for bench/hostile.py: a local client that no ACL rule names (it runs as
`nobody`) tries 1,000 forbidden publishes, subscribes and capability calls each. All must be
refused; none delivered, none run; the witness (another client) must not notice."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534

PLUGIN = """
from loomd.agents import capability

RUNS = {"n": 0}


@capability("vault.open", sensitive=True)
def vault_open() -> str:
    RUNS["n"] += 1
    return "open"


@capability("vault.runs")
def vault_runs() -> int:
    return RUNS["n"]
"""

# Rules exist (so default-deny holds), none names the attacker.
RULES = """
[[acl]]
identity = ["group:loomd-admins"]
publish = ["#"]
subscribe = ["#"]
call = ["*"]
sensitive = true
"""

ATTACKER = """
import sys
sys.path.insert(0, {repo!r})
from bench.hostile_acl import attack_as_nobody
attack_as_nobody(sys.argv[1], int(sys.argv[2]))
"""


def acl_daemon(root: Path) -> Any:
    from tests.conftest import LoomdProcess

    os.chmod(root, 0o755)
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "vault.py").write_text(PLUGIN)
    toml = (
        '[bus]\nsocket_mode = "0666"\n'
        f'[agents]\ndirs = ["{plugins}"]\nentry_points = false\n{RULES}'
    )
    return LoomdProcess(root, toml)


def attack_as_nobody(endpoint: str, n: int) -> None:
    """In a child: import everything, become nobody (the kernel records it at connect),
    then try `n` of each forbidden thing; print the counts as one JSON line."""
    import encodings.idna  # noqa: F401

    import uvloop

    from loomd.errors import RemoteError
    from loomd.messages import CapInvoke, CapResult
    from loomd.sdk import connect

    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)

    async def main() -> dict[str, int]:
        out = {"publish_refused": 0, "subscribe_refused": 0, "call_refused": 0, "accepted": 0}
        async with connect(endpoint, name="acl-attacker") as bus:

            async def publish(i: int) -> None:
                try:
                    await bus.publish(f"action.acl.{i % 7}", {"i": i})
                    out["accepted"] += 1
                except RemoteError as exc:
                    out["publish_refused"] += exc.code == "forbidden"

            async def subscribe(i: int) -> None:
                try:
                    sub = bus.subscribe(f"action.acl.{i % 7}" if i % 2 else "#")
                    await sub.ready()
                    out["accepted"] += 1
                except RemoteError as exc:
                    out["subscribe_refused"] += exc.code == "forbidden"

            async def call(i: int) -> None:
                body = CapInvoke("vault.open").to_payload()
                ev = await bus.request("caps.invoke", body, type=CapInvoke.TYPE, timeout=30)
                r = CapResult.from_payload(ev.payload)
                if r.code == "forbidden":
                    out["call_refused"] += 1
                else:
                    out["accepted"] += 1

            # 20 at a time: the daemon drops control replies to a client whose pipe (100
            # messages) is full, and 50 refused subscribes at once lost some (a known gap)
            for step in (publish, subscribe, call):
                for start in range(0, n, 20):
                    await asyncio.gather(*(step(i) for i in range(start, min(n, start + 20))))
        return out

    print(json.dumps(uvloop.run(main())))


async def acl_denied(d: Any, q: bool) -> str:
    from loomd.messages import CapInvoke, CapResult
    from loomd.sdk import connect

    n = 1000
    os.chmod(d.root / "run", 0o755)
    async with connect(d.endpoint, name="acl-watch") as root:
        for _ in range(100):  # the plugin registers just after READY
            ev = await root.request("caps.invoke", CapInvoke("vault.runs").to_payload())
            if CapResult.from_payload(ev.payload).ok:
                break
            await asyncio.sleep(0.1)
        watch = root.subscribe("action.acl.#", "reliable")
        await watch.ready()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ATTACKER.format(repo=str(REPO)), d.endpoint, str(n),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO),
        )  # fmt: skip
        out_b, err_b = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"attacker failed: {err_b.decode()[-500:]}")
        got = json.loads(out_b.decode().strip().splitlines()[-1])
        ev = await root.request("caps.invoke", CapInvoke("vault.runs").to_payload())
        ran = CapResult.from_payload(ev.payload).value
        await root.publish("action.acl.marker", {"end": True})
        first = await watch.get(10)
        delivered = 0 if first.topic == "action.acl.marker" else 1
    from bench import hostile

    hostile.EXTRA["acl_denied"] = {**got, "delivered": delivered, "ran": ran, "n_each": n}
    refused = got["publish_refused"] + got["subscribe_refused"] + got["call_refused"]
    return (
        f"{refused}/{3 * n} refused (forbidden), {got['accepted']} accepted, "
        f"{delivered} delivered, {ran} ran"
    )
