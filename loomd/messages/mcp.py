"""MCP servers loomd runs, on the bus: what a server says (its log messages)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loomd.messages.base import Topic, _Payload


@dataclass(frozen=True)
class McpLog(_Payload, type=Topic.MCP_LOG):
    """A server's `notifications/message`, on `mcp.log.<server>`, published as the server's
    own identity `mcp:<server>` (so `[[acl]]` rules decide whether it may)."""

    server: str
    level: str  # debug | info | notice | warning | error | critical | alert | emergency
    data: Any = None
    logger: str = ""
