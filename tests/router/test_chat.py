"""llm.chat through a real Host: streaming, the contract, priorities, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from loomd.messages import ChatDone, ChatMessage, ChatRequest, EventType, Policy, Topic
from loomd.router.cli import ask
from loomd.router.component import LlmComponent

from .conftest import HostFactory, run


def req(text: str = "hello", **kw: Any) -> ChatRequest:
    return ChatRequest((ChatMessage("user", text),), **kw)


def llm_of(host: Any) -> LlmComponent:
    c = host.get("llm")
    assert isinstance(c, LlmComponent)
    return c


class Sink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def flush(self) -> None:
        pass


def test_chat_streams_chunks_then_one_done(llm_host: HostFactory, tiny: Path) -> None:
    run(_chat_streams(llm_host, tiny))


async def _chat_streams(llm_host: HostFactory, tiny: Path) -> None:
    async with llm_host(model=tiny) as host:
        bus = llm_of(host).ctx.bus
        sink = Sink()
        done = await ask(bus, req(max_tokens=12, temperature=0.0), timeout=30, out=sink)
        assert done.error == ""
        assert done.route == "local"
        assert done.tokens > 0
        assert sink.parts and "".join(sink.parts) == done.text
        assert len(done.decision_id) == 32
