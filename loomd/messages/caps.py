"""Capabilities and collaboration: the action broker's protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from loomd.errors import CallError, LoomdError
from loomd.messages.base import Topic, _Payload

# -- the protocol between parts: capabilities, collaboration, errors, control --------------
# (issue 20: each payload that crossed parts as a dict has its class here)


class CapCode(StrEnum):
    """A capability call's result code: whose fault a failure was."""

    OK = "ok"
    ERROR = "error"  # the provider raised (a bug, or an unexpected failure)
    TIMEOUT = "timeout"  # the deadline passed
    INVALID_PARAMS = "invalid_params"  # the caller's params do not fit the schema
    CAPABILITY_ERROR = "capability_error"  # the provider refused (CapabilityError)
    PROVIDER_UNAVAILABLE = "provider_unavailable"  # no provider, or it went away
    FORBIDDEN = "forbidden"  # the caller's identity may not call it (ACL, allowed_callers)


def _check_call(what: str, cap: Any, params: Any, timeout: Any) -> None:
    if not isinstance(cap, str) or not cap:
        raise LoomdError(f"{what}: cap must be a capability name")
    if not isinstance(params, dict):
        raise LoomdError(f"{what} {cap}: params must be an object")
    if not isinstance(timeout, int | float) or timeout < 0:
        raise LoomdError(f"{what} {cap}: timeout must be a number of seconds >= 0")


@dataclass(frozen=True)
class CapInvoke(_Payload, topic=Topic.CAPS_INVOKE):
    """Call a capability: on `caps.invoke` to the action broker, and from the broker on
    `caps.call.<provider>` to an SDK provider. `timeout` 0 takes the broker's default."""

    cap: str
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 0.0  # seconds
    key: str | None = None  # idempotency key

    def __post_init__(self) -> None:
        _check_call("CapInvoke", self.cap, self.params, self.timeout)
        if self.key is not None and not isinstance(self.key, str):
            raise LoomdError(f"CapInvoke {self.cap}: key must be a string")

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> CapInvoke:
        # senders before the class wrote null for "none"
        return cls(**{**payload, "params": payload.get("params") or {},
                      "timeout": payload.get("timeout") or 0.0})  # fmt: skip


@dataclass(frozen=True)
class CapResult(_Payload, type="caps.result"):
    """What a capability call gave: the code, the value (ok) or the error text."""

    code: str  # a CapCode
    value: Any = None
    error: str = ""
    provider: str = ""

    @property
    def ok(self) -> bool:
        return self.code == CapCode.OK

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "provider": self.provider}
        if self.ok:
            out["value"] = self.value
        else:
            out["error"] = self.error
        return out

    @classmethod
    def from_payload(cls, payload: Any) -> CapResult:
        """Never raises: a malformed answer is itself a result, code `error`."""
        d = payload
        if not isinstance(d, dict) or d.get("code") not in CapCode.__members__.values():
            return cls(CapCode.ERROR, error=f"malformed result: {d!r:.80}")
        return cls(
            str(d["code"]), d.get("value"), str(d.get("error") or ""), str(d.get("provider") or "")
        )

    def unwrap(self) -> Any:
        if not self.ok:
            raise CallError(self.code, self.error)
        return self.value


@dataclass(frozen=True)
class CapInfo(_Payload):
    """One capability as the broker lists it (`caps.list`, `loomctl caps`)."""

    name: str
    version: int = 1
    description: str = ""
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    provider: str = ""
    kind: str = ""  # local | sdk | mcp
    calls: int = 0
    # For the assist (see CapabilitySpec): sentence templates, ask back first, sensitive,
    # and the devices the capability acts for ({id, name, domain, area?, aliases?}).
    sentences: tuple[str, ...] = ()
    confirm: bool = False
    sensitive: bool = False
    devices: tuple[dict[str, Any], ...] = ()
    allowed_callers: tuple[str, ...] = ()  # identity patterns; empty: as the ACL says

    @property
    def full(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> CapInfo:
        return cls(**{**payload, "sentences": tuple(payload.get("sentences") or ()),
                      "devices": tuple(dict(d) for d in payload.get("devices") or ()),
                      "allowed_callers": tuple(payload.get("allowed_callers") or ())})  # fmt: skip


@dataclass(frozen=True)
class CapsList(_Payload, type="caps.list.reply"):
    """The answer to a request on `caps.list`: every capability with its schema."""

    caps: tuple[CapInfo, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        return {"caps": [c.to_payload() for c in self.caps]}

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> CapsList:
        return cls(tuple(CapInfo.from_payload(c) for c in payload.get("caps") or ()))


@dataclass(frozen=True)
class CapsRegister(_Payload, topic=Topic.CAPS_REGISTER):
    """An SDK provider offers capabilities (request/reply: `CapsRegistered`). Each item of
    `caps` is a capability as `CapabilitySpec.to_dict()` writes it; `token` ties a later
    `CapsUnregister` to this registration."""

    provider: str
    caps: tuple[dict[str, Any], ...] = ()
    token: str = ""
    # where the provider takes one-hop calls (`CapDirectCall`), "" for none: a local
    # unix socket (`ipc://@name`, loomd.sdk.direct) the callers' grants name; or, for a
    # provider inside the daemon, `inproc://...` (loomd.agents.direct.offer_in_process)
    endpoint: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.provider, str) or not self.provider:
            raise LoomdError("CapsRegister: provider must be a non-empty string")
        if not isinstance(self.endpoint, str) or (
            self.endpoint and not self.endpoint.startswith(("ipc://", "inproc://"))
        ):
            raise LoomdError(
                "CapsRegister: endpoint must be an ipc:// or inproc:// endpoint or empty"
            )

    def to_payload(self) -> dict[str, Any]:
        out = {"provider": self.provider, "caps": list(self.caps), "token": self.token}
        if self.endpoint:
            out["endpoint"] = self.endpoint
        return out

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> CapsRegister:
        caps = payload.get("caps") or ()
        if not isinstance(caps, list | tuple):
            raise ValueError("caps must be a list")
        return cls(**{**payload, "caps": tuple(caps)})


@dataclass(frozen=True)
class CapsRegistered(_Payload, type="caps.registered"):
    ok: bool
    registered: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)  # name -> why
    lease_s: float = 0.0  # renew on caps.lease.<provider> every lease_s / 5
    error: str = ""
    # the key (hex) of the HMAC on the grants the broker gives callers for one-hop calls
    # to this provider's `endpoint` ("" when it has none)
    grant_key: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {**super().to_payload(), "registered": list(self.registered)}

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> CapsRegistered:
        return cls(**{**payload, "registered": tuple(payload.get("registered") or ())})


