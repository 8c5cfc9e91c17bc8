"""Translating between MQTT topic filters (`a/+/c`, `a/#`) and bus patterns (`a.*.c`, `a.#`).

A mapping pairs one MQTT filter with one bus pattern that has the same wildcards in the same
order; a concrete topic on one side is translated by capturing what its wildcards matched
and substituting it into the other side. Payload codecs live here too: they are pure
functions, tested without a broker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loomd.bus.topics import validate_pattern, validate_topic
from loomd.errors import LoomdError, ProtocolError

__all__ = ["CodecError", "Translator", "decode_payload", "encode_payload", "wildcards_of"]

_BUS_BAD = frozenset("./+#*") | frozenset(" \t\r\n\x00")


class CodecError(LoomdError):
    """A payload that the mapping's codec cannot carry (malformed JSON, bad UTF-8, ...)."""


def mqtt_wildcards(flt: str) -> list[str]:
    return [p for p in flt.split("/") if p in ("+", "#")]


def bus_wildcards(pattern: str) -> list[str]:
    return ["+" if p == "*" else p for p in pattern.split(".") if p in ("*", "#")]


def wildcards_of(flt: str, pattern: str) -> str | None:
    """Why `flt` (MQTT) and `pattern` (bus) cannot be a mapping, or None if they can."""
    parts = flt.split("/")
    if not flt:
        return "an MQTT topic filter like sensors/+/temp"
    for i, p in enumerate(parts):
        if ("+" in p or "#" in p) and p not in ("+", "#"):
            return "an MQTT filter whose wildcards are whole levels"
        if p == "#" and i != len(parts) - 1:
            return "an MQTT filter with # only as its last level"
    try:
        validate_pattern(pattern)
    except ProtocolError as exc:
        return f"a bus pattern ({exc.detail or exc.reason})"
    segs = pattern.split(".")
    if "#" in segs[:-1]:
        return "a bus pattern with # only as its last segment (to mirror MQTT)"
    if mqtt_wildcards(flt) != bus_wildcards(pattern):
        return f"a bus pattern with the same wildcards in the same order as {flt!r}"
    return None


@dataclass(frozen=True, slots=True)
class Translator:
    """One mapping's two sides; `to_bus` and `to_mqtt` translate concrete topics."""

    mqtt: str
    bus: str

    def _capture(self, parts: list[str], pattern: list[str]) -> list[list[str]] | None:
        caught: list[list[str]] = []
        for i, p in enumerate(pattern):
            if p == "#":
                caught.append(parts[i:])
                return caught
            if i >= len(parts):
                return None
            if p in ("+", "*"):
                caught.append([parts[i]])
            elif p != parts[i]:
                return None
        return caught if len(parts) == len(pattern) else None

    @staticmethod
    def _fill(pattern: list[str], caught: list[list[str]]) -> list[str]:
        out: list[str] = []
        it = iter(caught)
        for p in pattern:
            if p in ("+", "*", "#"):
                out.extend(next(it))
            else:
                out.append(p)
        return out

    def to_bus(self, topic: str) -> str | None:
        """The bus topic for an MQTT topic matching the filter; None if it does not match.
        Raises CodecError for a level the bus cannot name (a dot, a space, empty)."""
        caught = self._capture(topic.split("/"), self.mqtt.split("/"))
        if caught is None:
            return None
        for group in caught:
            for level in group:
                if not level or _BUS_BAD.intersection(level):
                    raise CodecError(f"MQTT topic {topic!r}: level {level!r} has no bus name")
        out = ".".join(self._fill(self.bus.split("."), caught))
        try:
            return validate_topic(out)
        except ProtocolError as exc:
            raise CodecError(f"MQTT topic {topic!r} -> {out!r}: {exc}") from None

    def to_mqtt(self, topic: str) -> str | None:
        caught = self._capture(topic.split("."), self.bus.split("."))
        if caught is None:
            return None
        return "/".join(self._fill(self.mqtt.split("/"), caught))


def decode_payload(codec: str, data: bytes) -> Any:
    """MQTT payload -> bus payload. json: the decoded value (carried as CBOR on the bus)."""
    if codec == "raw":
        return bytes(data)
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"not UTF-8 at byte {exc.start}") from None
    if codec == "text":
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CodecError(f"malformed JSON: {exc}") from None


def encode_payload(codec: str, value: Any) -> bytes:
    """Bus payload -> MQTT payload."""
    if codec == "raw":
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        raise CodecError(f"codec raw carries bytes, not {type(value).__name__}")
    if codec == "text":
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        return json.dumps(value, separators=(",", ":")).encode()
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise CodecError(f"not representable as JSON: {exc}") from None
