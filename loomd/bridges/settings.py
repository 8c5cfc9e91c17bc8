"""Settings of the bridges: `[mqtt]` with `[[mqtt.map]]`, `[peers]` with `[[peers.links]]`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from loomd.bridges.topics import wildcards_of
from loomd.bus.envelope import QOS_CLASSES
from loomd.bus.settings import check_patterns
from loomd.config import Section, option
from loomd.errors import ConfigError

__all__ = ["LinkSettings", "MapSettings", "MqttSettings", "PeersSettings"]

_ABS_OR_EMPTY = 'an absolute path, or "" for none'


def _abs_or_empty(value: str) -> bool:
    return not value or value.startswith("/")


@dataclass(frozen=True)
class MapSettings(Section):
    """One `[[mqtt.map]]` entry: an MQTT filter <-> a bus pattern."""

    SECTION: ClassVar[str] = ""

    direction: str = option("in", choices=("in", "out", "both"))
    mqtt: str = option("", max_len=255)
    bus: str = option("", max_len=255)
    qos: int = option(1, min=0, max=2)
    retain: bool = option(False)
    codec: str = option("json", choices=("json", "raw", "text"))
    bus_qos: str = option("reliable", choices=QOS_CLASSES)

    def __post_init__(self) -> None:
        super().__post_init__()
        why = wildcards_of(self.mqtt, self.bus)
        if why is not None:
            key = "mqtt" if why.startswith("an MQTT") else "bus"
            raise ConfigError(key, getattr(self, key), why)


@dataclass(frozen=True)
class MqttSettings(Section):
    SECTION: ClassVar[str] = "mqtt"

    enabled: bool = option(False)
    host: str = option("127.0.0.1", max_len=253)
    port: int = option(1883, min=1, max=65535)
    tls: bool = option(False)
    ca_file: str = option("", valid=_abs_or_empty, expected=_ABS_OR_EMPTY)
    cert_file: str = option("", valid=_abs_or_empty, expected=_ABS_OR_EMPTY)
    key_file: str = option("", valid=_abs_or_empty, expected=_ABS_OR_EMPTY)
    username: str = option("", max_len=256)
    password_file: str = option("", valid=_abs_or_empty, expected=_ABS_OR_EMPTY)
    # A systemd credential holding the password (LoadCredential=NAME:...); wins over the file.
    password_credential: str = option("", max_len=128)
    client_id: str = option("", max_len=128)
    keepalive_s: int = option(30, min=5, max=3600)
    protocol: str = option("5", choices=("5", "3.1.1"))
    persistent_session: bool = option(True)
    session_expiry_s: int = option(86400, min=0, max=4294967295)
    reconnect_min_s: float = option(0.5, min=0.05, max=60.0)
    reconnect_max_s: float = option(30.0, min=0.1, max=3600.0, at_least="reconnect_min_s")
    max_payload_bytes: int = option(262144, min=16, max=268435455, reload=True)
    max_inflight: int = option(256, min=1, max=65535)
    outbox_max_messages: int = option(100000, min=1, max=100000000, reload=True)
    outbox_max_age_s: int = option(86400, min=1, max=31536000, reload=True)
    discovery: bool = option(True)
    discovery_prefix: str = option("homeassistant", max_len=64)
    state_interval_s: int = option(10, min=1, max=3600, reload=True)
    map: tuple[MapSettings, ...] = option(factory=tuple)


@dataclass(frozen=True)
class LinkSettings(Section):
    """One `[[peers.links]]` entry: a board this one dials."""

    SECTION: ClassVar[str] = ""

    name: str = option("", max_len=64)
    endpoint: str = option("", max_len=255)
    public_key: str = option("", max_len=64)
    send: tuple[str, ...] = option(factory=tuple, check=check_patterns)
    receive: tuple[str, ...] = option(factory=tuple, check=check_patterns)


@dataclass(frozen=True)
class PeersSettings(Section):
    SECTION: ClassVar[str] = "peers"

    enabled: bool = option(False)
    listen: str = option("", max_len=255)
    authorized_keys_dir: str = option(
        "/etc/loomd/peers.d", valid=_abs_or_empty, expected=_ABS_OR_EMPTY
    )
    receive: tuple[str, ...] = option(factory=tuple, check=check_patterns)
    links: tuple[LinkSettings, ...] = option(factory=tuple)
