"""Payloads that cross parts: small frozen dataclasses with `to_payload()`/`from_payload()`.

No part parses another part's dicts by hand: the voice pipeline asks the router for a chat
turn with a `ChatRequest`, the router streams `ChatChunk`s and ends with a `ChatDone` on
the request's thread, an agent makes the board speak with a `SayRequest`, and so on.
Topics and event types are `StrEnum`s here too.

Chat on the bus: publish a `ChatRequest` on `Topic.LLM_CHAT` with `reply_to` set (the Bus
API's `request()` does this). The router answers on `reply_to` with the request's id as
correlation id: zero or more `ChatChunk` events (type `EventType.LLM_CHUNK`) when
`stream` is true, then one `ChatDone` (`EventType.LLM_DONE`) with `phase="final"`, or a
`ChatDone` with `error` set. A hybrid route sends a `phase="quick"` turn (chunks + done)
and then a `phase="refine"` one on the same thread; voice turns are never routed hybrid.
A requester that streams subscribes to `reply_to` before publishing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from loomd.errors import LoomdError

__all__ = [
    "ChatChunk",
    "ChatDone",
    "ChatMessage",
    "ChatRequest",
    "EventType",
    "Policy",
    "SayRequest",
    "Topic",
    "Transcript",
    "VoiceState",
    "VoiceStateEvent",
]


class Topic(StrEnum):
    LLM_CHAT = "llm.chat"  # ChatRequest (request/reply)
    ROUTE_DECISION = "loomd.route.decision"
    VOICE_TRANSCRIPT = "voice.transcript"  # Transcript
    VOICE_SAY = "voice.say"  # SayRequest
    VOICE_STATE = "voice.state"  # VoiceStateEvent
    VOICE_STOP = "voice.stop"  # barge-in / cancel playback and generation
    ERROR = "loomd.error"


class EventType(StrEnum):
    LLM_CHUNK = "llm.chunk"
    LLM_DONE = "llm.done"


class VoiceState(StrEnum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class _Payload:
    """`to_payload()` gives a CBOR-friendly dict; `from_payload()` checks and rebuilds."""

    def to_payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_payload(cls, payload: Any) -> Self:
        if not isinstance(payload, dict):
            raise LoomdError(f"{cls.__name__}: expected a map, got {type(payload).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(payload) - names
        if unknown:
            raise LoomdError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        try:
            return cls._build(payload)
        except (TypeError, ValueError) as exc:
            raise LoomdError(f"{cls.__name__}: {exc}") from None

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> Self:
        return cls(**payload)


@dataclass(frozen=True)
class Policy(_Payload):
    """Routing policy; None fields take the router's configured defaults."""

    privacy: str | None = None  # public | sensitive | private | local-only
    latency_budget_ms: int | None = None
    cost_cap: float | None = None
    quality_threshold: float | None = None
    allow_cloud: bool | None = None


@dataclass(frozen=True)
class ChatMessage(_Payload):
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class ChatRequest(_Payload):
    messages: tuple[ChatMessage, ...]
    policy: Policy = field(default_factory=Policy)
    max_tokens: int = 256
    temperature: float = 0.7
    stream: bool = True
    priority: str = "background"  # voice | interactive | background
    json_schema: dict[str, Any] | None = None
    agent: str = ""  # who asks (per-agent policy defaults)

    def to_payload(self) -> dict[str, Any]:
        data = super().to_payload()
        data["messages"] = [m.to_payload() for m in self.messages]
        return data

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> ChatRequest:
        data = dict(payload)
        data["messages"] = tuple(ChatMessage.from_payload(m) for m in data.get("messages", ()))
        if not data["messages"]:
            raise ValueError("messages is empty")
        data["policy"] = Policy.from_payload(data.get("policy") or {})
        return cls(**data)


@dataclass(frozen=True)
class ChatChunk(_Payload):
    text: str
    index: int


@dataclass(frozen=True)
class ChatDone(_Payload):
    text: str = ""
    route: str = ""  # local | cloud | hybrid | deny
    phase: str = "final"  # quick | refine | final
    decision_id: str = ""
    tokens: int = 0
    error: str = ""  # set when the turn failed or was denied; text is then empty


@dataclass(frozen=True)
class Transcript(_Payload):
    text: str
    utterance_id: str
    site: str = "local"
    confidence: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> ms since speech end


@dataclass(frozen=True)
class SayRequest(_Payload):
    text: str
    priority: str = "normal"  # normal | announcement (interrupts)
    site: str = "local"
    utterance_id: str = ""  # the turn this answers, if any


@dataclass(frozen=True)
class VoiceStateEvent(_Payload):
    state: VoiceState
    site: str = "local"
    utterance_id: str = ""

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> VoiceStateEvent:
        return cls(**{**payload, "state": VoiceState(str(payload.get("state")))})
