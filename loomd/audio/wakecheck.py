"""The wake check by whisper's own decoder: is the wake phrase what the wake segment says?

openWakeWord alone cannot both hear "hey jarvis" in TV noise and refuse "hey Travis" from
the TV: its score is as high on the near lines as on a wake in noise. whisper tiny.en's
free transcript of the segment is no better in noise ("Hey, John."), but its decoder still
gives the phrase a fair probability there, and a poor one where the audio says something
else. So the segment (the audio up to the wake, a little after it) is encoded once and
scored twice (loomd.audio.rescore): whisper's best guess, token by token (the reference:
no spelling of its own, no retries at higher temperatures) and the phrase, forced, in the
spellings whisper uses, both as said alone (a full stop and the end of text after it) and as
the opening of what was said (its own tokens only: "Hey Jarvis, turn off" is how the
segment sounds when the command follows at once). The wake counts when the phrase, at its
best of the two, scores within `margin` (nats per token) of the guess, or at least
-`floor` on its own.
Runs in the STT worker (a whisper.cpp context of its own), only on wakes. Why a forced
decode and these numbers: docs/design/voice-noise.md (bench/falsewake.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from loomd.audio.rescore import WhisperScorer

__all__ = [
    "HOLD_S",
    "POST_S",
    "PRE_S",
    "PhraseHeard",
    "WakeSegment",
    "hear_phrase",
    "segment_audio",
    "spellings",
]

PRE_S = 1.2  # the wake segment: this much audio before the crossing ("hey jarvis": ~0.8 s)
# and this much after the score's peak: it peaks 0-0.45 s after the phrase's end, and a
# command that follows at once (Piper's "Hey Jarvis, turn on...") gets into a longer tail:
# whisper then writes "Hey Jarvis, turn on" and the phrase, scored with the end of text
# after it, falls far under that (a probe: 0.3 s after the peak refused 6 of 10 clean wakes)
POST_S = 0.1
# After the threshold crossing the score is followed this long and the segment ends after its
# highest chunk: at a low threshold the model crosses while the phrase is still being said
# and peaks once it is over, not always at once (0.48, then 0.01, 0.08, 0.99 on the
# front-end test's clip: a hold that stopped at the first fall would keep the crossing).
# Why these: docs/design/voice-noise.md, "Session 9".
HOLD_S = 0.48
_PAD = 4000  # silence before and after, in samples (as the STT stage pads an utterance)
_MAX_TOKENS = 12  # whisper's guess for 1.5 s of speech: ~4 tokens a second, and a bound


@dataclass(frozen=True)
class PhraseHeard:
    text: str  # whisper's own transcript of the segment
    free: float  # its mean token log-probability (with the end of text)
    phrase: float  # the wake phrase's, forced (with a full stop and the end of text)
    ms: float = 0.0
    # the phrase's as the opening of what was said (its own tokens only: a command that
    # follows at once is not held against it)
    opening: float | None = None

    @property
    def gap(self) -> float:
        """How much less likely the phrase is than what whisper wrote (0 or less: as
        likely, or whisper wrote the phrase)."""
        return round(self.free - self.phrase, 3)

    @property
    def open_gap(self) -> float:
        """The gap, the phrase scored at its best: said alone, or as an opening."""
        best = self.phrase if self.opening is None else max(self.phrase, self.opening)
        return round(self.free - best, 3)

    def accepts(self, margin: float | None = None, floor: float | None = None) -> bool:
        """Within `margin` of whisper's guess, and scoring at least -`floor` on its own
        (each rule only when given), the phrase scored at its best: said alone or as the
        opening of what was said."""
        near = margin is None or self.open_gap <= margin
        return near and (floor is None or self.free - self.open_gap >= -floor)


class WakeSegment:
    """The wake segment of one wake, cut around the wake score's peak (pure: the pipeline
    and the bench feed it). Given the audio up to the threshold crossing, then every frame
    after it (`push`) and the score of each wake chunk after it (`score`, once the chunk's
    frames are pushed): the peak is the highest chunk from the crossing to `HOLD_S` after
    it; the segment starts `PRE_S` before the crossing and ends `POST_S` after the peak
    (`ready`), or where the audio ends when the utterance ends first (`now`). Not `PRE_S`
    before the peak: a peak 0.4 s after the phrase's end (espeak-ng) cut off its "hey"."""

    def __init__(self, before: list[bytes], score: float, frame_ms: int = 20) -> None:
        self.frames = list(before)
        self.crossing = self.peak_at = len(self.frames)  # frame index just after the chunk
        self.peak = score
        self.held = False  # the peak is known
        self._ms = frame_ms
        self._hold = round(HOLD_S * 1000 / frame_ms)
        self._pre = round(PRE_S * 1000 / frame_ms)
        self._post = round(POST_S * 1000 / frame_ms)

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)

    def score(self, score: float) -> None:
        """The score of the wake chunk that ends with the last frame pushed."""
        if self.held:
            return
        if score > self.peak:
            self.peak, self.peak_at = score, len(self.frames)
        if len(self.frames) - self.crossing >= self._hold:
            self.held = True

    def stop(self) -> None:
        """No more scores (the detector failed): the peak is the highest seen."""
        self.held = True

    @property
    def peak_ms(self) -> float:
        """How long after the crossing the score peaked."""
        return float((self.peak_at - self.crossing) * self._ms)

    def ready(self) -> bytes | None:
        """The segment, once the peak is known and `POST_S` after it is in."""
        if not self.held or len(self.frames) < self.peak_at + self._post:
            return None
        return self.now()

    def now(self) -> bytes:
        """The segment as far as it goes now."""
        end = min(len(self.frames), self.peak_at + self._post)
        return b"".join(self.frames[max(0, self.crossing - self._pre) : end])


