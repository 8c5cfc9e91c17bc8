"""The wake check by whisper's own decoder: is the wake phrase what the wake segment says?

openWakeWord alone cannot both hear "hey jarvis" in TV noise and refuse "hey Travis" from
the TV: its score is as high on the near lines as on a wake in noise. whisper tiny.en's
free transcript of the segment is no better in noise ("Hey, John."), but its decoder still
gives the phrase a fair probability there, and a poor one where the audio says something
else. So the segment (the audio up to the wake, a little after it) is encoded once and
scored twice (loomd.audio.rescore): whisper's best guess, token by token (the reference:
no spelling of its own, no retries at higher temperatures) and the phrase, forced, in the
spellings whisper uses. The wake counts when the phrase scores within `margin` (nats per
token) of the guess, or (the rule the bench chose) at least -`floor` on its own.
Runs in the STT worker (a whisper.cpp context of its own), only on wakes. Why a forced
decode and these numbers: docs/design/voice-noise.md (bench/falsewake.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from loomd.audio.rescore import WhisperScorer

__all__ = ["POST_S", "PRE_S", "PhraseHeard", "hear_phrase", "segment_audio", "spellings"]

PRE_S = 1.2  # the wake segment: this much audio up to the wake ("hey jarvis" takes ~0.8 s)
POST_S = 0.3  # and this much after it: at a low threshold the model fires before the end
_PAD = 4000  # silence before and after, in samples (as the STT stage pads an utterance)
_MAX_TOKENS = 12  # whisper's guess for 1.5 s of speech: ~4 tokens a second, and a bound


@dataclass(frozen=True)
class PhraseHeard:
    text: str  # whisper's own transcript of the segment
    free: float  # its mean token log-probability (with the end of text)
    phrase: float  # the wake phrase's, forced
    ms: float = 0.0

    @property
    def gap(self) -> float:
        """How much less likely the phrase is than what whisper wrote (0 or less: as
        likely, or whisper wrote the phrase)."""
        return round(self.free - self.phrase, 3)

    def accepts(self, margin: float | None = None, floor: float | None = None) -> bool:
        """Within `margin` of whisper's guess, and scoring at least -`floor` on its own
        (each rule only when given)."""
        near = margin is None or self.gap <= margin
        return near and (floor is None or self.phrase >= -floor)


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
    best = max(f.score for f in scorer.score(spellings(phrase), language=WAKE_LANGUAGE))
    return PhraseHeard(own.text, own.score, best, (time.perf_counter() - began) * 1000)


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
