"""Closed-set rescoring: when a voice transcript matches no sentence (or only after a
repair), ask whisper's own decoder which of the home's closest sentences best explains the
audio (`voice.rescore`, answered by the STT worker that still holds the clip), and take the
best only if whisper finds it about as likely as what it wrote itself.

Pure (shared with bench/assist.py): `candidates()` picks the sentences, `choose()` decides.
The decision stays hassil's: a chosen sentence is matched exactly like a typed one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from loomd.assist.matcher import Match, Matcher, has_negation, numbers_out

__all__ = ["NUMBER_GUESSES", "Choice", "candidates", "choose", "wants_rescore"]

# A sentence's number whisper did not hear at all ("Walker the Mac, Darden for and mid it."
# for "water the back garden for 10 minutes"): these values are scored, whisper picks.
NUMBER_GUESSES = ("5", "10", "15", "20", "30")


@dataclass(frozen=True)
class Choice:
    sentence: str  # "" when none was taken
    score: float  # its score (mean token log-probability)
    transcript_score: float
    reason: str  # "taken", "below margin", "no candidates", ...


def wants_rescore(text: str, m: Match | None) -> bool:
    """Rescoring is for what hassil could not take as it was heard: no match, a repair, or
    an unknown target. Never for a negation ("don't turn on ..."): exact match or nothing."""
    if not text.strip() or has_negation(text):
        return False
    return m is None or m.fuzzy or bool(m.unknown)


def candidates(matcher: Matcher, text: str, k: int = 10) -> list[str]:
    """The `k` phrases of the home closest to the transcript (rapidfuzz ratio, numbers as
    `#`), their numbers filled from the transcript (or, for one it did not hear, each of
    `NUMBER_GUESSES`); each one hassil matches exactly."""
    norm, numbers = numbers_out(text)
    phrases = matcher.phrases
    if not phrases:
        return []
    hits = process.extract(norm, phrases, scorer=fuzz.ratio, limit=k * 3)
    out: list[str] = []
    for phrase, _score, _i in hits:
        holes = phrase.count("#")
        if holes > len(numbers) + 1:
            continue
        fills = [numbers[:holes]] if holes <= len(numbers) else [
            [*numbers, guess] for guess in NUMBER_GUESSES
        ]  # fmt: skip
        for fill in fills:
            sentence = phrase
            for n in fill:
                sentence = sentence.replace("#", n, 1)
            if sentence not in out and matcher.recognize(sentence) is not None:
                out.append(sentence)
        if len({re.sub(r"\d+", "#", s) for s in out}) >= k:
            break
    return out


def choose(
    sentences: list[str], scores: list[float], transcript_score: float, margin: float
) -> Choice:
    """The best-scoring sentence if it is within `margin` (nats per token) of the score of
    whisper's own transcript; otherwise none (whisper heard something else)."""
    if not sentences:
        return Choice("", float("-inf"), transcript_score, "no candidates")
    best = max(range(len(sentences)), key=lambda i: scores[i])
    if scores[best] < transcript_score - margin:
        return Choice("", scores[best], transcript_score, "below margin")
    return Choice(sentences[best], scores[best], transcript_score, "taken")