def segment_audio(pcm: bytes) -> np.ndarray:
    """A wake segment (s16le) as whisper takes it: float32, padded."""
    import numpy as np

    audio = np.zeros(len(pcm) // 2 + 2 * _PAD, dtype=np.float32)
    audio[_PAD:-_PAD] = np.frombuffer(pcm, dtype=np.int16)
    audio /= 32768.0
    return audio


# The wake phrases are English (openWakeWord's models), whatever `[voice] language` the
# commands are in: a multilingual model is asked for English on the wake segment.
WAKE_LANGUAGE = "en"


def hear_phrase(
    scorer: WhisperScorer, audio: np.ndarray, audio_ctx: int, phrase: str
) -> PhraseHeard:
    """Transcribe `audio` (float32 16 kHz, padded) freely, then score that transcript and
    `phrase` against the same encoding."""
    import time

    began = time.perf_counter()
    scorer.encode(audio, audio_ctx)
    own = scorer.greedy(_MAX_TOKENS, WAKE_LANGUAGE)
    said = spellings(phrase)
    best = max(f.score for f in scorer.score(said, language=WAKE_LANGUAGE))
    openings = [f" {s}{end}" for s in said for end in ("", ",")]
    opening = max(f.score for f in scorer.score(openings, language=WAKE_LANGUAGE, end=False))
    ms = (time.perf_counter() - began) * 1000
    return PhraseHeard(own.text, own.score, best, ms, opening)


def spellings(phrase: str) -> list[str]:
    """The ways whisper writes a wake phrase: "hey jarvis" -> "hey jarvis", "Hey Jarvis",
    "Hey, Jarvis" (a name is capitalised: the lower-case spelling alone scores ~1.5 nats
    a token under what whisper wrote for the phrase said clean)."""
    words = phrase.split()
    titled = [w[:1].upper() + w[1:] for w in words]
    out = [phrase, " ".join(titled)]
    if len(words) > 1:
        out.append(f"{titled[0]}, {' '.join(titled[1:])}")
    return list(dict.fromkeys(out))
