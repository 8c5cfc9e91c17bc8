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


# --- nothing lost ------------------------------------------------------------------------


def first_seen(values: list[int]) -> list[int]:
    """At-least-once delivery may repeat a message after a reconnect: keep first sightings."""
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


OUT_SEQ = """
[[mqtt.map]]
direction = "out"
mqtt = "seq/out"
bus = "seq.out"
qos = 1
"""

IN_SEQ = """
[[mqtt.map]]
direction = "in"
mqtt = "seq/in"
bus = "seq.in"
qos = 1
"""


async def test_broker_restart_mid_stream_outbound(short_tmp: Path, broker: Mosquitto) -> None:
    n = 600
    async with running(short_tmp / "a", mqtt_section(broker, OUT_SEQ)) as host:
        c = await connected(host)
        # a persistent mosquitto_sub session: it gets what was queued for it while it was away
        with broker.sub("seq/out", "-c", "-i", "watcher") as w:
            await w.ready()
            for i in range(n):
                await c.ctx.bus.publish("seq.out", i)
                if i == n // 3:
                    await asyncio.to_thread(broker.restart)
            lines = await w.wait(n, timeout=60)
            got = first_seen([int(line.split()[1]) for line in lines])
            assert got == list(range(n))
        await wait_for(lambda: len(c.outbox) == 0)
        assert c.connects >= 2


class PahoPublisher:
    """A plain paho client (a sensor): QoS 1, reconnecting on its own."""

    def __init__(self, broker: Mosquitto) -> None:
        import paho.mqtt.client as mqtt

        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor",
                             clean_session=False)  # fmt: skip
        self.c.reconnect_delay_set(0.05, 0.2)
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()

    def publish_all(self, topic: str, values: list[int], restart_at: int, broker: Mosquitto) -> None:
        infos = []
        for i in values:
            infos.append(self.c.publish(topic, str(i), qos=1))
            if i == restart_at:
                broker.restart()
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def test_broker_restart_mid_stream_inbound(short_tmp: Path, broker: Mosquitto) -> None:
    n = 600
    async with running(short_tmp / "a", mqtt_section(broker, IN_SEQ)) as host:
        c = await connected(host)
        got: list[int] = []
        async with c.ctx.bus.subscribe("seq.in", "reliable") as sub:
            pub = await asyncio.to_thread(PahoPublisher, broker)
            try:
                job = asyncio.create_task(
                    asyncio.to_thread(pub.publish_all, "seq/in", list(range(n)), n // 3, broker)
                )
                while len(set(got)) < n:
                    got.append((await sub.get(30)).payload)
                await job
            finally:
                await asyncio.to_thread(pub.close)
        assert first_seen(got) == list(range(n))
        assert c.connects >= 2


async def test_outbox_survives_broker_outage_and_daemon_restart(
    short_tmp: Path, broker: Mosquitto
) -> None:
    n = 300
    with broker.sub("seq/out", "-c", "-i", "watcher") as w:
        await w.ready()
        async with running(short_tmp / "a", mqtt_section(broker, OUT_SEQ)) as host:
            c = await connected(host)
            await asyncio.to_thread(broker.stop)
            await wait_for(lambda: not c.connected)
            for i in range(n):
                await c.ctx.bus.publish("seq.out", i)
            await wait_for(lambda: len(c.outbox) == n)
            assert c.status().outbox_depth == n
        # the daemon stopped with the broker away: the outbox is in LMDB
        async with running(short_tmp / "a", mqtt_section(broker, OUT_SEQ)) as host:
            c = mqtt_of(host)
            assert len(c.outbox) == n
            await asyncio.to_thread(broker.start)
            await connected(host, 20)
            await wait_for(lambda: len(c.outbox) == 0, 30)
        lines = await w.wait(n, timeout=30)
        assert first_seen([int(line.split()[1]) for line in lines]) == list(range(n))
