"""The voice side of the hand-off: a wake word's turn taken by another part (Home
Assistant's pipeline, through the `homeassistant` component), over the bus only.

On a wake the pipeline asks `voice.wake` (request/reply) and goes on listening itself; the
answer decides: `STREAM` publishes the microphone (the frames held since the wake first)
on `audio.frames.<site>` until a `voice.release` or the utterance limit, `DROP` ends the
turn, `LOCAL` or silence keeps it local. `voice.listen` opens a stream with no wake word
(a question asked back). See loomd/messages/ for the payloads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loomd.errors import LoomdError
from loomd.messages import (
    Topic,
    VoiceListen,
    VoiceRelease,
    WakeAction,
    WakeClaim,
    WakeDetected,
)

if TYPE_CHECKING:
    from loomd.component import Inbox

__all__ = ["Handoff"]

Receive = Callable[..., "Inbox[Any]"]

log = logging.getLogger("loomd.voice.handoff")


class Handoff:
    def __init__(
        self, bus: Any, site: str, *, ask_s: float, max_s: float, receive: Receive
    ) -> None:
        self.bus, self.site, self.ask_s, self.max_s = bus, site, ask_s, max_s
        self.receive = receive  # the component's `ctx.receive`
        self.topic = f"{Topic.AUDIO_FRAMES}.{site}"
        self._ask: asyncio.Task[WakeAction] | None = None
        self._held: list[bytes] = []
        self.streaming = ""  # the utterance id while the mic streams to the claimant
        self._until = 0.0
        self._stop = False
        self.listen_now = ""  # a stream asked for with no wake word (voice.listen)
        self.streams = 0
        self.asked = ""  # the utterance id the last wake was offered under

    # -- asking ------------------------------------------------------------------------------
    def ask(self, word: str, score: float, uid: str) -> None:
        self._held, self.asked = [], uid
        self._ask = asyncio.get_running_loop().create_task(
            self._claim(WakeDetected(word, round(score, 3), self.site, uid))
        )

    async def _claim(self, det: WakeDetected) -> WakeAction:
        try:
            ev = await self.bus.request(Topic.VOICE_WAKE, det.to_payload(), timeout=self.ask_s)
            return WakeClaim.from_payload(ev.payload).action
        except (LoomdError, TimeoutError) as exc:  # nobody claims (RequestTimeout) or bad reply
            log.debug("voice: wake %s stays local (%s)", det.word, type(exc).__name__)
            return WakeAction.LOCAL

    def pending(self, pcm: bytes) -> WakeAction | None:
        """While listening after a wake: hold the frame; the claim's answer once it came."""
        if self._ask is None:
            return None
        if not self._ask.done():
            self._held.append(pcm)
            return None
        action, self._ask = self._ask.result(), None
        if action != WakeAction.STREAM:
            self._held = []
        return action

    def cancel(self) -> None:
        if self._ask is not None:
            self._ask.cancel()
            self._ask = None

    # -- streaming ---------------------------------------------------------------------------
    async def start(self, uid: str) -> None:
        self.streaming, self._until, self._stop = uid, time.monotonic() + self.max_s, False
        self.streams += 1
        held, self._held = self._held, []
        for pcm in held:
            await self.bus.publish(self.topic, pcm, qos="realtime")

    def drop(self) -> None:
        """Forget the offer, the stream and any listen request (the microphone was muted)."""
        self.cancel()
        self._held, self.listen_now = [], ""
        self.streaming, self._stop = "", False

    async def feed(self, pcm: bytes) -> bool:
        """Publish a frame; False once the stream is over (released or too long)."""
        if self._stop or time.monotonic() > self._until:
            self._stop, self.streaming = False, ""
            return False
        await self.bus.publish(self.topic, pcm, qos="realtime")
        return True

    async def follow(self) -> None:
        """Releases and listen requests for this site (a task of the voice component)."""
        async with (
            self.receive(VoiceRelease) as rel,
            self.receive(VoiceListen) as lis,
        ):
            await rel.ready()
            await lis.ready()

            async def releases() -> None:
                async for r, _ev in rel:
                    if (
                        r.site == self.site
                        and self.streaming
                        and r.utterance_id in ("", self.streaming)
                    ):
                        self._stop = True

            async def listens() -> None:
                async for req, _ev in lis:
                    if req.site == self.site:
                        self.listen_now = req.utterance_id or f"listen-{time.monotonic_ns()}"

            async with asyncio.TaskGroup() as tg:
                tg.create_task(releases())
                tg.create_task(listens())
