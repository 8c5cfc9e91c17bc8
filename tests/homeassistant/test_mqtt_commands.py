"""Commands from a real Home Assistant over MQTT: HA's MQTT integration (added through its
config-flow REST API) talks to a real mosquitto, finds the board's discovery entities (in
`/api/states`), and its switch/text/number service calls reach loomd's bus and the
capability behind an agent's entity; the entities go unavailable when the board stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from loomd.host import Host
from loomd.messages import EntityCommand, SayRequest, Topic, VoiceMute
from tests.bridges.conftest import Mosquitto, host_config
from tests.bridges.test_ha_commands import agents_section
from tests.homeassistant.conftest import HaApi, HaTestbed

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(600)]
NAMES = ("state", "bus", "agents", "mqtt")


def mqtt_body(port: int) -> str:
    return f"[mqtt]\nenabled = true\nport = {port}\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"


@asynccontextmanager
async def ha_mqtt(api: HaApi, broker: Mosquitto) -> AsyncIterator[None]:
    """HA's MQTT integration on `broker`, through the config-flow REST API (removed after)."""
    await api.remove_entries("mqtt")
    step = {"broker": "127.0.0.1", "port": broker.port, "protocol": "5",
            "other_settings": {"set_client_cert": False, "set_ca_cert": "off",
                               "transport": "tcp"}}  # fmt: skip
    res = await api.flow("mqtt", step)
    assert res["type"] == "create_entry", res
    try:
        yield
    finally:
        await api.remove_entries("mqtt")


async def loomd_entities(api: HaApi, device: str, n: int, timeout: float = 60) -> dict[str, str]:
    """unique_id -> entity_id of the board's MQTT entities, once HA has `n` of them."""
    prefix = f"loomd_{device}_"
    end = time.monotonic() + timeout
    while True:
        ents = await api.call({"type": "config/entity_registry/list"})
        ours = {e["unique_id"]: e["entity_id"] for e in ents
                if e["platform"] == "mqtt" and e["unique_id"].startswith(prefix)}  # fmt: skip
        if len(ours) >= n:
            return {u[len(prefix) :]: i for u, i in ours.items()}
        if time.monotonic() > end:
            raise AssertionError(f"HA has {sorted(ours)} of the board's entities, not {n}")
        await asyncio.sleep(0.2)


async def wait_states(api: HaApi, ids: list[str], pred: Any, timeout: float = 30) -> None:
    def ok(states: list[dict[str, Any]]) -> bool:
        by = {s["entity_id"]: s["state"] for s in states}
        return all(i in by and pred(by[i]) for i in ids)

    await api.wait_state(ok, timeout=timeout)


def test_ha_sees_the_entities_and_its_commands_reach_the_bus(
    ha: HaTestbed, short_tmp: Path
) -> None:
    from loomd.settings import load_config

    broker = Mosquitto(short_tmp / "broker")
    broker.start()
    root = short_tmp / "board"

    async def scenario() -> None:
        async with HaApi(ha) as api, ha_mqtt(api, broker):
            cfg = host_config(root, mqtt_body(broker.port), "ha-mqtt", agents_section(root))
            async with Host(load_config(cfg), names=list(NAMES)) as host:
                bus = host.get("mqtt").ctx.bus  # type: ignore[union-attr]
                ents = await loomd_entities(api, "ha-mqtt", 8 + 5)
                # every entity in /api/states, available (the board's birth message)
                await wait_states(api, list(ents.values()), lambda s: s != "unavailable")
                mute, say = ents["mute"], ents["say"]
                lamp, speed = ents["agent_lamp"], ents["agent_fan_speed"]
                async with (
                    bus.subscribe("voice.#", "reliable") as voice,
                    bus.subscribe("test.#", "reliable") as test,
                ):
                    await api.post("/api/services/switch/turn_on", {"entity_id": mute})
                    assert VoiceMute.from_event(await voice.get(15)) == VoiceMute(True)
                    await wait_states(api, [mute], lambda s: s == "on")
                    await api.post("/api/services/text/set_value",
                                   {"entity_id": say, "value": "dinner is ready"})  # fmt: skip
                    ev = await voice.get(15)
                    assert ev.topic == Topic.VOICE_SAY
                    assert SayRequest.from_event(ev).text == "dinner is ready"
                    await api.post("/api/services/switch/turn_on", {"entity_id": lamp})
                    ev = await test.get(15)
                    assert (ev.topic, EntityCommand.from_event(ev)) == (
                        "test.lamp.command", EntityCommand("lamp", True)
                    )  # fmt: skip
                    await wait_states(api, [lamp], lambda s: s == "on")
                    await api.post("/api/services/number/set_value",
                                   {"entity_id": speed, "value": 1.5})  # fmt: skip
                    ev = await test.get(15)  # the agent's capability ran
                    assert (ev.topic, ev.payload) == ("test.fan.speed", 1.5)
                    await wait_states(api, [speed], lambda s: float(s) == 1.5)
            # the board stopped: HA shows its entities unavailable (its "offline")
            await wait_states(api, [mute, say, lamp], lambda s: s == "unavailable")

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
