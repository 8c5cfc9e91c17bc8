"""The home: devices, areas, state (and Home Assistant's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

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
class _Area(_Payload):
    id: str
    name: str
    aliases: tuple[str, ...] = ()

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> Self:
        return cls(**{**payload, "aliases": tuple(payload.get("aliases") or ())})


@dataclass(frozen=True)
class HomeArea(_Area):
    """An area of the home, as the config and `home.d` declare it."""


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


# -- Home Assistant's registry, as its WebSocket API gives it --------------------------------------
@dataclass(frozen=True)
class HaArea(_Area):
    """An area of Home Assistant's registry."""


@dataclass(frozen=True)
class HaDevice(_Payload):
    id: str
    name: str
    area_id: str = ""


@dataclass(frozen=True)
class HaEntity(_Payload):
    """An entity HA exposes to voice assistants, with its area (its own, else its
    device's) and its state when the snapshot was taken."""

    entity_id: str
    name: str
    area_id: str = ""
    device_id: str = ""
    aliases: tuple[str, ...] = ()
    state: str = ""

    @property
    def domain(self) -> str:
        return self.entity_id.split(".", 1)[0]

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> HaEntity:
        return cls(**{**payload, "aliases": tuple(payload.get("aliases") or ())})


@dataclass(frozen=True)
class HaSnapshot(_Payload, type="ha.snapshot"):
    """HA's areas, devices and exposed entities: the reply to `ha.registry` and the event
    on `ha.changed` (each (re)connect, each change of HA's registries). `connected` is
    false in a reply given before the first connection (nothing is known yet)."""

    areas: tuple[HaArea, ...] = ()
    devices: tuple[HaDevice, ...] = ()
    entities: tuple[HaEntity, ...] = ()  # only those exposed to voice assistants
    connected: bool = True

    def to_payload(self) -> dict[str, Any]:
        return {"areas": [a.to_payload() for a in self.areas],
                "devices": [d.to_payload() for d in self.devices],
                "entities": [e.to_payload() for e in self.entities],
                "connected": self.connected}  # fmt: skip

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> HaSnapshot:
        return cls(
            tuple(HaArea.from_payload(a) for a in payload.get("areas") or ()),
            tuple(HaDevice.from_payload(d) for d in payload.get("devices") or ()),
            tuple(HaEntity.from_payload(e) for e in payload.get("entities") or ()),
            bool(payload.get("connected", True)),
        )
