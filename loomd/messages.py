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
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from loomd.errors import LoomdError

__all__ = [
    "ActionRecord",
    "AssistRequest",
    "AssistTurn",
    "ChatChunk",
    "ChatDone",
    "ChatMessage",
    "ChatRequest",
    "EventType",
    "HaState",
    "IntentInfo",
    "IntentVia",
    "PlayAudio",
    "PlayDone",
    "Policy",
    "Role",
    "SayRequest",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "Topic",
    "Transcript",
    "VoiceListen",
    "VoiceRelease",
    "VoiceState",
    "VoiceStateEvent",
    "WakeAction",
    "WakeClaim",
    "WakeDetected",
]


class Topic(StrEnum):
    LLM_CHAT = "llm.chat"  # ChatRequest (request/reply)
    ROUTE_DECISION = "loomd.route.decision"
    VOICE_TRANSCRIPT = "voice.transcript"  # Transcript
    VOICE_SAY = "voice.say"  # SayRequest
    VOICE_STATE = "voice.state"  # VoiceStateEvent
    VOICE_STOP = "voice.stop"  # barge-in / cancel playback and generation
    ASSIST_CONVERSE = "assist.converse"  # AssistRequest (request/reply: AssistTurn)
    ASSIST_TURN = "assist.turn"  # AssistTurn, one per finished turn
    # The voice hand-off (a satellite takes a turn): see the block at the end of this file.
    VOICE_WAKE = "voice.wake"  # WakeDetected (request/reply: WakeClaim)
    VOICE_LISTEN = "voice.listen"  # VoiceListen: stream the mic without a wake word
    VOICE_RELEASE = "voice.release"  # VoiceRelease: the claimant is done with the mic
    VOICE_PLAY = "voice.play"  # PlayAudio (request/reply: PlayDone)
    AUDIO_FRAMES = "audio.frames"  # audio.frames.<site>: raw s16le 20 ms frames, realtime
    HA_STATE = "ha.state"  # ha.state.<entity_id>: HaState, Home Assistant's state changes
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


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"  # a tool's result, answering the assistant's `tool_calls` by id


class ToolChoice(StrEnum):
    """OpenAI's `tool_choice` values; a tool's own name forces that tool."""

    AUTO = "auto"  # a tool call or a plain answer, the model chooses
    NONE = "none"  # a plain answer only
    REQUIRED = "required"  # one tool call


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ToolSpec(_Payload):
    """A tool offered to a model: OpenAI's function name rules (`[A-Za-z0-9_-]{1,64}`,
    unique within a request), a JSON-schema object for the arguments, and the broker
    capability (`name@version`) a call runs, when it is one."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    capability: str = ""

    def __post_init__(self) -> None:
        if not _TOOL_NAME.fullmatch(self.name):
            raise LoomdError(f"bad tool name {self.name!r}: 1-64 of A-Z a-z 0-9 _ -")
        if not isinstance(self.parameters, dict) or self.parameters.get("type") != "object":
            raise LoomdError(f"tool {self.name}: parameters must be a JSON schema object")


@dataclass(frozen=True)
class ToolCall(_Payload):
    """One call a model made: its id (answered by a `Role.TOOL` message with this
    `tool_call_id`), the tool's name and the arguments, already parsed from JSON."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, dict):
            raise LoomdError(f"tool call {self.name}: arguments must be an object")


def _tool_calls(items: Any) -> tuple[ToolCall, ...]:
    return tuple(ToolCall.from_payload(c) for c in (items or ()))


@dataclass(frozen=True)
class ChatMessage(_Payload):
    role: str  # a Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # role assistant: the calls it made
    tool_call_id: str = ""  # role tool: the call this answers

    def __post_init__(self) -> None:
        if self.role not in Role.__members__.values():
            raise LoomdError(f"bad message role {self.role!r}: one of {', '.join(Role)}")
        if self.role == Role.TOOL and not self.tool_call_id:
            raise LoomdError("a tool message needs the tool_call_id it answers")

    def to_payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [c.to_payload() for c in self.tool_calls]
        if self.tool_call_id:
            data["tool_call_id"] = self.tool_call_id
        return data

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> ChatMessage:
        return cls(**{**payload, "tool_calls": _tool_calls(payload.get("tool_calls"))})


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
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = ToolChoice.AUTO.value  # a ToolChoice, or one tool's name

    def __post_init__(self) -> None:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise LoomdError(f"tool names must be unique: {sorted(names)}")
        if self.tool_choice not in ToolChoice.__members__.values() and self.tool_choice not in names:
            raise LoomdError(f"tool_choice {self.tool_choice!r} is no ToolChoice and no tool's name")
        if self.tools and self.json_schema is not None:
            raise LoomdError("a request has tools or a json_schema, not both")

    def to_payload(self) -> dict[str, Any]:
        data = super().to_payload()
        data["messages"] = [m.to_payload() for m in self.messages]
        data["tools"] = [t.to_payload() for t in self.tools]
        return data

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> ChatRequest:
        data = dict(payload)
        data["messages"] = tuple(ChatMessage.from_payload(m) for m in data.get("messages", ()))
        if not data["messages"]:
            raise ValueError("messages is empty")
        data["policy"] = Policy.from_payload(data.get("policy") or {})
        data["tools"] = tuple(ToolSpec.from_payload(t) for t in data.get("tools") or ())
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
    tool_calls: tuple[ToolCall, ...] = ()  # the model called tools instead of answering

    def to_payload(self) -> dict[str, Any]:
        data = super().to_payload()
        data["tool_calls"] = [c.to_payload() for c in self.tool_calls]
        return data

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> ChatDone:
        return cls(**{**payload, "tool_calls": _tool_calls(payload.get("tool_calls"))})


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


