"""The MQTT bridge against a real mosquitto, with mosquitto_pub/mosquitto_sub as the
third-party clients on the other side."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from loomd.bridges.mqtt import MqttComponent
from loomd.host import Host
from tests.bridges.conftest import Mosquitto, mqtt_section, running, wait_for

IN_TEMP = """
[[mqtt.map]]
direction = "in"
mqtt = "sensors/+/temp"
bus = "sensor.*.temp"
qos = 1
"""

OUT_SAY = """
[[mqtt.map]]
direction = "out"
mqtt = "boards/+/say"
bus = "say.*"
qos = 1
codec = "text"
"""


def mqtt_of(host: Host) -> MqttComponent:
    c = host.get("mqtt")
    assert isinstance(c, MqttComponent), host.status()
    return c


async def connected(host: Host, timeout: float = 10.0) -> MqttComponent:
    c = mqtt_of(host)
    await wait_for(lambda: c.connected, timeout)
    return c


async def test_sensor_to_bus_and_bus_to_mqtt(short_tmp: Path, broker: Mosquitto) -> None:
    async with running(short_tmp / "a", mqtt_section(broker, IN_TEMP + OUT_SAY)) as host:
        c = await connected(host)
        bus = c.ctx.bus
        async with bus.subscribe("sensor.*.temp", "reliable") as sub:
            await asyncio.to_thread(broker.pub, "sensors/kitchen/temp", '{"c": 21.5}')
            ev = await sub.get(10)
        assert ev.topic == "sensor.kitchen.temp"
        assert ev.payload == {"c": 21.5}
        assert ev.meta["mqtt_topic"] == "sensors/kitchen/temp"

        with broker.sub("boards/#") as watcher:
            await watcher.ready()
            await bus.publish("say.hall", "hello there")
            assert await watcher.wait(1) == ["boards/hall/say hello there"]
        await wait_for(lambda: len(c.outbox) == 0)
        assert c.maps[0].in_count == 1 and c.maps[1].out_count == 1


async def test_status_topic_and_will(short_tmp: Path, broker: Mosquitto) -> None:
    async with running(short_tmp / "a", mqtt_section(broker)) as host:
        await connected(host)
        with broker.sub("loomd/test-box/status") as w:
            assert await w.wait(1) == ["loomd/test-box/status online"]  # retained
    with broker.sub("loomd/test-box/status") as w:
        assert await w.wait(1) == ["loomd/test-box/status offline"]
