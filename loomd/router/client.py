"""The agent side of `llm.chat`: stream a turn's tokens over any `Bus` (LocalBus or the SDK
`Client`), so an agent writes `async for piece in chat_stream(bus, request)`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from loomd.messages import ChatChunk, ChatDone, ChatRequest, EventType, Topic

__all__ = ["chat_stream"]


async def chat_stream(
    bus: Any, request: ChatRequest, *, timeout: float = 120.0
) -> AsyncIterator[ChatChunk | ChatDone]:
    """Yield the turn's `ChatChunk`s, then its `ChatDone` (two for a hybrid turn: `quick`,
    then `refine`). Subscribes to the reply thread before publishing. To stop early, close
    the generator (`async with contextlib.aclosing(chat_stream(...)) as s:`): that
    unsubscribes, which the router notices and cancels the generation."""
    thread = os.urandom(16)
    reply_to = f"thread.{thread.hex()}.reply"
    async with bus.subscribe(reply_to, "reliable") as sub:
        await sub.ready()
        ev = await bus.publish(
            Topic.LLM_CHAT, request.to_payload(), thread_id=thread, reply_to=reply_to
        )
        async with asyncio.timeout(timeout):
            async for reply in sub:
                if reply.correlation_id != ev.id:
                    continue
                if reply.type == EventType.LLM_CHUNK:
                    yield ChatChunk.from_payload(reply.payload)
                elif reply.type == EventType.LLM_DONE:
                    done = ChatDone.from_payload(reply.payload)
                    yield done
                    if done.phase != "quick":
                        return
    raise TimeoutError("the reply thread closed before the turn ended")
