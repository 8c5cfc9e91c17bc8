"""The lean data path over paho (loomd.bridges.mqtt_lean) against a real mosquitto: what
it decodes itself, what it leaves to paho, and QoS 0 bursts both ways (in order, every
message delivered or counted as dropped)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from bench.harness import mqtt_map
from loomd.bridges.mqtt import MqttComponent
from tests.bridges.conftest import Mosquitto, mqtt_section, running, wait_for

MAPS = (
    mqtt_map("in", "in0/+", "in0.*", qos=0, codec="text", bus_qos="realtime")
    + mqtt_map("in", "in1/+", "in1.*", qos=2, codec="text")
    + mqtt_map("in", "tp/in", "tp.x", qos=0, codec="text", bus_qos="realtime")
    + mqtt_map("out", "tp/out", "tp.x", qos=0, codec="text", bus_qos="realtime")
)


async def test_lean_decode_and_paho_fallbacks_reach_the_bus(
    short_tmp: Path, broker: Mosquitto
) -> None:
    async with running(short_tmp / "a", mqtt_section(broker, MAPS)) as host:
        c = host.get("mqtt")
        assert isinstance(c, MqttComponent)
        await wait_for(lambda: c.connected)
        assert c.transport.lean  # paho 2.x: the lean path is on
        bus = c.ctx.bus
        v5_props = ("-V", "mqttv5", "-D", "publish", "user-property", "k", "v")
        cases = [
            ("in0/a", "zero", 0, ()),  # lean, QoS 0
            ("in1/b", "one", 1, ()),  # lean, QoS 1 (acked after the bus took it)
            ("in1/c", "two", 2, ()),  # QoS 2: paho's handler and state machine
            ("in1/d", "props", 1, v5_props),  # MQTT 5 properties: paho's full decode
            ("in0/e", "props0", 0, v5_props),
            ("in1/f", "héllo wörld", 1, ()),  # UTF-8 in the payload
            ("in1/i", "w" * 1000, 1, ()),  # a two-byte remaining length, in one read
            ("in1/g", "y" * 100_000, 1, ()),  # over several 64 KiB reads: paho's reader
            ("in0/h", "z" * 100_000, 0, ()),
        ]
        async with bus.subscribe("in0.*", "realtime") as s0, bus.subscribe("in1.*") as s1:
            for topic, text, qos, extra in cases:
                await asyncio.to_thread(broker.pub, topic, text, qos, *extra)
                ev = await (s0 if topic.startswith("in0") else s1).get(10)
                assert (ev.topic, ev.payload) == (topic.replace("/", "."), text)
                assert ev.meta["mqtt_topic"] == topic
        in0, in1 = c.maps[0], c.maps[1]
        assert (in0.in_count, in1.in_count) == (3, 6)
        assert c.errors == {}


async def test_qos0_burst_through_the_bridge_in_order_and_accounted(
    short_tmp: Path, broker: Mosquitto
) -> None:
    """5000 QoS 0 messages in one burst (mosquitto_pub -l) in, out through a realtime
    subscription to mosquitto_sub: what arrives is in order, and what does not arrive is
    a counted drop on the bus (QoS 0 may drop under overload, never silently)."""
    n = 5000
    async with running(short_tmp / "a", mqtt_section(broker, MAPS)) as host:
        c = host.get("mqtt")
        assert isinstance(c, MqttComponent)
        await wait_for(lambda: c.connected)
        with broker.sub("tp/out") as watcher:
            await watcher.ready()
            lines = "".join(f"{i}\n" for i in range(n)).encode()
            await asyncio.to_thread(
                subprocess.run,
                ["mosquitto_pub", *broker.args(), "-t", "tp/in", "-q", "0", "-l"],
                input=lines, check=True, timeout=30,
            )  # fmt: skip
            tp_in, tp_out = c.maps[2], c.maps[3]
            await wait_for(lambda: tp_in.in_count == n, 30)  # the broker delivered all to us
            stats = await c.ctx.bus.stats()
            dropped = sum(
                sum(s.dropped.values()) for s in stats.subscriptions if s.pattern == "tp.x"
            )
            await wait_for(lambda: tp_out.out_count + dropped >= n, 30)
            assert tp_out.out_count + dropped == n
            got = await watcher.wait(tp_out.out_count, 30)
        seq = [int(line.split()[1]) for line in got if line.startswith("tp/out ")]
        assert len(seq) == tp_out.out_count
        assert seq == sorted(seq), "QoS 0 through the bridge kept its order"
        assert c.transport.client.whole_reads > n // 2  # the lean parse did the work
        assert len(set(seq)) == len(seq)
