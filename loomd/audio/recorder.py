"""The flight recorder: one record per voice turn (wake, transcript, reply, outcome and the
stage timings in ms since the end of speech), kept in the state store under `voice`
(`turn/<seq>`), the newest `size` of them (`loomctl voice last`, the status page)."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loomd.errors import LoomdError
from loomd.messages import ErrorCode

if TYPE_CHECKING:
    from loomd.audio.wake import Detection
    from loomd.state import State

__all__ = ["FlightRecorder", "TurnClock", "TurnRecord"]


@dataclass
class TurnRecord:
    """One interaction in the flight recorder. Timings: ms since the end of speech."""

    utterance_id: str
    site: str
    started: float  # time.time()
    wake: str = ""
    wake_score: float = 0.0
    transcript: str = ""
    reply: str = ""
    # ok | failed | interrupted | open, or why it ended quietly (messages.IgnoredWhy):
    # no_speech | not_the_wake_word | not_addressed
    outcome: str = "open"
    end_reason: str = ""  # how the utterance ended: hangover | max_length | no_speech
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    # What the assist made of it (when [voice] agent = "assist"): AssistTurn's fields
    intent: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    route: str = ""

    @classmethod
    def new(cls, site: str, det: Detection | None) -> TurnRecord:
        rec = cls(uuid.uuid4().hex[:12], site, time.time())
        if det is not None:
            rec.wake, rec.wake_score = det.word, round(det.score, 3)
        else:
            rec.wake = "(follow-up)"
        return rec

    def fail(self, error: str) -> None:
        self.outcome, self.error = "failed", error

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class TurnClock:
    """Turns wall-clock moments into ms since the end of speech."""

    def __init__(self, speech_end: float) -> None:
        self.speech_end = speech_end

    def ms(self) -> float:
        return round((time.monotonic() - self.speech_end) * 1000, 1)


class FlightRecorder:
    """Writes turn records; a failed write is reported, never raised into the turn."""

    def __init__(
        self, state: Callable[[], State], size: int, error: Callable[[ErrorCode, str], None]
    ) -> None:
        self._state, self.size, self._error = state, size, error
        self._seq = itertools.count(int(time.time() * 1000))

    async def record(self, rec: TurnRecord) -> None:
        try:
            kv = self._state().kv("voice")
            await kv.put(f"turn/{next(self._seq):016d}", rec.to_dict())
            keys = kv.keys("turn/")
            for old in keys[: max(0, len(keys) - self.size)]:
                await kv.delete(old)
        except LoomdError as exc:
            self._error(ErrorCode.RECORDER, f"voice: flight recorder write failed: {exc}")

    def last(self, n: int) -> list[Any]:
        items = self._state().kv("voice").items("turn/")
        return [v for _, v in items[-n:]]
