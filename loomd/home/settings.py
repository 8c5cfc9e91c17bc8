"""`[home]`: the devices and areas the board knows, declared with no Python.

    [[home.areas]]
    id = "kitchen"
    name = "Kitchen"

    [[home.devices]]
    id = "kitchen_ceiling"
    name = "kitchen ceiling light"
    area = "kitchen"
    domain = "light"
    command_topic = "home/kitchen/ceiling/set"
    state_topic = "home/kitchen/ceiling/state"

The same tables may live in `home.d/*.toml` files (`[[areas]]`, `[[devices]]`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from loomd.config import Section, Switch, option, switch
from loomd.errors import ConfigError
from loomd.messages import Domain

__all__ = ["AreaSettings", "DeviceSettings", "HomeSettings"]

_ID = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_ENTITY = re.compile(r"[a-z_]+\.[a-z0-9_]+")
ID_TEXT = "an id of 1-64 lower-case letters, digits and _ (starting with a letter or digit)"
DOMAINS = tuple(d.value for d in Domain)
# Domains that only report: they need a state topic and take no command.
READ_ONLY = (Domain.SENSOR, Domain.BINARY_SENSOR)


def _is_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))


@dataclass(frozen=True)
class AreaSettings(Section):
    """One `[[home.areas]]` entry."""

    SECTION: ClassVar[str] = ""

    id: str = option("", valid=_is_id, expected=ID_TEXT)
    name: str = option("", max_len=128)
    aliases: tuple[str, ...] = option(factory=tuple)

    @property
    def title(self) -> str:
        return self.name or self.id.replace("_", " ")


@dataclass(frozen=True)
class DeviceSettings(Section):
    """One `[[home.devices]]` entry: who the device is and how the board acts on it, either
    an MQTT command topic with a payload per action, or a capability that acts for it."""

    SECTION: ClassVar[str] = ""

    id: str = option("", valid=_is_id, expected=ID_TEXT)
    name: str = option("", max_len=128)
    aliases: tuple[str, ...] = option(factory=tuple)
    area: str = option("", max_len=64)
    domain: str = option("", choices=DOMAINS)
    # How to act: MQTT ...
    command_topic: str = option("", max_len=255)
    payload_on: str = option("ON", max_len=1024)
    payload_off: str = option("OFF", max_len=1024)
    payload_open: str = option("OPEN", max_len=1024)
    payload_close: str = option("CLOSE", max_len=1024)
    payload_lock: str = option("LOCK", max_len=1024)
    payload_unlock: str = option("UNLOCK", max_len=1024)
    # `{value}` is replaced by the number: '{"brightness": {value}}', "{value}"
    brightness_template: str = option("", max_len=1024)
    temperature_template: str = option("", max_len=1024)
    position_template: str = option("", max_len=1024)
    qos: int = option(1, min=0, max=2)
    retain: bool = option(False)
    # ... or a capability (called with device, action and value) ...
    capability: str = option("", max_len=128)
    # ... or a Home Assistant entity ("light.kitchen_lights"; needs [homeassistant] url):
    # acted on through HA's services, its state from HA. HA's own name and area fill what
    # this table leaves out; domain defaults to the entity's.
    entity_id: str = option(
        "", valid=lambda v: not v or bool(_ENTITY.fullmatch(v)),
        expected='an HA entity id ("light.kitchen"), or "" for none',
    )  # fmt: skip
    # Reading it back: the state topic, and the JSON key holding the state ("" = the payload)
    state_topic: str = option("", max_len=255)
    state_key: str = option("", max_len=128)
    unit: str = option("", max_len=16)
    sensitive: bool = option(False)
    # true: every action is asked back; "auto": a lock's unlock is (the default)
    confirm: Switch = switch()

    def __post_init__(self) -> None:
        if not self.domain and "." in self.entity_id:  # an HA entity's domain is its prefix
            object.__setattr__(self, "domain", self.entity_id.split(".")[0])
        super().__post_init__()
        if not self.id:
            raise ConfigError("id", self.id, ID_TEXT)
        if not self.domain:
            raise ConfigError("domain", self.domain, "one of " + ", ".join(DOMAINS))
        ways = [k for k in ("command_topic", "capability", "entity_id") if getattr(self, k)]
        if len(ways) > 1:
            raise ConfigError(
                ways[1], getattr(self, ways[1]),
                f"either {ways[0]} or {ways[1]}, not both",
            )  # fmt: skip
        if self.entity_id:
            pass  # HA acts on it and reports its state
        elif self.domain in READ_ONLY:
            if not self.state_topic and not self.capability:
                raise ConfigError(
                    "state_topic", "", f"a state topic: a {self.domain} only reports its state"
                )
        elif not self.command_topic and not self.capability:
            raise ConfigError(
                "command_topic", "",
                "a command_topic (MQTT), a capability that acts for it or an HA entity_id",
            )  # fmt: skip
        for key in ("command_topic", "state_topic"):
            topic = getattr(self, key)
            if topic and any(c in topic for c in "+#"):
                raise ConfigError(key, topic, "an MQTT topic without wildcards")

    @property
    def title(self) -> str:
        return self.name or self.id.replace("_", " ")


@dataclass(frozen=True)
class HomeSettings(Section):
    SECTION: ClassVar[str] = "home"

    enabled: bool = option(True)
    # Folder of `*.toml` files with [[areas]] and [[devices]]; "" = home.d beside the config
    dir: str = option("", max_len=4096)
    # How often devices that agents contribute (capabilities with `devices`) are looked up
    agent_poll_s: float = option(60.0, min=0.5, max=3600.0)
    # How long a command may take (MQTT: until durable in the outbox; a capability: its run)
    action_timeout_s: float = option(5.0, min=0.1, max=120.0, reload=True)
    areas: tuple[AreaSettings, ...] = option(factory=tuple)
    devices: tuple[DeviceSettings, ...] = option(factory=tuple)
