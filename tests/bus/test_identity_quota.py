"""Quotas per identity, not per client (issue 19, hostile gaps): many clients of one uid
hold no more subscriptions than one identity may, and no more sessions than its cap."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from loomd.sdk import connect
from tests.bus.test_acl_identities import _as_nobody
from tests.conftest import LoomdProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs a client as another uid")

HOARDER = """
import asyncio, json, sys
from loomd.errors import LoomdError, RemoteError
from loomd.sdk import connect
from tests.bus.test_acl_identities import drop_to_nobody

drop_to_nobody()

async def main():
    out = {"sessions": 0, "refused_session": 0, "subs": 0, "refused_subs": 0}
    clients = []
    for i in range(4):
        c = connect(sys.argv[1], name=f"hoard{i}", timeout=3)
        try:
            await c.__aenter__()
            clients.append(c)
            out["sessions"] += 1
        except LoomdError as exc:
            out["refused_session"] += 1
            out["why"] = str(exc)
    for c in clients:
        for j in range(60):
            try:
                await c.subscribe(f"demo.{j}.#").ready()
                out["subs"] += 1
            except RemoteError as exc:
                out["refused_subs"] += exc.code == "quota"
    for c in clients:
        await c.__aexit__(None, None, None)
    print(json.dumps(out))

asyncio.run(main())
"""


def _nobody_runs(d: LoomdProcess, script: Path, code: str) -> dict[str, Any]:
    """`code` run as `nobody` against `d`: the JSON it prints last."""
    os.chmod(d.root / "run", 0o755)
    script.write_text(code)
    r = _as_nobody(sys.executable, str(script), d.endpoint)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def test_many_clients_of_one_identity_share_its_quotas(short_tmp: Path) -> None:
    os.chmod(short_tmp, 0o755)
    d = LoomdProcess(
        short_tmp,
        '[bus]\nsocket_mode = "0666"\nmax_clients_per_uid = 3\n'
        "max_subscriptions_per_identity = 100\n[home]\nenabled = false\n",
    )
    d.start()
    try:
        out = _nobody_runs(d, short_tmp / "hoarder.py", HOARDER)
        assert out["sessions"] == 3 and out["refused_session"] == 1, out
        assert out["subs"] == 100 and out["refused_subs"] == 3 * 60 - 100, out
    finally:
        d.close()


FILLER = """
import asyncio, json, sys
from loomd.errors import RemoteError
from loomd.sdk import connect
from tests.bus.test_acl_identities import drop_to_nobody

drop_to_nobody()

async def main():
    out = {"stored": 0, "refused": 0, "why": ""}
    blob = "x" * (256 * 1024)
    for c in range(3):  # three clients, namespace after namespace
        async with connect(sys.argv[1], name=f"fill{c}", timeout=5) as bus:
            for ns in range(4):
                try:
                    await bus.call("state.put", args=["k", blob], ns=f"fill.{c}.{ns}")
                    out["stored"] += 1
                except RemoteError as exc:
                    out["refused"] += exc.code == "quota"
                    out["why"] = str(exc)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_state_total_is_counted_per_identity(short_tmp: Path) -> None:
    """Namespace quotas alone let one identity fill namespace after namespace: its writes
    across all of them are held to state.identity_max_mb; root is not limited."""
    os.chmod(short_tmp, 0o755)
    d = LoomdProcess(
        short_tmp,
        '[bus]\nsocket_mode = "0666"\n[state]\nidentity_max_mb = 2\n[home]\nenabled = false\n',
    )
    d.start()
    try:
        out = _nobody_runs(d, short_tmp / "filler.py", FILLER)
        # 2 MiB holds seven 256 KiB values with their keys, not eight
        assert out["stored"] == 7 and out["refused"] == 12 - 7, out
        assert "state.identity_max_mb" in out["why"] and "65534" in out["why"], out

        async def as_root() -> None:  # superusers are not limited: 3 MiB more
            async with connect(d.endpoint) as bus:
                for i in range(4):
                    await bus.call("state.put", args=[f"k{i}", "y" * (768 << 10)], ns="root.big")

        asyncio.run(as_root())
    finally:
        d.close()
