"""Home Assistant MQTT discovery: the board as one device with a handful of entities.

Pure functions: `entities()` lists what loomd announces, `config_payload()` builds one
retained discovery config (`<prefix>/<component>/<node_id>/<object_id>/config`) with the
`unique_id`, the shared device block and availability on `loomd/<device_id>/status`.
The MQTT component publishes them on connect and again whenever Home Assistant announces
itself (`<prefix>/status` = `online`), and clears them on `loomctl mqtt forget`.

Agents add entities of their own by publishing an `MqttEntity` (loomd.messages) on
`Topic.MQTT_ENTITY`: a sensor's state follows a bus topic's payload (as JSON); a switch,
text, number, button or select turns HA's commands into `EntityCommand` events and/or
capability calls (see docs/design/mqtt-entities.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loomd import __version__
from loomd.messages import HaComponent, MqttEntity, Topic

__all__ = ["Entity", "base_topic", "config_payload", "config_topic", "default_entities"]

ENTITY_TOPIC = str(Topic.MQTT_ENTITY)  # agents announce entities here (MqttEntity)


def node_id(device: str) -> str:
    return "loomd_" + re.sub(r"[^A-Za-z0-9_-]", "_", device)


def base_topic(device: str) -> str:
    return f"loomd/{device}"


@dataclass(frozen=True)
class Entity:
    key: str  # object id, unique per board
    component: str  # Home Assistant platform: sensor, switch, text, ...
    name: str
    extra: dict[str, Any] = field(default_factory=dict)  # the platform's own keys
    bus: str = ""  # for agent entities: the bus topic whose payload is the state
    source: MqttEntity | None = None  # for agent entities: what the agent asked for


def default_entities(device: str) -> list[Entity]:
    b = base_topic(device)
    state = f"{b}/state"
    return [
        Entity("status", "binary_sensor", "Status", {
            "state_topic": f"{b}/status", "payload_on": "online", "payload_off": "offline",
            "device_class": "connectivity", "entity_category": "diagnostic"}),
        Entity("events_per_s", "sensor", "Bus events per second", {
            "state_topic": state, "value_template": "{{ value_json.events_per_s }}",
            "unit_of_measurement": "events/s", "state_class": "measurement"}),
        Entity("drops", "sensor", "Bus drops", {
            "state_topic": state, "value_template": "{{ value_json.drops }}",
            "state_class": "total_increasing", "entity_category": "diagnostic"}),
        Entity("cpu_temperature", "sensor", "CPU temperature", {
            "state_topic": state, "value_template": "{{ value_json.cpu_temperature }}",
            "device_class": "temperature", "unit_of_measurement": "°C",
            "state_class": "measurement"}),
        Entity("voice_state", "sensor", "Voice state", {
            "state_topic": f"{b}/voice/state", "device_class": "enum",
            "options": ["idle", "listening", "thinking", "speaking"]}),
        Entity("last_transcript", "sensor", "Last transcript", {
            "state_topic": f"{b}/voice/transcript"}),
        Entity("say", "text", "Say", {"command_topic": f"{b}/say", "max": 255}),
        Entity("mute", "switch", "Mute", {
            "command_topic": f"{b}/mute/set", "state_topic": f"{b}/mute",
            "payload_on": "ON", "payload_off": "OFF", "optimistic": False}),
    ]  # fmt: skip


def config_topic(prefix: str, device: str, e: Entity) -> str:
    return f"{prefix}/{e.component}/{node_id(device)}/{e.key}/config"


def config_payload(device: str, e: Entity) -> dict[str, Any]:
    nid = node_id(device)
    payload: dict[str, Any] = {
        "name": e.name,
        "unique_id": f"{nid}_{e.key}",
        "object_id": f"{nid}_{e.key}",
        "device": {
            "identifiers": [nid],
            "name": f"loomd {device}",
            "manufacturer": "loomd",
            "model": "loomd edge daemon",
            "sw_version": __version__,
        },
        "availability_topic": f"{base_topic(device)}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    payload.update(e.extra)
    return payload


def agent_entity(device: str, m: MqttEntity) -> Entity:
    """The discovery entity for an agent's `MqttEntity`: its state on
    `loomd/<device>/entity/<key>`, HA's commands (if it takes any) on `.../<key>/set`."""
    extra = dict(m.extra)
    t = f"{base_topic(device)}/entity/{m.key}"
    if m.kind is not HaComponent.BUTTON:
        extra.setdefault("state_topic", t)
    if m.kind.commands:
        extra["command_topic"] = f"{t}/set"
    return Entity(f"agent_{m.key}", m.component, m.name, extra, m.bus, m)


def command_key(device: str, topic: str) -> str | None:
    """The agent entity key a command topic `loomd/<device>/entity/<key>/set` names."""
    head, tail = f"{base_topic(device)}/entity/", "/set"
    if topic.startswith(head) and topic.endswith(tail):
        return topic[len(head) : -len(tail)] or None
    return None


def command_value(kind: HaComponent, text: str, extra: dict[str, Any]) -> Any:
    """What a command payload from HA means for an entity of `kind` (ValueError: nothing)."""
    if kind is HaComponent.SWITCH:
        on, off = extra.get("payload_on", "ON"), extra.get("payload_off", "OFF")
        if text not in (on, off):
            raise ValueError(f"{text[:32]!r} is not {on} or {off}")
        return text == on
    if kind is HaComponent.NUMBER:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text[:32]!r} is not a number") from None
        lo, hi = extra.get("min", 1.0), extra.get("max", 100.0)  # HA's defaults
        if not lo <= value <= hi:
            raise ValueError(f"{value:g} is outside {lo:g}..{hi:g}")
        return value
    if kind is HaComponent.SELECT:
        if text not in extra.get("options", ()):
            raise ValueError(f"{text[:32]!r} is not one of the options")
        return text
    if kind is HaComponent.BUTTON:
        return None
    return text
