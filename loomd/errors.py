"""Typed errors. They become `loomd.error` events at the edges and never kill the loop."""

from __future__ import annotations

from typing import Any


class LoomdError(Exception):
    """Base of every error loomd raises on purpose."""

    code = "error"


class ConfigError(LoomdError):
    """A configuration value is unknown, of the wrong type or out of range."""

    code = "config"

    def __init__(self, key: str, value: Any, expected: str, source: str = "") -> None:
        self.key, self.value, self.expected, self.source = key, value, expected, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key} = {value!r}: expected {expected}")


class ProtocolError(LoomdError):
    """A frame broke the wire contract (malformed, oversized, unknown version, bad topic)."""

    code = "protocol"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class StateError(LoomdError):
    code = "state"


class InvalidKey(StateError, ValueError):
    """A state key or namespace that LMDB cannot store (empty, too long, NUL)."""

    code = "invalid_key"


class StateFullError(StateError):
    """The LMDB map reached its configured maximum size."""

    code = "state_full"


class RequestTimeout(LoomdError):
    code = "timeout"


class NotRunning(LoomdError):
    """No daemon answers on the socket."""

    code = "not_running"


class PermissionDenied(LoomdError):
    code = "permission"


class RemoteError(LoomdError):
    """The daemon answered a control request with an error."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class CallError(LoomdError):
    """`ctx.call` failed; `code` is one of the result codes other than ok."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
