"""Home Assistant MQTT discovery: the board as one device with a handful of entities.

Pure functions: `entities()` lists what loomd announces, `config_payload()` builds one
retained discovery config (`<prefix>/<component>/<node_id>/<object_id>/config`) with the
`unique_id`, the shared device block and availability on `loomd/<device_id>/status`.
The MQTT component publishes them on connect and again whenever Home Assistant announces
itself (`<prefix>/status` = `online`), and clears them on `loomctl mqtt forget`.

Agents add entities of their own by publishing on the bus topic `loomd.mqtt.entity` a map
`{"key": "pantry_temp", "component": "sensor", "name": "Pantry", "bus": "sensor.pantry.temp",
 ...extra discovery keys}`: the entity's state follows the bus topic's payload (as JSON).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loomd import __version__

__all__ = ["Entity", "base_topic", "config_payload", "config_topic", "default_entities"]

ENTITY_TOPIC = "loomd.mqtt.entity"  # agents announce entities here
COMPONENTS = ("sensor", "binary_sensor", "switch", "text", "number", "button", "select")


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


def agent_entity(device: str, data: Any) -> Entity:
    """An entity an agent asked for (raises ValueError with the reason)."""
    if not isinstance(data, dict):
        raise ValueError("an entity is a map with key, component, name and bus")
    key, comp, name, bus = (data.get(k) for k in ("key", "component", "name", "bus"))
    if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9_]{1,64}", key):
        raise ValueError(f"key {key!r}: 1-64 of a-z, 0-9, _")
    if comp not in COMPONENTS:
        raise ValueError(f"component {comp!r}: one of {', '.join(COMPONENTS)}")
    if not isinstance(name, str) or not name:
        raise ValueError("name: a non-empty string")
    if not isinstance(bus, str) or not bus:
        raise ValueError("bus: the bus topic whose payload is the state")
    extra = {k: v for k, v in data.items() if k not in ("key", "component", "name", "bus")}
    extra.setdefault("state_topic", f"{base_topic(device)}/entity/{key}")
    return Entity(f"agent_{key}", comp, name, extra, bus)