@dataclass(frozen=True)
class CapsUnregister(_Payload, topic=Topic.CAPS_UNREGISTER):
    provider: str
    token: str = ""


@dataclass(frozen=True)
class CapsLease(_Payload, type="caps.lease"):
    """A provider's lease renewal (`caps.lease.<provider>`, realtime), carrying what the
    broker accounts for it: the one-hop calls served since the last renewal, by capability
    (full name) and result code."""

    calls: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> CapsLease:
        calls = payload.get("calls") or {}
        if not isinstance(calls, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in calls.items()
        ):
            raise ValueError("calls must map a capability to {code: count}")
        return cls({k: {str(c): n for c, n in v.items() if type(n) is int and n > 0}
                    for k, v in calls.items()})  # fmt: skip


@dataclass(frozen=True)
class CapsGone(_Payload, type=Topic.CAPS_GONE):
    """The broker dropped provider `provider` (`caps.gone.<provider>`, realtime): its lease
    ran out or it unregistered. A caller's one-hop calls to it end `provider_unavailable`."""

    provider: str
    why: str = ""


@dataclass(frozen=True)
class CapGrantAsk(_Payload, topic=Topic.CAPS_GRANT):
    """May I call `cap` straight at its provider? (request/reply: `CapGrant`)."""

    cap: str

    def __post_init__(self) -> None:
        if not isinstance(self.cap, str) or not self.cap:
            raise LoomdError("CapGrantAsk: cap must be a capability name")


@dataclass(frozen=True)
class CapGrant(_Payload, type="caps.grant.reply"):
    """The broker's answer to `CapGrantAsk`. `code` ok with an `endpoint`: call the provider
    there with `CapDirectCall`s carrying `caller`, `expires` and `mac` until `expires`
    (`ttl_s` from now). Anything else (a refusal, a provider without an endpoint, an
    in-daemon one): call through the broker (`caps.invoke`), which decides and reports."""

    code: str  # a CapCode
    cap: str = ""  # the full name (name@version) the grant is for
    provider: str = ""
    endpoint: str = ""
    caller: str = ""  # the caller's identity, as the broker knows it
    expires: float = 0.0  # unix time
    mac: str = ""  # hex HMAC-SHA256 of (cap, provider, caller, uid, expires), provider's key
    ttl_s: float = 0.0
    error: str = ""
    uid: int = -1  # a local caller's uid: the provider takes the grant only from that uid

    @property
    def direct(self) -> bool:
        return self.code == CapCode.OK and bool(self.endpoint) and bool(self.mac)


@dataclass(frozen=True)
class CapDirectCall(_Payload, type="caps.direct"):
    """A one-hop call, caller -> provider: `CapInvoke`'s fields plus the broker's grant. The
    provider runs it only if the grant's HMAC checks out with its key, the grant names this
    capability, has not expired and (`uid` >= 0) comes from a process of that uid; its
    answer is a `CapResult`."""

    cap: str  # full name, as granted
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 0.0
    caller: str = ""
    expires: float = 0.0
    mac: str = ""
    uid: int = -1

    def __post_init__(self) -> None:
        _check_call("CapDirectCall", self.cap, self.params, self.timeout)
        if (
            not isinstance(self.expires, int | float)
            or not isinstance(self.mac, str)
            or type(self.uid) is not int
        ):
            raise LoomdError(f"CapDirectCall {self.cap}: malformed grant")
        if not isinstance(self.caller, str):
            raise LoomdError(f"CapDirectCall {self.cap}: caller must be a string")

    def to_payload(self) -> dict[str, Any]:
        # every call: not `asdict`, which deep-copies the params (a third of a call's encode)
        return {"cap": self.cap, "params": self.params, "timeout": self.timeout,
                "caller": self.caller, "expires": self.expires, "mac": self.mac,
                "uid": self.uid}  # fmt: skip


@dataclass(frozen=True)
class CapsChanged(_Payload, topic=Topic.CAPS_CHANGED):
    """The broker's catalogue changed (a provider came or went): read `caps.list` again.
    Announced once per burst of changes, so readers need not poll."""

    count: int  # capabilities listed now


@dataclass(frozen=True)
class BarrierRequest(_Payload, topic=Topic.COLLAB_BARRIER):
    """Arrive at barrier `name` of `n` members (request/reply: `BarrierReply`)."""

    name: str
    n: int
    timeout: float = 10.0
    member: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not isinstance(self.n, int) or self.n < 1:
            raise LoomdError("a barrier needs a name and n >= 1")


@dataclass(frozen=True)
class BarrierReply(_Payload, type="collab.barrier.reply"):
    ok: bool
    arrived: int = 0
    error: str = ""
