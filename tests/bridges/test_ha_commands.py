"""Commands from Home Assistant through a real mosquitto (HA's side played by mosquitto_pub):
an agent's entities (switch, button, text, number, select) reach the bus and the
capability behind them; the Mute switch's state follows `voice.mute`; bad commands are
errors that lose nothing else."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from loomd.bus.api import BusSubscription
from loomd.messages import EntityCommand, ErrorEvent, MqttEntity, VoiceMute
from tests.bridges.conftest import Mosquitto, bridge, connected, mqtt_section, running
from tests.bridges.test_homeassistant import check_schema, configs
from tests.conftest import plugins_section

# An agent that offers two capabilities and announces five entities HA commands: on start
# and on every `loomd.mqtt.connected` (the bridge may come up after it).
FAN = '''
from loomd.agents import Agent, CapabilityError, capability
from loomd.messages import MqttEntity, Topic

ENTITIES = [
    MqttEntity("lamp", "switch", "Lamp", command="test.lamp.command"),
    MqttEntity("doorbell", "button", "Doorbell", command="test.doorbell"),
    MqttEntity("note", "text", "Note", command="test.note"),
    MqttEntity("fan_speed", "number", "Fan speed", capability="fan.speed",
               extra={"min": 0, "max": 3, "step": 0.5}),
    MqttEntity("fan_mode", "select", "Fan mode", capability="fan.mode",
               extra={"options": ["eco", "boost"]}),
]


class Fan(Agent):
    id = "fan"
    topics = (str(Topic.MQTT_CONNECTED),)

    async def start(self, ctx):
        self.ctx = ctx
        await self.announce(ctx)

    async def on_event(self, ctx, event):
        await self.announce(ctx)

    async def announce(self, ctx):
        for e in ENTITIES:
            await e.publish(ctx)

    @capability("fan.speed")
    async def speed(self, value: float) -> dict:
        """Set the fan speed."""
        if value > 2:
            raise CapabilityError("too fast for this fan")
        await self.ctx.publish("test.fan.speed", value)
        return {"speed": value}

    @capability("fan.mode")
    async def mode(self, value: str) -> dict:
        """Set the fan mode."""
        await self.ctx.publish("test.fan.mode", value)
        return {"mode": value}
'''

BASE = "loomd/test-box/entity"


def agents_section(root: Path) -> str:
    return plugins_section(root, fan=FAN)


async def next_error(errors: BusSubscription, code: str) -> ErrorEvent:
    while True:
        e = ErrorEvent.from_payload((await errors.get(10)).payload)
        if e.code == code:
            return e


async def test_ha_commands_reach_the_bus_and_the_capability_behind_them(
    short_tmp: Path, broker: Mosquitto
) -> None:
    root = short_tmp / "a"
    names = ("state", "bus", "agents", "mqtt")
    async with running(root, mqtt_section(broker), extra=agents_section(root), names=names) as h:
        c = await connected(h)
        bus = c.ctx.bus
        with broker.sub("homeassistant/+/loomd_test-box/+/config") as w:
            found = configs(await w.wait(8 + 5))
        check_schema(found)
        agent = {t.split("/")[3]: cfg for t, cfg in found.items() if "/agent_" in t}
        assert {k: t.split("/")[1] for t in found for k in [t.split("/")[3]] if k in agent} == {
            "agent_lamp": "switch", "agent_doorbell": "button", "agent_note": "text",
            "agent_fan_speed": "number", "agent_fan_mode": "select",
        }  # fmt: skip
        assert agent["agent_lamp"]["command_topic"] == f"{BASE}/lamp/set"
        assert agent["agent_lamp"]["state_topic"] == f"{BASE}/lamp"
        assert "state_topic" not in agent["agent_doorbell"]
        assert agent["agent_fan_mode"]["options"] == ["eco", "boost"]
        assert (agent["agent_fan_speed"]["min"], agent["agent_fan_speed"]["max"]) == (0, 3)

        async with (
            bus.subscribe("test.#", "reliable") as got,
            bus.subscribe("loomd.error", "reliable") as errors,
        ):

            async def command(key: str, text: str) -> Any:
                await asyncio.to_thread(broker.pub, f"{BASE}/{key}/set", text)
                return await got.get(10)

            ev = await command("lamp", "ON")
            assert ev.topic == "test.lamp.command"
            assert EntityCommand.from_event(ev) == EntityCommand("lamp", True)
            assert EntityCommand.from_event(await command("lamp", "OFF")).value is False
            ev = await command("doorbell", "PRESS")
            assert (ev.topic, EntityCommand.from_event(ev)) == (
                "test.doorbell", EntityCommand("doorbell", None)
            )  # fmt: skip
            assert EntityCommand.from_event(await command("note", "milk")).value == "milk"
            ev = await command("fan_speed", "1.5")  # through the action broker
            assert (ev.topic, ev.payload) == ("test.fan.speed", 1.5)
            ev = await command("fan_mode", "boost")
            assert (ev.topic, ev.payload) == ("test.fan.mode", "boost")

            # bad commands: an error each, nothing reaches the capability or the bus
            await asyncio.to_thread(broker.pub, f"{BASE}/fan_speed/set", "2.5")
            e = await next_error(errors, "mqtt_command_failed")
            assert "too fast" in e.message and "fan.speed" in e.message
            for key, text in (("fan_speed", "fast"), ("fan_speed", "9"), ("fan_mode", "turbo"),
                              ("lamp", "maybe")):  # fmt: skip
                await asyncio.to_thread(broker.pub, f"{BASE}/{key}/set", text)
                e = await next_error(errors, "mqtt_bad_payload")
                assert f"{BASE}/{key}/set" in e.message
            await asyncio.to_thread(broker.pub, f"{BASE}/nobody/set", "ON")
            assert "no entity" in (await next_error(errors, "mqtt_bad_topic")).message
            # still serving, and the refused ones left no event behind
            ev = await command("note", "eggs")
            assert EntityCommand.from_event(ev).value == "eggs"
        assert c.errors["command_failed"] == 1 and c.errors["bad_payload"] == 4

        # each entity's state is what it last accepted (retained for HA)
        with broker.sub(f"{BASE}/+") as w:
            states = sorted(await w.wait(4))
        assert states == sorted([f"{BASE}/lamp OFF", f"{BASE}/note eggs",
                                 f"{BASE}/fan_speed 1.5", f"{BASE}/fan_mode boost"])  # fmt: skip


async def test_mute_switch_state_follows_the_bus_whoever_mutes(
    short_tmp: Path, broker: Mosquitto
) -> None:
    async with bridge(short_tmp / "a", mqtt_section(broker)) as c:
        bus = c.ctx.bus
        with broker.sub("loomd/test-box/mute") as w:
            assert await w.wait(1) == ["loomd/test-box/mute OFF"]
            await VoiceMute(True).publish(bus)  # muted on the board (the CLI, an agent)
            assert await w.wait(2) == ["loomd/test-box/mute OFF", "loomd/test-box/mute ON"]
        async with bus.subscribe("voice.mute", "reliable") as mute:
            await asyncio.to_thread(broker.pub, "loomd/test-box/mute/set", "OFF")
            assert VoiceMute.from_event(await mute.get(10)) == VoiceMute(False)
        with broker.sub("loomd/test-box/mute") as w:
            assert await w.wait(1) == ["loomd/test-box/mute OFF"]


async def test_a_bad_entity_is_an_error_and_the_good_ones_still_come(
    short_tmp: Path, broker: Mosquitto
) -> None:
    async with bridge(short_tmp / "a", mqtt_section(broker)) as c:
        bus = c.ctx.bus
        async with bus.subscribe("loomd.error", "reliable") as errors:
            bad = [
                {"key": "lamp", "component": "switch", "name": "Lamp"},  # no command
                {"key": "m", "component": "select", "name": "M", "command": "x"},  # no options
                {"key": "Bad Key", "component": "sensor", "name": "X", "bus": "x"},
                {"key": "t", "component": "light", "name": "T", "bus": "x"},
                {"key": "s", "component": "switch", "name": "S", "command": "x",
                 "command_topic": "someone/else"},
            ]  # fmt: skip
            for payload in bad:
                await bus.publish("loomd.mqtt.entity", payload)
                await next_error(errors, "mqtt_bad_entity")
        with broker.sub("homeassistant/switch/loomd_test-box/agent_ok/config") as w:
            await w.ready()
            ok = MqttEntity("ok", "switch", "OK", command="ok.cmd", extra={"icon": "mdi:check"})
            await ok.publish(bus)
            cfg = json.loads((await w.wait(1))[0].partition(" ")[2])
        assert cfg["icon"] == "mdi:check" and cfg["command_topic"] == f"{BASE}/ok/set"
        assert c.errors["bad_entity"] == len(bad)
