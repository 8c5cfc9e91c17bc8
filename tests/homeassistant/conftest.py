"""A real Home Assistant (scripts/ha-testbed) for the interop tests, one per session, and
a small client of its REST and WebSocket APIs (aiohttp), the way a user's tools reach it.

The testbed is built once and cached (${LOOMD_CACHE:-~/.cache/loomd-build}/ha); these tests
skip only where it cannot be had: not root and no cached tree, or the build failed for
want of the package registries. LOOMD_HA_TESTBED=<dir>/testbed.json reuses a running one
(`scripts/ha-testbed up --dir <dir>` by hand, for a quick edit-test loop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loomd.host import Host
from loomd.settings import load_config
from tests.audio.conftest import command_clip, speech_dir  # noqa: F401 - shared fixtures
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "scripts" / "ha-testbed"
CACHE = Path(os.environ.get("LOOMD_CACHE", Path.home() / ".cache" / "loomd-build")) / "ha"


@dataclass(frozen=True)
class HaTestbed:
    url: str
    token: str
    light: str
    log: Path


@pytest.fixture(scope="session")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaTestbed]:
    reuse = os.environ.get("LOOMD_HA_TESTBED")
    if reuse:
        info = json.loads(Path(reuse).read_text())
        yield HaTestbed(info["url"], info["token"], info["light"], Path(info["log"]))
        return
    built = (CACHE / "rootfs" / ".loomd-stage-reqs").exists()
    if not built and os.geteuid() != 0:
        pytest.skip("the Home Assistant testbed needs root to build (scripts/ha-testbed build)")
    run = tmp_path_factory.mktemp("ha")
    p = subprocess.run([sys.executable, str(TESTBED), "up", "--dir", str(run)],
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    if p.returncode != 0:
        if not built and not _registries_reachable():
            pytest.skip(f"no cached HA testbed and no package registry to build it from:\n"
                        f"{p.stderr[-1500:]}")  # fmt: skip
        raise AssertionError(f"ha-testbed up failed:\n{p.stderr[-4000:]}")
    info = json.loads(p.stdout.splitlines()[-1])
    try:
        yield HaTestbed(info["url"], info["token"], info["light"], Path(info["log"]))
    finally:
        subprocess.run([sys.executable, str(TESTBED), "down", "--dir", str(run)], timeout=120)


def _registries_reachable() -> bool:
    """The Debian archive and PyPI answer (what a cold build needs)."""
    import urllib.error
    import urllib.request

    for url in ("http://deb.debian.org/debian/dists/forky/Release", "https://pypi.org/simple/pip/"):
        try:
            urllib.request.urlopen(url, timeout=5).close()
        except urllib.error.HTTPError:
            pass  # it answered
        except OSError:
            return False
    return True


class HaApi:
    """REST + one WebSocket connection to HA."""

    def __init__(self, tb: HaTestbed) -> None:
        self.tb = tb
        self.headers = {"Authorization": f"Bearer {tb.token}"}
        self._n = 0
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> HaApi:
        import aiohttp

        self.http = aiohttp.ClientSession(headers=self.headers)
        self.ws = await self.http.ws_connect(self.tb.url + "/api/websocket")
        assert (await self.ws.receive_json())["type"] == "auth_required"
        await self.ws.send_json({"type": "auth", "access_token": self.tb.token})
        assert (await self.ws.receive_json())["type"] == "auth_ok"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()

    async def get(self, path: str) -> Any:
        async with self.http.get(self.tb.url + path) as r:
            assert r.status == 200, (path, r.status, await r.text())
            return await r.json()

    async def post(self, path: str, body: Any = None) -> Any:
        async with self.http.post(self.tb.url + path, json=body) as r:
            assert r.status in (200, 201), (path, r.status, await r.text())
            return await r.json()

    async def delete(self, path: str) -> None:
        async with self.http.delete(self.tb.url + path) as r:
            assert r.status == 200, (path, r.status, await r.text())

    async def call(self, msg: dict[str, Any], timeout: float = 30.0) -> Any:
        self._n += 1
        n = self._n
        await self.ws.send_json({"id": n, **msg})
        async with asyncio.timeout(timeout):
            while True:
                res = await self.ws.receive_json()
                if res.get("type") == "event":
                    self.events.put_nowait(res["event"])
                elif res.get("id") == n:
                    if not res.get("success", True):
                        raise AssertionError(f"{msg['type']}: {res.get('error')}")
                    return res.get("result")

    async def flow(self, handler: str, *steps: dict[str, Any]) -> dict[str, Any]:
        """A config flow through the REST API: start, then submit each step's form."""
        res = await self.post("/api/config/config_entries/flow", {"handler": handler})
        for step in steps:
            if res.get("type") != "form":
                break
            res = await self.post(f"/api/config/config_entries/flow/{res['flow_id']}", step)
        return res  # type: ignore[no-any-return]

    async def entries(self, domain: str) -> list[dict[str, Any]]:
        return await self.get(f"/api/config/config_entries/entry?domain={domain}")  # type: ignore[no-any-return]

    async def remove_entries(self, domain: str, title: str = "") -> None:
        for e in await self.entries(domain):
            if not title or e["title"] == title:
                await self.delete(f"/api/config/config_entries/entry/{e['entry_id']}")

    async def states(self, domain: str = "") -> list[dict[str, Any]]:
        all_ = await self.get("/api/states")
        return [s for s in all_ if not domain or s["entity_id"].startswith(domain + ".")]

    async def wait_state(
        self, pred: Any, domain: str = "", timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """States of `domain` once `pred(states)` holds (polled, with a deadline)."""
        end = time.monotonic() + timeout
        while True:
            got = await self.states(domain)
            if pred(got):
                return got
            if time.monotonic() > end:
                raise AssertionError(f"HA never got there; {domain} states: {got}")
            await asyncio.sleep(0.2)

    async def device_entities(
        self, device_name: str, want: tuple[str, ...] = ("assist_satellite",), timeout: float = 30
    ) -> tuple[dict[str, Any], list[str]]:
        """The device and its entity ids, once it has entities of every domain in `want`
        (HA sets a config entry up after its flow has ended)."""
        end = time.monotonic() + timeout
        while True:
            devices = await self.call({"type": "config/device_registry/list"})
            found = [d for d in devices if device_name in (d["name"], d["name_by_user"])]
            ids: list[str] = []
            if found:
                ents = await self.call({"type": "config/entity_registry/list"})
                ids = sorted(e["entity_id"] for e in ents if e["device_id"] == found[0]["id"])
                if all(any(i.startswith(w + ".") for i in ids) for w in want):
                    return found[0], ids
            if time.monotonic() > end:
                names = [d["name"] for d in devices]
                raise AssertionError(f"no device {device_name!r} with {want} in {names}: {ids}")
            await asyncio.sleep(0.2)


def loomd_toml(root: Path, body: str, device_id: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "loomd.toml"
    path.write_text(
        f'[daemon]\ndevice_id = "{device_id}"\n'
        f'[paths]\nruntime_dir = "{root}/run"\nstate_dir = "{root}/state"\n'
        f'cache_dir = "{root}/cache"\n[metrics]\nenabled = false\n' + body
    )
    return path


def ha_section(port: int, key: str = "", **extra: str) -> str:
    lines = ["[homeassistant]", "enabled = true", f"port = {port}",
             'mdns_interfaces = ["127.0.0.1"]']  # fmt: skip
    if key:
        lines.append(f'encryption_key = "{key}"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def voice_section(models: Path, wyoming_port: int, **extra: str) -> str:
    """`[voice]` on the bus source and sink, with Wyoming; `extra`: more `[voice]` keys."""
    more = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return (
        f'[voice]\nenabled = true\nmodels_dir = "{models}"\nsource = "bus"\nsink = "bus"\n'
        f"{more}[voice.wyoming]\nenabled = true\nport = {wyoming_port}\n"
    )


@contextlib.asynccontextmanager
async def board(
    root: Path, body: str, device_id: str, names: tuple[str, ...]
) -> AsyncIterator[Host]:
    settings = load_config(loomd_toml(root, body, device_id))
    async with Host(settings, names=list(names)) as host:
        yield host


def component(host: Host, name: str) -> Any:
    inst = host.slots[name].instance
    assert inst is not None and host.slots[name].state == "running", host.slots[name].reason
    return inst


async def adopt(api: HaApi, port: int, key: str = "") -> dict[str, Any]:
    """HA's ESPHome integration adopts the board at 127.0.0.1:port (the user flow)."""
    steps: list[dict[str, Any]] = [{"host": "127.0.0.1", "port": port}]
    if key:
        steps.append({"noise_psk": key})
    res = await api.flow("esphome", *steps)
    assert res["type"] == "create_entry", res
    return res


__all__ = ["HaApi", "HaTestbed", "adopt", "board", "component", "free_port", "ha_section",
           "voice_section"]  # fmt: skip
