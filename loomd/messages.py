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
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple, Protocol, Self, TypeVar

from loomd.errors import CallError, LoomdError

__all__ = [
    "ActionRecord",
    "AssistRequest",
    "AssistTurn",
    "ChatChunk",
    "ChatDone",
    "ChatMessage",
    "ChatRequest",
    "DeviceState",
    "Domain",
    "EventType",
    "HaState",
    "HomeArea",
    "HomeDevice",
    "HomeSnapshot",
    "IntentInfo",
    "IntentVia",
    "MqttAck",
    "MqttFollow",
    "MqttMessage",
    "MqttPublish",
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
    "Vocabulary",
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
    CAPS_INVOKE = "caps.invoke"  # CapInvoke (request/reply: CapResult)
    CAPS_LIST = "caps.list"  # request: CapsList
    CAPS_REGISTER = "caps.register"  # CapsRegister (request/reply: CapsRegistered)
    CAPS_CHANGED = "caps.changed"  # CapsChanged: the broker's catalogue changed
    CAPS_UNREGISTER = "caps.unregister"  # CapsUnregister
    COLLAB_BARRIER = "collab.barrier"  # BarrierRequest (request/reply: BarrierReply)
    VOICE_MUTE = "voice.mute"  # VoiceMute
    ROUTE_DECISION = "loomd.route.decision"
    VOICE_TRANSCRIPT = "voice.transcript"  # Transcript
    VOICE_SAY = "voice.say"  # SayRequest
    VOICE_STATE = "voice.state"  # VoiceStateEvent
    VOICE_STOP = "voice.stop"  # barge-in / cancel playback and generation
    ASSIST_CONVERSE = "assist.converse"  # AssistRequest (request/reply: AssistTurn)
    ASSIST_TURN = "assist.turn"  # AssistTurn, one per finished turn
    ASSIST_VOCABULARY = "assist.vocabulary"  # request/reply and event: Vocabulary
    MQTT_PUBLISH = "mqtt.publish"  # MqttPublish (request/reply: MqttAck)
    MQTT_FOLLOW = "mqtt.follow"  # MqttFollow (request/reply: MqttAck); then MqttMessage events
    HOME_STATE = "home.state"  # home.state.<device id>: DeviceState
    HOME_REGISTRY = "home.registry"  # request/reply: HomeSnapshot
    HOME_CHANGED = "home.changed"  # HomeSnapshot, when devices or areas change
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


class Received(Protocol):
    """What `from_event()` reads of an event (the bus's `Event` has both)."""

    @property
    def type(self) -> str: ...

    @property
    def payload(self) -> Any: ...


E_co = TypeVar("E_co", covariant=True)


class Publisher(Protocol[E_co]):
    """What `publish()` needs of a bus (the Bus API, `LocalBus` and the SDK `Client`)."""

    def publish(
        self, topic: str, payload: Any = ..., *, qos: str = ..., wait: bool = ...,
        type: str | None = ...,
    ) -> Awaitable[E_co]: ...  # fmt: skip


class Replier(Protocol[E_co]):
    def reply(
        self, request: Any, payload: Any = ..., *, type: str | None = ...
    ) -> Awaitable[E_co]: ...


class Outgoing(NamedTuple):
    """A message made ready for the bus: `bus.publish(o.topic, o.payload, type=o.type)`."""

    topic: str
    type: str
    payload: dict[str, Any]


class _Payload:
    """`to_payload()` gives a CBOR-friendly dict; `from_payload()` checks and rebuilds.

    A class is bound to its topic and event type the way Wyoming binds an event type to
    its class: `class Transcript(_Payload, topic=Topic.VOICE_TRANSCRIPT)`. The event type
    is the topic unless `type=` names one (replies, and topics with a variable segment,
    have only a type). Then `Transcript.is_type(ev.type)`, `t.event()`,
    `await t.publish(bus)`, `await r.respond(bus, request)` and `Transcript.from_event(ev)`
    replace hand-written topics and dict parsing."""

    TOPIC: ClassVar[str] = ""
    TYPE: ClassVar[str] = ""
    QOS: ClassVar[str] = "reliable"  # the class a publish() uses unless told

    def __init_subclass__(
        cls, *, topic: str = "", type: str = "", qos: str = "", **kw: Any
    ) -> None:
        super().__init_subclass__(**kw)
        if topic:
            cls.TOPIC = str(topic)
        if type or topic:
            cls.TYPE = str(type or topic)
        if qos:
            cls.QOS = str(qos)

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

    # -- the binding -------------------------------------------------------------------------
    @classmethod
    def is_type(cls, event_type: str) -> bool:
        return bool(cls.TYPE) and event_type == cls.TYPE

    @classmethod
    def from_event(cls, ev: Received) -> Self:
        """The message an event carries; `LoomdError` if it is of another type or malformed."""
        if cls.TYPE and ev.type != cls.TYPE:
            raise LoomdError(f"{cls.__name__}: expected an event of type {cls.TYPE}, got {ev.type}")
        return cls.from_payload(ev.payload)

    def event(self, topic: str = "") -> Outgoing:
        """Topic, type and payload to publish; `topic` for classes bound to a type only."""
        where = topic or self.TOPIC
        if not where:
            raise LoomdError(f"{type(self).__name__} has no topic of its own: name one")
        return Outgoing(where, self.TYPE or where, self.to_payload())

    async def publish(
        self, bus: Publisher[E_co], topic: str = "", *, qos: str = "", wait: bool = True
    ) -> E_co:
        out = self.event(topic)
        return await bus.publish(
            out.topic, out.payload, qos=qos or self.QOS, wait=wait, type=out.type
        )

    async def respond(self, bus: Replier[E_co], request: Any) -> E_co:
        """Answer `request` (an event with `reply_to`) with this message."""
        return await bus.reply(request, self.to_payload(), type=self.TYPE or None)


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
class ChatRequest(_Payload, topic=Topic.LLM_CHAT):
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
        choice = self.tool_choice
        if choice not in ToolChoice.__members__.values() and choice not in names:
            raise LoomdError(f"tool_choice {choice!r} is no ToolChoice and no tool's name")
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
class ChatChunk(_Payload, type=EventType.LLM_CHUNK):
    text: str
    index: int


@dataclass(frozen=True)
class ChatDone(_Payload, type=EventType.LLM_DONE):
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
class Transcript(_Payload, topic=Topic.VOICE_TRANSCRIPT):
    text: str
    utterance_id: str
    site: str = "local"
    confidence: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> ms since speech end


@dataclass(frozen=True)
class SayRequest(_Payload, topic=Topic.VOICE_SAY):
    text: str
    priority: str = "normal"  # normal | announcement (interrupts)
    site: str = "local"
    utterance_id: str = ""  # the turn this answers, if any


@dataclass(frozen=True)
class VoiceStateEvent(_Payload, topic=Topic.VOICE_STATE, qos="realtime"):
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
class AssistRequest(_Payload, topic=Topic.ASSIST_CONVERSE):
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
class AssistTurn(_Payload, topic=Topic.ASSIST_TURN):
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


@dataclass(frozen=True)
class Vocabulary(_Payload):
    """Names the assist knows (devices, aliases, areas, capability words): the speech to
    text stage's initial prompt, so whisper spells them the way the house does."""

    words: tuple[str, ...] = ()
    language: str = "en"

    @property
    def prompt(self) -> str:
        return ", ".join(self.words)

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> Vocabulary:
        return cls(**{**payload, "words": tuple(str(w) for w in payload.get("words") or ())})


# -- MQTT from the bus ------------------------------------------------------------------------
@dataclass(frozen=True)
class MqttPublish(_Payload):
    """Publish one message through the MQTT bridge (`Topic.MQTT_PUBLISH`, request/reply).
    Answered with an `MqttAck` once the message is durable in the outbox (QoS >= 1) or
    handed to the socket (QoS 0)."""

    topic: str
    payload: bytes = b""
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        if not self.topic or any(c in self.topic for c in "+#\0"):
            raise LoomdError(f"bad MQTT topic {self.topic!r}: no wildcards, not empty")
        if self.qos not in (0, 1, 2):
            raise LoomdError(f"bad MQTT qos {self.qos!r}: 0, 1 or 2")
        if isinstance(self.payload, str):
            object.__setattr__(self, "payload", self.payload.encode())
        if not isinstance(self.payload, bytes):
            raise LoomdError("an MQTT payload is bytes or text")


@dataclass(frozen=True)
class MqttFollow(_Payload):
    """Ask the bridge to subscribe to MQTT topic filters and publish each message that
    arrives as an `MqttMessage` on `bus_topic` (`Topic.MQTT_FOLLOW`, request/reply). The
    bridge keeps the filters across reconnects; a new request from the same `owner`
    replaces its filters."""

    owner: str
    filters: tuple[str, ...]
    bus_topic: str
    qos: int = 1

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> MqttFollow:
        return cls(**{**payload, "filters": tuple(str(f) for f in payload.get("filters") or ())})


@dataclass(frozen=True)
class MqttMessage(_Payload):
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class MqttAck(_Payload):
    ok: bool
    error: str = ""


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


@dataclass(frozen=True)
class CapInvoke(_Payload, topic=Topic.CAPS_INVOKE):
    """Call a capability: on `caps.invoke` to the action broker, and from the broker on
    `caps.call.<provider>` to an SDK provider. `timeout` 0 takes the broker's default."""

    cap: str
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 0.0  # seconds
    key: str | None = None  # idempotency key

    def __post_init__(self) -> None:
        if not isinstance(self.cap, str) or not self.cap:
            raise LoomdError("CapInvoke: cap must be a capability name")
        if not isinstance(self.params, dict):
            raise LoomdError(f"CapInvoke {self.cap}: params must be an object")
        if not isinstance(self.timeout, int | float) or self.timeout < 0:
            raise LoomdError(f"CapInvoke {self.cap}: timeout must be a number of seconds >= 0")
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

    @property
    def full(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> CapInfo:
        return cls(**{**payload, "sentences": tuple(payload.get("sentences") or ()),
                      "devices": tuple(dict(d) for d in payload.get("devices") or ())})  # fmt: skip


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

    def __post_init__(self) -> None:
        if not isinstance(self.provider, str) or not self.provider:
            raise LoomdError("CapsRegister: provider must be a non-empty string")

    def to_payload(self) -> dict[str, Any]:
        return {"provider": self.provider, "caps": list(self.caps), "token": self.token}

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


@dataclass(frozen=True)
class VoiceStop(_Payload, topic=Topic.VOICE_STOP, qos="realtime"):
    """Stop playback and cancel the turn's generation (barge-in, `loomctl voice stop`)."""

    site: str = "local"
    reason: str = ""


@dataclass(frozen=True)
class VoiceMute(_Payload, topic=Topic.VOICE_MUTE):
    muted: bool


class TurnStage(StrEnum):
    """A voice turn's flight-recorder stages, in order: ms since the end of speech."""

    VAD_END = "vad_end"
    STT_START = "stt_start"
    STT_END = "stt_end"
    MATCHED = "matched"  # the assist understood the transcript (local intent)
    ACTION_DONE = "action_done"  # the assist's actions finished
    LLM_FIRST = "llm_first"  # the assist's first answer from the model
    REPLY = "reply"  # the assist's reply arrived
    FIRST_TOKEN = "first_token"
    FIRST_SENTENCE = "first_sentence"
    FIRST_AUDIO = "first_audio"
    SPOKEN = "spoken"

    @property
    def label(self) -> str:
        return _STAGE_LABELS[self]


_STAGE_LABELS = {
    TurnStage.VAD_END: "VAD end",
    TurnStage.STT_START: "STT start",
    TurnStage.STT_END: "STT end",
    TurnStage.MATCHED: "intent matched",
    TurnStage.ACTION_DONE: "action done",
    TurnStage.LLM_FIRST: "model answered",
    TurnStage.REPLY: "reply",
    TurnStage.FIRST_TOKEN: "LLM first token",
    TurnStage.FIRST_SENTENCE: "first sentence",
    TurnStage.FIRST_AUDIO: "TTS first audio",
    TurnStage.SPOKEN: "spoken",
}


class ErrorCode(StrEnum):
    """Every `loomd.error` code, in one place (`ctx.error(ErrorCode.STT_FAILED, ...)`)."""

    # the seam and the daemon
    TASK_CRASHED = "task_crashed"
    COMPONENT_BROKEN = "component_broken"
    COMPONENT_UNAVAILABLE = "component_unavailable"
    COMPONENT_FAILED = "component_failed"
    RELOAD_FAILED = "reload_failed"
    CONFIG = "config"
    METRICS = "metrics"
    PAGE_BAD_PATTERN = "page_bad_pattern"
    # the bus
    PROTOCOL = "protocol"
    QUOTA = "quota"
    CLIENT_TIMEOUT = "client_timeout"
    SLOW_CONSUMER = "slow_consumer"
    JOURNAL = "journal"
    # agents and capabilities
    PLUGIN_BROKEN = "plugin_broken"
    AGENT_CONFIG = "agent_config"
    AGENT_INIT = "agent_init"
    AGENT_CRASHED = "agent_crashed"
    AGENT_FAILED = "agent_failed"
    AGENT_ERROR = "agent_error"
    AGENT_STOP_FAILED = "agent_stop_failed"
    CAPABILITY_REFUSED = "capability_refused"
    CAPABILITY_DUPLICATE = "capability_duplicate"
    MCP_SERVER_DOWN = "mcp_server_down"
    MCP_TOOL_REFUSED = "mcp_tool_refused"
    # the router
    LLM_MODEL = "llm_model"
    LLM_LEDGER = "llm_ledger"
    LLM_BAD_REQUEST = "llm_bad_request"
    LLM_CLOUD = "llm_cloud"
    LLM_CLOUD_REFUSED = "llm_cloud_refused"
    LLM_QUEUE_FULL = "llm_queue_full"
    LLM_BAD_TOOL_CALL = "llm_bad_tool_call"
    # voice
    TTS_FALLBACK = "tts_fallback"
    AEC_MISSING = "aec_missing"
    FRONTEND_MISSING = "frontend_missing"
    STT_FAILED = "stt_failed"
    REPLY_FAILED = "reply_failed"
    RECORDER = "recorder"
    BAD_SAY = "bad_say"
    BAD_PLAY = "bad_play"
    BAD_WAKE = "bad_wake"
    WYOMING_STT = "wyoming_stt"
    BAD_VOCABULARY = "bad_vocabulary"
    # the home and the assist
    HOME_FOLLOW = "home_follow"
    HOME_BAD_STATE = "home_bad_state"
    HOME_AGENT_DEVICES = "home_agent_devices"
    ASSIST_SENTENCES = "assist_sentences"
    ASSIST_BAD_REQUEST = "assist_bad_request"
    # bridges
    MQTT_TLS = "mqtt_tls"
    MQTT_UNREACHABLE = "mqtt_unreachable"
    MQTT_REFUSED = "mqtt_refused"
    MQTT_BAD_TOPIC = "mqtt_bad_topic"
    MQTT_BAD_PAYLOAD = "mqtt_bad_payload"
    MQTT_BAD_ENTITY = "mqtt_bad_entity"
    MQTT_OVERSIZE = "mqtt_oversize"
    MQTT_OUTBOX_FULL = "mqtt_outbox_full"
    MQTT_OUTBOX_EXPIRED = "mqtt_outbox_expired"
    MQTT_BUS_REFUSED = "mqtt_bus_refused"
    PEERS_REFUSED = "peers_refused"


@dataclass(frozen=True)
class ErrorEvent(_Payload, topic=Topic.ERROR, qos="realtime"):
    """A `loomd.error` event. On the wire the details sit beside code and message (`{"code",
    "message", "component", "task": ...}`), as they always have."""

    code: ErrorCode
    message: str
    component: str = ""  # "" for the bus itself
    details: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.details, "code": str(self.code), "message": self.message}
        if self.component:
            out["component"] = self.component
        return out

    @classmethod
    def from_payload(cls, payload: Any) -> ErrorEvent:
        if not isinstance(payload, dict):
            raise LoomdError(f"ErrorEvent: expected a map, got {type(payload).__name__}")
        rest = dict(payload)
        try:
            code = ErrorCode(rest.pop("code", None))
        except ValueError:
            raise LoomdError(f"ErrorEvent: unknown code {payload.get('code')!r}") from None
        message, component = rest.pop("message", ""), rest.pop("component", "")
        return cls(code, str(message), str(component), rest)


@dataclass(frozen=True)
class ControlOp(_Payload):
    """A control request (`status`, `commands` or `<component>.<op>`) as the socket carries
    it: `{"op", "args": [...], **keyword arguments}` (plus the session's `rid`)."""

    op: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {**self.kwargs, "op": self.op, "args": list(self.args)}

    @classmethod
    def from_payload(cls, payload: Any) -> ControlOp:
        if not isinstance(payload, dict) or not isinstance(payload.get("op"), str):
            raise LoomdError("a control request is a map with an 'op'")
        args = payload.get("args") or []
        if not isinstance(args, list | tuple):
            raise LoomdError("'args' must be a list")
        kwargs = {k: v for k, v in payload.items() if k not in ("op", "rid", "args")}
        return cls(payload["op"], tuple(args), kwargs)


@dataclass(frozen=True)
class SubscriptionStats(_Payload):
    """One subscription on the bus, of any part, in process or over the socket."""

    sid: int
    pattern: str
    qos: str  # a QoS class
    owner: str  # the part (or client session) that holds it
    depth: int = 0  # events queued, not yet delivered
    bytes: int = 0
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> events


@dataclass(frozen=True)
class BusStats(_Payload, type="bus.stats"):
    """What `Bus.stats()` answers: the bus's counters and every subscription."""

    events_in: int = 0
    events_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # reason -> events
    subscriptions: tuple[SubscriptionStats, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        return {
            **super().to_payload(),
            "subscriptions": [s.to_payload() for s in self.subscriptions],
        }

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> BusStats:
        subs = tuple(SubscriptionStats.from_payload(s) for s in payload.get("subscriptions") or ())
        return cls(**{**payload, "subscriptions": subs})


__all__ += [
    "BarrierReply",
    "BarrierRequest",
    "BusStats",
    "CapCode",
    "CapInfo",
    "CapInvoke",
    "CapResult",
    "CapsChanged",
    "CapsList",
    "CapsRegister",
    "CapsRegistered",
    "CapsUnregister",
    "ControlOp",
    "ErrorCode",
    "ErrorEvent",
    "Outgoing",
    "SubscriptionStats",
    "TurnStage",
    "VoiceMute",
    "VoiceStop",
]


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
class WakeDetected(_Payload, topic=Topic.VOICE_WAKE):
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
class VoiceListen(_Payload, topic=Topic.VOICE_LISTEN):
    """Open the microphone without a wake word and stream it (a question asked back)."""

    site: str = "local"
    utterance_id: str = ""


@dataclass(frozen=True)
class VoiceRelease(_Payload, topic=Topic.VOICE_RELEASE):
    site: str = "local"
    utterance_id: str = ""
    reason: str = ""  # "end_of_speech", "error: ...", "disconnected"


@dataclass(frozen=True)
class PlayAudio(_Payload, topic=Topic.VOICE_PLAY):
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
