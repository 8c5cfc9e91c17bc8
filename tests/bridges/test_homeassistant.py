"""Home Assistant discovery through a real mosquitto, read back with mosquitto_sub."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from loomd.messages import SayRequest
from tests.bridges.conftest import Mosquitto, bridge, mqtt_section

STATUS = "loomd/test-box/status"
# what Home Assistant's MQTT platforms require beyond the common keys
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "switch": {"command_topic"},
    "text": {"command_topic"},
}


def configs(lines: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for line in lines:
        topic, _, payload = line.partition(" ")
        out[topic] = json.loads(payload)
    return out


def check_schema(found: dict[str, dict[str, Any]]) -> None:
    ids = set()
    for topic, cfg in found.items():
        prefix, component, node, obj, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "loomd_test-box", "config"), topic
        assert REQUIRED.get(component, set()) <= cfg.keys(), (topic, cfg)
        assert cfg["unique_id"] == f"loomd_test-box_{obj}"
        ids.add(cfg["unique_id"])
        assert cfg["device"]["identifiers"] == ["loomd_test-box"]
        assert {"name", "manufacturer", "model", "sw_version"} <= cfg["device"].keys()
        assert cfg["availability_topic"] == STATUS
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
    assert len(ids) == len(found)


async def test_discovery_is_retained_schema_valid_and_republished_on_birth(
    short_tmp: Path, broker: Mosquitto
) -> None:
    async with bridge(short_tmp / "a", mqtt_section(broker)) as c:
        n = len(c.ha_entities)
        assert n == 8
        # a subscriber that comes later gets them: retained
        with broker.sub("homeassistant/+/+/+/config") as w:
            found = configs(await w.wait(n))
        check_schema(found)
        kinds = {t.split("/")[1] for t in found}
        assert kinds == {"binary_sensor", "sensor", "text", "switch"}
        # Home Assistant restarts: its birth message brings them again, live
        with broker.sub("homeassistant/+/+/+/config", "-R") as w:
            await w.ready()
            assert w.lines == []  # -R: the retained copies are not shown
            await asyncio.to_thread(broker.pub, "homeassistant/status", "online")
            assert configs(await w.wait(n)) == found


async def test_text_entity_speaks_switch_mutes_and_voice_state_is_mirrored(
    short_tmp: Path, broker: Mosquitto
) -> None:
    async with bridge(short_tmp / "a", mqtt_section(broker)) as c:
        bus = c.ctx.bus
        async with (
            bus.subscribe("voice.say", "reliable") as say,
            bus.subscribe("voice.mute", "reliable") as mute,
        ):
            await asyncio.to_thread(broker.pub, "loomd/test-box/say", "dinner is ready")
            assert SayRequest.from_payload((await say.get(10)).payload).text == "dinner is ready"
            await asyncio.to_thread(broker.pub, "loomd/test-box/mute/set", "ON")
            assert (await mute.get(10)).payload == {"muted": True}
        with broker.sub("loomd/test-box/mute") as w:
            assert await w.wait(1) == ["loomd/test-box/mute ON"]
        with broker.sub("loomd/test-box/voice/#") as w:
            await w.ready()
            await bus.publish("voice.state", {"state": "listening"})
            await bus.publish("voice.transcript", {"text": "hello", "utterance_id": "u1"})
            assert await w.wait(2) == [
                "loomd/test-box/voice/state listening",
                "loomd/test-box/voice/transcript hello",
            ]


async def test_an_agent_adds_an_entity_and_forget_clears_everything(
    short_tmp: Path, broker: Mosquitto
) -> None:
    async with bridge(short_tmp / "a", mqtt_section(broker)) as c:
        bus = c.ctx.bus
        with broker.sub("homeassistant/sensor/loomd_test-box/agent_pantry/config") as w:
            await w.ready()
            await bus.publish(
                "loomd.mqtt.entity",
                {"key": "pantry", "component": "sensor", "name": "Pantry",
                 "bus": "sensor.pantry.temp", "unit_of_measurement": "°C"},
            )  # fmt: skip
            cfg = configs(await w.wait(1))
        entity = next(iter(cfg.values()))
        assert entity["unit_of_measurement"] == "°C"
        check_schema(cfg)
        with broker.sub(entity["state_topic"]) as w:
            await w.ready()
            await bus.publish("sensor.pantry.temp", 19.5)
            assert await w.wait(1) == [f"{entity['state_topic']} 19.5"]
        assert (await c._forget())["cleared"] == 9
        # the probe comes back after any retained message: none are left
        with broker.sub("homeassistant/#") as w:
            await w.ready()
            assert w.lines == []
