"""The binding of a payload class to its topic and event type (`_Payload`), the one `Topic`
enum, and the bus protocols `publish()`/`respond()` need."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple, Protocol, Self, TypeVar

from loomd.errors import LoomdError


class Topic(StrEnum):
    LLM_CHAT = "llm.chat"  # ChatRequest (request/reply)
    CAPS_INVOKE = "caps.invoke"  # CapInvoke (request/reply: CapResult)
    CAPS_LIST = "caps.list"  # request: CapsList
    CAPS_REGISTER = "caps.register"  # CapsRegister (request/reply: CapsRegistered)
    CAPS_CHANGED = "caps.changed"  # CapsChanged: the broker's catalogue changed
    CAPS_UNREGISTER = "caps.unregister"  # CapsUnregister
    CAPS_GRANT = "caps.grant"  # CapGrantAsk (request/reply: CapGrant): a one-hop call's grant
    CAPS_GONE = "caps.gone"  # caps.gone.<provider>: CapsGone, the broker dropped a provider
    COLLAB_BARRIER = "collab.barrier"  # BarrierRequest (request/reply: BarrierReply)
    VOICE_MUTE = "voice.mute"  # VoiceMute
    ROUTE_DECISION = "loomd.route.decision"
    VOICE_TRANSCRIPT = "voice.transcript"  # Transcript
    VOICE_SAY = "voice.say"  # SayRequest
    VOICE_STATE = "voice.state"  # VoiceStateEvent
    VOICE_STOP = "voice.stop"  # barge-in / cancel playback and generation
    VOICE_IGNORED = "voice.ignored"  # TurnIgnored: a turn that ended quietly, and why
    VOICE_BARGEIN = "voice.bargein"  # BargeIn: a wake heard while the board plays, and after
    ASSIST_CONVERSE = "assist.converse"  # AssistRequest (request/reply: AssistTurn)
    ASSIST_TURN = "assist.turn"  # AssistTurn, one per finished turn
    ASSIST_VOCABULARY = "assist.vocabulary"  # request/reply and event: Vocabulary
    MQTT_PUBLISH = "mqtt.publish"  # MqttPublish (request/reply: MqttAck)
    MQTT_FOLLOW = "mqtt.follow"  # MqttFollow (request/reply: MqttAck); then MqttMessage events
    MQTT_ENTITY = "loomd.mqtt.entity"  # MqttEntity: announce a Home Assistant entity
    MQTT_CONNECTED = "loomd.mqtt.connected"  # MqttLink: the bridge (re)connected
    MQTT_DISCONNECTED = "loomd.mqtt.disconnected"  # MqttLink: the bridge lost the broker
    HOME_STATE = "home.state"  # home.state.<device id>: DeviceState
    HOME_REGISTRY = "home.registry"  # request/reply: HomeSnapshot
    HOME_CHANGED = "home.changed"  # HomeSnapshot, when devices or areas change
    # The voice hand-off (a satellite takes a turn): see the block at the end of this file.
    VOICE_WAKE = "voice.wake"  # WakeDetected (request/reply: WakeClaim)
    VOICE_LISTEN = "voice.listen"  # VoiceListen: stream the mic without a wake word
    VOICE_RELEASE = "voice.release"  # VoiceRelease: the claimant is done with the mic
    VOICE_PLAY = "voice.play"  # PlayAudio (request/reply: PlayDone)
    VOICE_RESCORE = "voice.rescore"  # RescoreRequest (request/reply: RescoreReply)
    AUDIO_FRAMES = "audio.frames"  # audio.frames.<site>: raw s16le 20 ms frames, realtime
    HA_STATE = "ha.state"  # ha.state.<entity_id>: HaState, Home Assistant's state changes
    HA_REGISTRY = "ha.registry"  # request/reply: HaSnapshot (HA's areas, exposed entities)
    HA_CHANGED = "ha.changed"  # HaSnapshot, on each (re)connect and change of HA's registries
    MCP_LOG = "mcp.log"  # mcp.log.<server>: McpLog, published as `mcp:<server>`
    ERROR = "loomd.error"


class EventType(StrEnum):
    LLM_CHUNK = "llm.chunk"
    LLM_DONE = "llm.done"
    CNET_CFP = "cnet.cfp"  # a contract net's call for proposals (any payload)
    CNET_BID = "cnet.bid"  # Bid
    CNET_AWARD = "cnet.award"  # BidAward (request/reply: the winner's result)
    CNET_REJECT = "cnet.reject"  # BidReject


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
    # The fields that hold a tuple of payloads (`{"actions": ActionRecord}`): each is sent
    # as a list of its items' `to_payload()` and rebuilt with their `from_payload`.
    NESTED: ClassVar[Mapping[str, type[_Payload]]] = MappingProxyType({})

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
        data: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        for name in self.NESTED:
            data[name] = [item.to_payload() for item in getattr(self, name)]
        return data

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
        if cls.NESTED:
            payload = dict(payload)
            for name, kind in cls.NESTED.items():
                payload[name] = tuple(kind.from_payload(item) for item in payload.get(name) or ())
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
