"""The assist's timers (`HassStartTimer`, `HassCancelTimer`, `HassCancelAllTimers`,
`HassTimerStatus`): each runs in the assist and rings through the speaker of its site
with a `SayRequest` (`announcement`) on `voice.say`, up to three times, until `voice.stop`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loomd.bus.envelope import QoS
from loomd.messages import SayRequest, Topic

if TYPE_CHECKING:
    from loomd.assist.component import AssistComponent
    from loomd.assist.matcher import Match

__all__ = ["TIMER_INTENTS", "Timer", "Timers", "span"]

TIMER_INTENTS = frozenset(
    {"HassStartTimer", "HassCancelTimer", "HassTimerStatus", "HassCancelAllTimers"}
)


@dataclass
class Timer:
    id: int
    seconds: float
    ends: float  # time.monotonic()
    site: str
    name: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Timers:
    """The running timers of one assist; `answer()` turns a timer intent into its reply."""

    def __init__(self, assist: AssistComponent) -> None:
        self.assist = assist
        self.running: dict[int, Timer] = {}
        self._ids = 0
        self._ringing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.running)

    def answer(self, m: Match, site: str, spoken: dict[str, Any]) -> str:
        responses = self.assist.responses
        if m.intent == "HassStartTimer":
            secs = (
                float(m.slots.get("hours", 0)) * 3600
                + float(m.slots.get("minutes", 0)) * 60
                + float(m.slots.get("seconds", 0))
            )
            if secs <= 0:
                return "Sorry, how long should the timer run?"
            self._ids += 1
            t = Timer(
                self._ids,
                secs,
                time.monotonic() + secs,
                site or self.assist.settings.site,
                str(m.slots.get("name") or ""),
            )
            t.task = self.assist.spawn(lambda: self._ring(t), f"timer-{t.id}", critical=False)
            self.running[t.id] = t
            return responses.intent(
                m.intent, m.response, f"Timer set for {span(secs)}", slots=spoken
            )
        if m.intent in ("HassCancelTimer", "HassCancelAllTimers"):
            if not self.running:
                return responses.refusal("timer_not_found", "Sorry, I couldn't find that timer")
            ids = list(self.running) if m.intent == "HassCancelAllTimers" else [max(self.running)]
            for i in ids:
                t = self.running.pop(i)
                if t.task is not None:
                    t.task.cancel()
            return responses.intent(m.intent, "default", "Timer cancelled")
        if not self.running:
            return "No timers."
        left = min(t.ends for t in self.running.values()) - time.monotonic()
        n = len(self.running)
        return f"{n} timer{'s' if n > 1 else ''}; the next one ends in {span(max(0.0, left))}"

    async def _ring(self, t: Timer) -> None:
        await asyncio.sleep(t.seconds)
        self.running.pop(t.id, None)
        text = f"Your {span(t.seconds)} timer is done" + (f": {t.name}" if t.name else "")
        ring = asyncio.current_task()
        assert ring is not None
        self._ringing.add(ring)
        try:
            for _ in range(3):  # until "stop" (voice.stop) or three times
                say = SayRequest(text, "announcement", t.site)
                await self.assist.ctx.bus.publish(Topic.VOICE_SAY, say.to_payload(), wait=False)
                await asyncio.sleep(8.0)
        finally:
            self._ringing.discard(ring)

    async def follow_stop(self) -> None:
        """`voice.stop` ("stop", the wake word) silences every ringing timer."""
        async with self.assist.ctx.bus.subscribe(Topic.VOICE_STOP, QoS.RELIABLE) as sub:
            async for _ in sub:
                for task in list(self._ringing):
                    task.cancel()


def span(secs: float) -> str:
    secs = round(secs)
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    parts = [
        f"{n} {u}{'s' if n != 1 else ''}"
        for n, u in ((h, "hour"), (m, "minute"), (s, "second"))
        if n
    ]
    return " and ".join(parts) or "0 seconds"
