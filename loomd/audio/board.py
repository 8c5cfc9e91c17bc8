"""What the board is doing, shared by the voice component's rooms: its state (idle,
listening, thinking, speaking; published on `voice.state`), the running turn, and whether
the next words need no wake word (the board just asked a question)."""

from __future__ import annotations

import asyncio
from typing import Any

from loomd.messages import Topic, VoiceState, VoiceStateEvent

__all__ = ["Board"]


class Board:
    def __init__(self, bus: Any, site: str) -> None:
        self.bus, self.site = bus, site
        self.state = VoiceState.IDLE
        self.turn: asyncio.Task[None] | None = None
        self.follow_up = False

    def busy(self) -> bool:
        """A turn is running (thinking or speaking its reply)."""
        return self.turn is not None and not self.turn.done()

    def cancel_turn(self) -> None:
        if self.turn is not None:
            self.turn.cancel()

    async def set(self, state: VoiceState, uid: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        ev = VoiceStateEvent(state, self.site, uid)
        await self.bus.publish(Topic.VOICE_STATE, ev.to_payload(), qos="realtime")

    def asked(self, text: str, followup_s: float) -> None:
        """After the board asks a question, the next words need no wake word."""
        if followup_s > 0 and text.rstrip().endswith("?"):
            self.follow_up = True
