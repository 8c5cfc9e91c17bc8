"""MQTT from the bus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loomd.errors import LoomdError
from loomd.messages.base import _Payload


# -- MQTT from the bus ------------------------------------------------------------------------
@dataclass(frozen=True)
class MqttPublish(_Payload):
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
class MqttFollow(_Payload):
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
class MqttAck(_Payload):
    ok: bool
    error: str = ""
