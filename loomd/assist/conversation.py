"""A conversation's state: its last messages, and the actions waiting for a yes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from loomd.messages import ActionRecord, ChatMessage

__all__ = ["Conversation", "Pending"]


@dataclass
class Pending:
    """Actions waiting for a yes."""

    actions: list[ActionRecord]
    reply: str
    until: float  # time.monotonic()


@dataclass
class Conversation:
    messages: deque[ChatMessage]
    last: float
    pending: Pending | None = None
