"""MQTT from the bus."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from loomd.errors import LoomdError
from loomd.messages.base import Topic, _Payload


# -- MQTT from the bus ------------------------------------------------------------------------
@dataclass(frozen=True)
class MqttPublish(_Payload, topic=Topic.MQTT_PUBLISH):
    """Publish one message through the MQTT bridge (`Topic.MQTT_PUBLISH`, request/reply).
    Answered with an `MqttAck` once the message is durable in the outbox (QoS >= 1) or
    handed to the socket (QoS 0)."""

    topic: str
    payload: bytes = b""
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        if not self.topic or any(c in self.topic for c in "+#\0"):
            raise LoomdError(f"bad MQTT topic {self.topic!r}: no wildcards, not empty")
        if self.qos not in (0, 1, 2):
            raise LoomdError(f"bad MQTT qos {self.qos!r}: 0, 1 or 2")
        if isinstance(self.payload, str):
            object.__setattr__(self, "payload", self.payload.encode())
        if not isinstance(self.payload, bytes):
            raise LoomdError("an MQTT payload is bytes or text")


@dataclass(frozen=True)
class MqttFollow(_Payload, topic=Topic.MQTT_FOLLOW):
    """Ask the bridge to subscribe to MQTT topic filters and publish each message that
    arrives as an `MqttMessage` on `bus_topic` (`Topic.MQTT_FOLLOW`, request/reply). The
    bridge keeps the filters across reconnects; a new request from the same `owner`
    replaces its filters."""

    owner: str
    filters: tuple[str, ...]
    bus_topic: str
    qos: int = 1

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> MqttFollow:
        return cls(**{**payload, "filters": tuple(str(f) for f in payload.get("filters") or ())})


@dataclass(frozen=True)
class MqttMessage(_Payload):
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class MqttLink(_Payload):
    """The bridge's link to the broker changed (`Topic.MQTT_CONNECTED` or
    `Topic.MQTT_DISCONNECTED`): agents re-announce their `MqttEntity`s on a connect."""

    broker: str
    client_id: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class MqttAck(_Payload):
    ok: bool
    error: str = ""


# -- Home Assistant entities from agents ------------------------------------------------------
class HaComponent(StrEnum):
    """The Home Assistant MQTT platforms an entity can be."""

    SENSOR = "sensor"
    BINARY_SENSOR = "binary_sensor"
    SWITCH = "switch"
    TEXT = "text"
    NUMBER = "number"
    BUTTON = "button"
    SELECT = "select"

    @property
    def commands(self) -> bool:
        """Home Assistant sends commands to it (it has a command topic)."""
        return self not in (HaComponent.SENSOR, HaComponent.BINARY_SENSOR)


_KEY = re.compile(r"[a-z0-9_]{1,64}")
_OWN = ("key", "component", "name", "bus", "command", "capability", "extra")
# keys the bridge sets itself: an agent cannot point an entity at another's topics
_RESERVED = ("command_topic", "unique_id", "object_id", "device", "availability_topic")


@dataclass(frozen=True)
class MqttEntity(_Payload, topic=Topic.MQTT_ENTITY):
    """An entity an agent asks the MQTT bridge to announce to Home Assistant.

    `bus`: the bus topic whose payload is the entity's state. For entities Home Assistant
    commands (switch, text, number, button, select): each command becomes an
    `EntityCommand` on the bus topic `command`, and/or a call of `capability` with
    `{"value": ...}` (through the action broker); the state then follows the command once
    it was accepted, unless `bus` gives the state. `extra`: the platform's own discovery
    keys (`options` for a select, `min`/`max`/`step` for a number, a unit, ...). Unknown
    top-level keys of a received map go into `extra` (the flat form agents used first)."""

    key: str
    component: str  # a HaComponent
    name: str
    bus: str = ""
    command: str = ""
    capability: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY.fullmatch(self.key):
            raise LoomdError(f"key {self.key!r}: 1-64 of a-z, 0-9, _")
        if self.component not in HaComponent.__members__.values():
            names = ", ".join(HaComponent)
            raise LoomdError(f"component {self.component!r}: one of {names}")
        if not isinstance(self.name, str) or not self.name:
            raise LoomdError("name: a non-empty string")
        for k in ("bus", "command", "capability"):
            if not isinstance(getattr(self, k), str):
                raise LoomdError(f"{k}: a string")
        if not isinstance(self.extra, dict):
            raise LoomdError("extra: a map of discovery keys")
        taken = sorted(set(self.extra) & set(_RESERVED))
        if taken:
            raise LoomdError(f"{', '.join(taken)}: set by the bridge")
        kind = HaComponent(self.component)
        if kind.commands and not (self.command or self.capability):
            raise LoomdError(f"a {kind} needs command (a bus topic) or capability")
        if not kind.commands and not self.bus:
            raise LoomdError("bus: the bus topic whose payload is the state")
        if kind is HaComponent.SELECT:
            opts = self.extra.get("options")
            if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
                raise LoomdError("a select needs extra.options, a list of strings")

    @classmethod
    def from_payload(cls, payload: Any) -> MqttEntity:
        if isinstance(payload, dict) and set(payload) - set(_OWN):
            flat = {k: v for k, v in payload.items() if k not in _OWN}
            own = {k: v for k, v in payload.items() if k in _OWN}
            payload = {**own, "extra": {**(own.get("extra") or {}), **flat}}
        return super().from_payload(payload)

    @property
    def kind(self) -> HaComponent:
        return HaComponent(self.component)


@dataclass(frozen=True)
class EntityCommand(_Payload, type="mqtt.entity.command"):
    """A command from Home Assistant for an agent's entity, on the entity's `command` topic.
    `value`: True/False (switch), a number (number), text (text, select), None (button)."""

    key: str
    value: Any = None
