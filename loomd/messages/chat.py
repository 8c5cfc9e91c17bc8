"""Chat turns with the router: messages, tools, requests, streamed chunks.

Chat on the bus: publish a `ChatRequest` on `Topic.LLM_CHAT` with `reply_to` set (the Bus
API's `request()` does this). The router answers on `reply_to` with the request's id as
correlation id: zero or more `ChatChunk` events (type `EventType.LLM_CHUNK`) when
`stream` is true, then one `ChatDone` (`EventType.LLM_DONE`) with `phase="final"`, or a
`ChatDone` with `error` set. A hybrid route sends a `phase="quick"` turn (chunks + done)
and then a `phase="refine"` one on the same thread; voice turns are never routed hybrid.
A requester that streams subscribes to `reply_to` before publishing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from loomd.errors import LoomdError
from loomd.messages.base import EventType, Topic, _Payload


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


@dataclass(frozen=True)
class ChatMessage(_Payload):
    role: str  # a Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # role assistant: the calls it made
    tool_call_id: str = ""  # role tool: the call this answers
    NESTED = MappingProxyType({"tool_calls": ToolCall})

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
    NESTED = MappingProxyType({"messages": ChatMessage, "tools": ToolSpec})

    def __post_init__(self) -> None:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise LoomdError(f"tool names must be unique: {sorted(names)}")
        choice = self.tool_choice
        if choice not in ToolChoice.__members__.values() and choice not in names:
            raise LoomdError(f"tool_choice {choice!r} is no ToolChoice and no tool's name")
        if self.tools and self.json_schema is not None:
            raise LoomdError("a request has tools or a json_schema, not both")

    @classmethod
    def _build(cls, payload: dict[str, Any]) -> ChatRequest:
        if not payload.get("messages"):
            raise ValueError("messages is empty")
        return super()._build(
            {**payload, "policy": Policy.from_payload(payload.get("policy") or {})}
        )


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
    NESTED = MappingProxyType({"tool_calls": ToolCall})


@dataclass(frozen=True)
class RouteDecision(_Payload, topic=Topic.ROUTE_DECISION, qos="realtime"):
    """Why a chat turn goes where it goes (published on `loomd.route.decision` as the turn
    starts, kept in the router's ring for `loomctl route explain`): the route and the rule
    that chose it, the estimates, and the policy and facts it was decided from."""

    id: str  # the request's event id, hex (`ChatDone.decision_id`)
    at: float  # time.time()
    agent: str
    priority: str
    route: str
    rule: str
    reason: str
    est_latency_ms: float
    est_cost: float
    confidence: float
    policy: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
