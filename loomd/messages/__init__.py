"""Payloads that cross parts: small frozen dataclasses with `to_payload()`/`from_payload()`.

No part parses another part's dicts by hand: the voice pipeline asks the router for a chat
turn with a `ChatRequest`, the router streams `ChatChunk`s and ends with a `ChatDone` on
the request's thread, an agent makes the board speak with a `SayRequest`, and so on.
Topics and event types are `StrEnum`s here too.

One module per subject (`base` holds the binding and the `Topic` enum; `chat` says how a
chat turn runs on the bus); import from `loomd.messages`.
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
