"""The home: devices, areas, state (and Home Assistant's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from loomd.messages.base import _Payload


# -- the home: devices, areas, state -------------------------------------------------------------
class Domain(StrEnum):
    """Home Assistant's device domains (the ones the board acts on or reads)."""

    LIGHT = "light"
    SWITCH = "switch"
    COVER = "cover"
    LOCK = "lock"
    CLIMATE = "climate"
    FAN = "fan"
    MEDIA_PLAYER = "media_player"
    SENSOR = "sensor"
    BINARY_SENSOR = "binary_sensor"


@dataclass(frozen=True)
class HomeArea(_Payload):
    id: str
    name: str
    aliases: tuple[str, ...] = ()

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> HomeArea:
        return cls(**{**payload, "aliases": tuple(payload.get("aliases") or ())})


@dataclass(frozen=True)
class HomeDevice(_Payload):
    """A device as other parts see it: who it is, where, what kind, where it came from
    (`config`, a `home.d` file, `agent:<provider>`), and its last known state."""

    id: str
    name: str
    domain: Domain
    area: str = ""
    aliases: tuple[str, ...] = ()
    source: str = "config"
    sensitive: bool = False
    confirm: tuple[str, ...] = ()  # actions asked back first ("unlock"; "*" for every one)
    state: str = ""  # "" until known
    unit: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> HomeDevice:
        return cls(**{**payload, "domain": Domain(str(payload.get("domain"))),
                      "aliases": tuple(payload.get("aliases") or ()),
                      "confirm": tuple(payload.get("confirm") or ())})  # fmt: skip


@dataclass(frozen=True)
class HomeSnapshot(_Payload):
    areas: tuple[HomeArea, ...] = ()
    devices: tuple[HomeDevice, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        return {"areas": [a.to_payload() for a in self.areas],
                "devices": [d.to_payload() for d in self.devices]}  # fmt: skip

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> HomeSnapshot:
        return cls(
            tuple(HomeArea.from_payload(a) for a in payload.get("areas") or ()),
            tuple(HomeDevice.from_payload(d) for d in payload.get("devices") or ()),
        )


@dataclass(frozen=True)
class DeviceState(_Payload):
    """A device's state as its state topic last reported it (`home.state.<device>`)."""

    device: str
    state: str
    attributes: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0  # time.time()


@dataclass(frozen=True)
class HaState(_Payload):
    """A Home Assistant entity's new state (`ha.state.<entity_id>`), from its WebSocket API."""

    entity_id: str
    state: str
    old_state: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # time.time() when loomd received it
