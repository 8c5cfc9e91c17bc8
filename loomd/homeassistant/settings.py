"""`[homeassistant]`: the board as Home Assistant's voice satellite (ESPHome native API)."""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from loomd.config import Problem, Section, option
from loomd.errors import ConfigError

__all__ = ["MODES", "HomeAssistantSettings", "decode_key"]

MODES = ("satellite", "local")
_KEY_TEXT = 'a base64 32-byte key (as `openssl rand -base64 32` prints), or "" for plaintext'


def decode_key(key: str) -> bytes | None:
    """The Noise PSK, or None for plaintext; raises ValueError when it is malformed."""
    if not key:
        return None
    raw = binascii.a2b_base64(key.encode())
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes")
    return raw


def _key_ok(value: str) -> bool:
    try:
        decode_key(value)
    except (ValueError, binascii.Error):
        return False
    return True


def _check_modes(value: Mapping[str, str]) -> Problem | None:
    for word, mode in value.items():
        if mode not in MODES:
            return (f".{word}", mode, " or ".join(MODES))
    return None


@dataclass(frozen=True)
class HomeAssistantSettings(Section):
    SECTION: ClassVar[str] = "homeassistant"

    enabled: bool = option(False)
    # The ESPHome node name ("" = loomd-<device id>) and what HA shows.
    name: str = option("", max_len=63)
    friendly_name: str = option("", max_len=120)
    area: str = option("", max_len=120)
    # "" = all interfaces when a key is set, loopback without one (an open API stays local).
    host: str = option("", max_len=255)
    port: int = option(6053, min=0, max=65535)
    encryption_key: str = option("", valid=_key_ok, expected=_KEY_TEXT)
    # Or a file holding it (a systemd credential, say), read at start; wins over the value.
    encryption_key_file: str = option("", valid=lambda v: not v or v.startswith("/"),
                                      expected='an absolute path, or "" for none')  # fmt: skip
    # A systemd credential holding the token (LoadCredential=NAME:...); wins over the file.
    token_credential: str = option("", max_len=128)
    mdns: bool = option(True)
    # Addresses zeroconf answers on ([] = every interface); tests use ["127.0.0.1"].
    mdns_interfaces: tuple[str, ...] = option(factory=tuple)
    site: str = option("local", max_len=64)  # the voice site it serves
    # Who takes a wake word's turn: "satellite" = HA's pipeline, "local" = loomd's own.
    mode: str = option("satellite", choices=MODES, reload=True)
    wake_modes: Mapping[str, str] = option(factory=dict, check=_check_modes, reload=True)
    media_timeout_s: float = option(30.0, min=1.0, max=600.0, reload=True)
    # Longest a turn streams the microphone to HA before the board ends it (HA's VAD
    # waits for speech that never comes: a wake word and then silence).
    max_stream_s: float = option(10.0, min=1.0, max=60.0, reload=True)
    # HA's WebSocket API (its entities, state changes as `ha.state.<entity_id>`, service
    # calls): its base URL ("" = off) and a file holding a long-lived access token.
    url: str = option("", max_len=1024)
    token_file: str = option("", valid=lambda v: not v or v.startswith("/"),
                             expected='an absolute path, or "" for none')  # fmt: skip
    # Longest wait between two attempts to reach HA again (the wait doubles from 0.5 s).
    reconnect_max_s: float = option(30.0, min=0.5, max=600.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name and not all(c.isalnum() or c == "-" for c in self.name):
            raise ConfigError("name", self.name, "letters, digits and '-' (a host name)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError("homeassistant.url", self.url, 'an http(s) URL, or "" for none')
        if self.url and not (self.token_file or self.token_credential):
            raise ConfigError("homeassistant.token_file", "", "a token file when url is set")

    def mode_of(self, word: str) -> str:
        return self.wake_modes.get(word, self.mode)
