"""What the board is doing, shared by the voice component's rooms: its state (idle,
listening, thinking, speaking; published on `voice.state`), the running turn, whether
the next words need no wake word (the board just asked a question), and whether the
microphone is muted."""

from __future__ import annotations

import asyncio
from typing import Any

from loomd.messages import VoiceState, VoiceStateEvent

__all__ = ["Board"]


class Board:
    def __init__(self, bus: Any, site: str) -> None:
        self.bus, self.site = bus, site
        self.state = VoiceState.IDLE
        self.turn: asyncio.Task[None] | None = None
        self.follow_up = False
        self.muted = False

    async def mute(self, on: bool) -> bool:
        """Mute or unmute the microphone; True if that changed anything. Published as a
        `voice.state` event with `muted` set, whatever the state."""
        if on == self.muted:
            return False
        self.muted = on
        if on:
            self.follow_up = False
        await self._publish("")
        return True

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
        await self._publish(uid)

    async def _publish(self, uid: str) -> None:
        await VoiceStateEvent(self.state, self.site, uid, self.muted).publish(self.bus)

    def asked(self, text: str, followup_s: float) -> None:
        """After the board asks a question, the next words need no wake word."""
        if followup_s > 0 and text.rstrip().endswith("?"):
            self.follow_up = True
