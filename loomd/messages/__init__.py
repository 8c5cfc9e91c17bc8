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

One module per subject (`base` holds the binding and the `Topic` enum); import from
`loomd.messages`.
"""

from loomd.messages.assist import (
    ActionRecord,
    AssistRequest,
    AssistTurn,
    IntentInfo,
    IntentVia,
    Vocabulary,
)
from loomd.messages.base import (
    E_co,
    EventType,
    Outgoing,
    Publisher,
    Received,
    Replier,
    Topic,
)
from loomd.messages.bus import (
    BusStats,
    ControlOp,
    ErrorCode,
    ErrorEvent,
    SubscriptionStats,
)
from loomd.messages.caps import (
    BarrierReply,
    BarrierRequest,
    CapCode,
    CapInfo,
    CapInvoke,
    CapResult,
    CapsChanged,
    CapsList,
    CapsRegister,
    CapsRegistered,
    CapsUnregister,
)
from loomd.messages.chat import (
    ChatChunk,
    ChatDone,
    ChatMessage,
    ChatRequest,
    Policy,
    Role,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from loomd.messages.home import (
    DeviceState,
    Domain,
    HaArea,
    HaDevice,
    HaEntity,
    HaSnapshot,
    HaState,
    HomeArea,
    HomeDevice,
    HomeSnapshot,
)
from loomd.messages.mqtt import (
    MqttAck,
    MqttFollow,
    MqttMessage,
    MqttPublish,
)
from loomd.messages.voice import (
    PlayAudio,
    PlayDone,
    SayRequest,
    Transcript,
    TurnStage,
    VoiceListen,
    VoiceMute,
    VoiceRelease,
    VoiceState,
    VoiceStateEvent,
    VoiceStop,
    WakeAction,
    WakeClaim,
    WakeDetected,
)

__all__ = [
    "ActionRecord",
    "AssistRequest",
    "AssistTurn",
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
    "ChatChunk",
    "ChatDone",
    "ChatMessage",
    "ChatRequest",
    "ControlOp",
    "DeviceState",
    "Domain",
    "E_co",
    "ErrorCode",
    "ErrorEvent",
    "EventType",
    "HaArea",
    "HaDevice",
    "HaEntity",
    "HaSnapshot",
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
    "Outgoing",
    "PlayAudio",
    "PlayDone",
    "Policy",
    "Publisher",
    "Received",
    "Replier",
    "Role",
    "SayRequest",
    "SubscriptionStats",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "Topic",
    "Transcript",
    "TurnStage",
    "Vocabulary",
    "VoiceListen",
    "VoiceMute",
    "VoiceRelease",
    "VoiceState",
    "VoiceStateEvent",
    "VoiceStop",
    "WakeAction",
    "WakeClaim",
    "WakeDetected",
]