# -- assist: words to actions ---------------------------------------------------------------
class IntentVia(StrEnum):
    LOCAL = "local"  # a sentence matched (hassil)
    LLM = "llm"  # the model chose a tool or answered
    NONE = "none"  # nothing understood the request


@dataclass(frozen=True)
class AssistRequest(_Payload):
    """Text for the assist, on `Topic.ASSIST_CONVERSE` (request/reply: an `AssistTurn`).
    `conversation_id` keeps a few turns of context (a voice site, a loomctl session);
    `speech_end_ns` (monotonic clock of the board) lets the turn time its actions from the
    end of speech."""

    text: str
    conversation_id: str = ""
    site: str = ""  # the voice site it was heard at ("" for typed text)
    language: str = ""  # "" for the assist's configured language
    speech_end_ns: int = 0
    utterance_id: str = ""


@dataclass(frozen=True)
class IntentInfo(_Payload):
    name: str = ""
    slots: dict[str, Any] = field(default_factory=dict)
    via: str = IntentVia.NONE.value


@dataclass(frozen=True)
class ActionRecord(_Payload):
    """One action a turn ran (or asked to confirm): the capability, its params, the
    broker's result code and result."""

    capability: str
    params: dict[str, Any] = field(default_factory=dict)
    code: str = ""  # a broker result code; "confirm" while it waits for a yes
    result: Any = None


@dataclass(frozen=True)
class AssistTurn(_Payload):
    """A finished turn: what was heard, understood, done and said, and when (ms from the
    end of speech when it is known, else from the text's arrival)."""

    transcript: str
    intent: IntentInfo = field(default_factory=IntentInfo)
    actions: tuple[ActionRecord, ...] = ()
    reply: str = ""
    route: str = ""  # "" (local intent), or the router's route of the LLM turn
    timings: dict[str, float] = field(default_factory=dict)
    conversation_id: str = ""
    site: str = ""
    utterance_id: str = ""
    continue_conversation: bool = False  # the reply asks back: listen again without a wake word
    error: str = ""

    def to_payload(self) -> dict[str, Any]:
        data = super().to_payload()
        data["actions"] = [a.to_payload() for a in self.actions]
        return data

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> AssistTurn:
        data = dict(payload)
        data["intent"] = IntentInfo.from_payload(data.get("intent") or {})
        data["actions"] = tuple(ActionRecord.from_payload(a) for a in data.get("actions") or ())
        return cls(**data)


# -- the voice hand-off: another part takes a turn (Home Assistant's pipeline) ---------------
# On a wake the voice component asks on `voice.wake` (request/reply, short deadline) while
# it starts listening itself; a `WakeClaim` with `STREAM` makes it publish the microphone's
# frames (those since the wake first) on `audio.frames.<site>` until a `VoiceRelease`
# (or its utterance limit), `DROP` ends the turn, `LOCAL` or no answer keeps it local.
# `voice.play` plays audio through the board's sink (echo reference, barge-in and the
# self-wake guard included) and answers when it has played.
class WakeAction(StrEnum):
    LOCAL = "local"  # loomd's own pipeline takes the turn
    STREAM = "stream"  # the claimant takes it: stream the mic to it
    DROP = "drop"  # nobody takes it (muted, a wake word switched off)


@dataclass(frozen=True)
class WakeDetected(_Payload):
    word: str  # the wake model's name, e.g. "hey_jarvis_v0.1"
    score: float
    site: str = "local"
    utterance_id: str = ""

    @property
    def phrase(self) -> str:
        return self.word.split("_v")[0].replace("_", " ")


@dataclass(frozen=True)
class WakeClaim(_Payload):
    action: WakeAction = WakeAction.LOCAL
    by: str = ""

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> WakeClaim:
        return cls(**{**payload, "action": WakeAction(str(payload.get("action", "local")))})


@dataclass(frozen=True)
class VoiceListen(_Payload):
    """Open the microphone without a wake word and stream it (a question asked back)."""

    site: str = "local"
    utterance_id: str = ""


@dataclass(frozen=True)
class VoiceRelease(_Payload):
    site: str = "local"
    utterance_id: str = ""
    reason: str = ""  # "end_of_speech", "error: ...", "disconnected"


@dataclass(frozen=True)
class PlayAudio(_Payload):
    """16 kHz mono s16le audio to play on the board's sink."""

    pcm: bytes
    site: str = "local"
    utterance_id: str = ""
    announcement: bool = False  # cuts what is playing

    def __post_init__(self) -> None:
        if not isinstance(self.pcm, bytes) or len(self.pcm) % 2:
            raise LoomdError("PlayAudio.pcm: s16le bytes (an even length)")


@dataclass(frozen=True)
class PlayDone(_Payload):
    played: bool  # False: cut off (barge-in, stop) or nothing to play on
    seconds: float = 0.0


@dataclass(frozen=True)
class HaState(_Payload):
    """A Home Assistant entity's new state (`ha.state.<entity_id>`), from its WebSocket API."""

    entity_id: str
    state: str
    old_state: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # time.time() when loomd received it
