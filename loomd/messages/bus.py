"""The bus's own messages: errors, control ops, stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from loomd.errors import LoomdError
from loomd.messages.base import Topic, _Payload


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
    BAD_PAYLOAD = "bad_payload"  # a payload its topic's class refuses (`Context.receive`)
    # the bus
    PROTOCOL = "protocol"
    QUOTA = "quota"
    CLIENT_TIMEOUT = "client_timeout"
    SLOW_CONSUMER = "slow_consumer"
    JOURNAL = "journal"
    FORBIDDEN = "forbidden"  # an identity tried what no ACL rule grants it
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
    VAD_MISSING = "vad_missing"
    STT_FAILED = "stt_failed"
    REPLY_FAILED = "reply_failed"
    RECORDER = "recorder"
    BAD_SAY = "bad_say"
    BAD_PLAY = "bad_play"
    BAD_MUTE = "bad_mute"
    WAKE_FAILED = "wake_failed"
    TTS_FAILED = "tts_failed"
    STOP_MISSING = "stop_missing"
    BAD_WAKE = "bad_wake"
    WYOMING_STT = "wyoming_stt"
    WYOMING_MDNS = "wyoming_mdns"
    BAD_VOCABULARY = "bad_vocabulary"
    BAD_RESCORE = "bad_rescore"
    # the home and the assist
    HOME_FOLLOW = "home_follow"
    HOME_BAD_STATE = "home_bad_state"
    HOME_AGENT_DEVICES = "home_agent_devices"
    HOME_HA_DEVICES = "home_ha_devices"
    ASSIST_SENTENCES = "assist_sentences"
    ASSIST_BAD_REQUEST = "assist_bad_request"
    ASSIST_RESCORE = "assist_rescore"
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
    MQTT_COMMAND_FAILED = "mqtt_command_failed"  # a command from HA its capability refused
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
    NESTED = MappingProxyType({"subscriptions": SubscriptionStats})
