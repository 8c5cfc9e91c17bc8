"""Home Assistant's ESPHome integration adopts the board (a real HA, its config flow over
REST): plaintext and Noise, the device and its entities, HA's commands reaching the board,
and the board on mDNS (resolved with python-zeroconf, on loopback only)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.homeassistant.conftest import (
    HaApi,
    HaTestbed,
    adopt,
    board,
    component,
    free_port,
    ha_section,
)

# The first test to ask for `ha` pays a cold testbed build (~4 min) when none is cached.
pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(900)]
CORE = ("state", "bus", "homeassistant")


def test_ha_adopts_the_board_and_its_commands_arrive(ha: HaTestbed, tmp_path: Path) -> None:
    port = free_port()

    async def scenario() -> None:
        async with board(tmp_path, ha_section(port, friendly_name='"Kitchen board"'),
                         "adopt-plain", CORE) as host, HaApi(ha) as api:  # fmt: skip
            comp = component(host, "homeassistant")
            res = await adopt(api, port)
            try:
                assert res["title"] == "Kitchen board"
                dev, entities = await api.device_entities("Kitchen board")
                assert dev["manufacturer"] == "loomd", dev  # project "loomd.voice"
                assert ("mac", comp.device.mac.lower()) in [tuple(c) for c in dev["connections"]]
                kinds = {e.split(".")[0] for e in entities}
                assert {"assist_satellite", "media_player", "switch"} <= kinds, entities
                sat = next(e for e in entities if e.startswith("assist_satellite."))
                mute = next(e for e in entities if e.startswith("switch.") and "mute" in e)
                states = await api.wait_state(
                    lambda s: any(x["entity_id"] == sat and x["state"] == "idle" for x in s),
                    "assist_satellite",
                )
                attrs = next(x for x in states if x["entity_id"] == sat)["attributes"]
                # announce | start_conversation, as the device said it can
                assert attrs["supported_features"] & 3 == 3, attrs
                assert comp.satellite.conn is not None  # HA subscribed to the voice assistant
                # HA's switch command reaches the board, and the board's state reaches HA
                await api.post("/api/services/switch/turn_on", {"entity_id": mute})
                await _until(lambda: comp.satellite.muted, "mute on the board")
                await api.wait_state(
                    lambda s: any(x["entity_id"] == mute and x["state"] == "on" for x in s),
                    "switch",
                )
                await api.post("/api/services/switch/turn_off", {"entity_id": mute})
                await _until(lambda: not comp.satellite.muted, "mute off")
                st = comp.status()
                assert st.ha_connected and st.client.startswith("Home Assistant"), st
            finally:
                await api.delete(f"/api/config/config_entries/entry/{res['result']['entry_id']}")

    asyncio.run(scenario())


def test_noise_encrypted_adoption_and_a_wrong_key(ha: HaTestbed, tmp_path: Path) -> None:
    port = free_port()
    key = base64.b64encode(os.urandom(32)).decode()
    wrong = base64.b64encode(os.urandom(32)).decode()

    async def scenario() -> None:
        async with board(tmp_path, ha_section(port, key), "adopt-noise", CORE) as host, \
                HaApi(ha) as api:  # fmt: skip
            comp = component(host, "homeassistant")
            # without the key HA learns that the board needs one, and asks for it
            res = await api.flow("esphome", {"host": "127.0.0.1", "port": port})
            assert res["type"] == "form" and res["step_id"] == "encryption_key", res
            bad = await api.post(f"/api/config/config_entries/flow/{res['flow_id']}",
                                 {"noise_psk": wrong})  # fmt: skip
            assert bad["type"] == "form" and bad["errors"] == {"base": "invalid_psk"}, bad
            assert comp.server.handshake_failures >= 2  # the plaintext try and the wrong key
            ok = await api.post(f"/api/config/config_entries/flow/{res['flow_id']}",
                                {"noise_psk": key})  # fmt: skip
            assert ok["type"] == "create_entry", ok
            try:
                await _until(lambda: comp.satellite.conn is not None, "HA connected over Noise")
                _, entities = await api.device_entities(comp.device.name)
                assert any(e.startswith("assist_satellite.") for e in entities), entities
            finally:
                await api.delete(f"/api/config/config_entries/entry/{ok['result']['entry_id']}")

    asyncio.run(scenario())


def test_the_board_on_mdns_on_loopback(tmp_path: Path) -> None:
    """python-zeroconf (HA's own mDNS library) resolves the board's `_esphomelib._tcp`
    service; the announcer answers on 127.0.0.1 only."""
    pytest.importorskip("zeroconf")
    port = free_port()

    async def scenario() -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        async with board(tmp_path, ha_section(port, name='"mdns-board"'), "mdns", CORE) as host:
            comp = component(host, "homeassistant")
            # every socket the announcer sends from multicasts through lo only
            senders = [t.sock for t in comp.mdns._zc.zeroconf.engine.senders]
            assert senders
            for sock in senders:
                out_if = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
                assert socket.inet_ntoa(out_if) == "127.0.0.1"
            zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
            try:
                info = AsyncServiceInfo("_esphomelib._tcp.local.",
                                        "mdns-board._esphomelib._tcp.local.")  # fmt: skip
                assert await info.async_request(zc.zeroconf, 5000), "no answer over mDNS"
                assert info.port == comp.server.port
                assert info.parsed_addresses() == ["127.0.0.1"]
                assert info.properties[b"mac"] == comp.device.mac.replace(":", "").lower().encode()
                assert info.properties[b"friendly_name"] == b"mdns-board"
            finally:
                await zc.async_close()

    asyncio.run(scenario())


async def _until(cond: object, what: str, timeout: float = 15.0) -> None:
    await eventually(cond, timeout, what)
