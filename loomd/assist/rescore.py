"""Closed-set rescoring: when a voice transcript matches no sentence (or only after a
repair), ask whisper's own decoder which of the home's closest sentences best explains the
audio (`voice.rescore`, answered by the STT worker that still holds the clip), and take the
best only if whisper finds it about as likely as what it wrote itself.

Pure (shared with bench/assist.py): `candidates()` picks the sentences, `choose()` decides.
The decision stays hassil's: a chosen sentence is matched exactly like a typed one."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz, process

from loomd.assist.matcher import Match, Matcher, has_negation, numbers_out
from loomd.errors import LoomdError
from loomd.messages import ErrorCode, RescoreReply, RescoreRequest, Topic

__all__ = [
    "NUMBER_GUESSES",
    "Choice",
    "candidates",
    "cased",
    "choose",
    "rescore_match",
    "wants_rescore",
    "word_cases",
]

log = logging.getLogger("loomd.assist")

# A sentence's number whisper did not hear at all ("Walker the Mac, Darden for and mid it."
# for "water the back garden for 10 minutes"): these values are scored, whisper picks.
NUMBER_GUESSES = ("5", "10", "15", "20", "30")


@dataclass(frozen=True)
class Choice:
    sentence: str  # "" when none was taken
    score: float  # its score (mean token log-probability)
    transcript_score: float
    reason: str  # "taken", "below margin", "no candidates", ...


# Beyond the matcher's negations: a "no" heard anywhere ("No turn on the kitchen lights."
# was whisper's "don't turn on ..." at 10 dB, and its command scored within 0.81 of it).
_REFUSAL = re.compile(r"\b(no|nope|nah|cancel|wait)\b", re.I)
# Who did it: a sentence about a person is a statement or a question, not a command.
_PEOPLE = re.compile(r"\b(i|i'm|i've|i'd|me|we|you|he|she|they|who|someone|somebody)\b")


def wants_rescore(text: str, m: Match | None) -> bool:
    """Rescoring is for what hassil could not take as it was heard: no match, a repair, or
    an unknown target. Never for a negation or a refusal ("don't turn on ...", "no, turn
    on ..."): exact match or nothing."""
    if not text.strip() or has_negation(text) or _REFUSAL.search(text):
        return False
    return m is None or m.fuzzy or bool(m.unknown)


def candidates(matcher: Matcher, text: str, k: int = 10) -> list[str]:
    """The `k` phrases of the home closest to the transcript (rapidfuzz ratio, numbers as
    `#`; of each home-assistant-intents template only its closest), their numbers filled
    from the transcript (or, for one it did not hear, each of `NUMBER_GUESSES`); each one
    hassil matches exactly, and none that leaves out a person the transcript names ("I
    turned on the desk lamp" is not "turn on the desk lamp", however close whisper scores
    them: the nearest wrong action on the bench)."""
    people = set(_PEOPLE.findall(text.lower()))
    norm, numbers = numbers_out(text)
    phrases = matcher.phrases
    if not phrases:
        return []
    hits = process.extract(norm, phrases, scorer=fuzz.ratio, limit=k * 10)
    out: list[str] = []
    templates: set[str] = set()
    for phrase, _score, _i in hits:
        template = matcher.template_of(phrase)
        if template in templates:  # one sentence of each HA template: the closest
            continue
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
            if (
                sentence not in out
                and people <= set(_PEOPLE.findall(sentence))
                and matcher.recognize(sentence) is not None
            ):
                out.append(sentence)
                if template:
                    templates.add(template)
        if len({re.sub(r"\d+", "#", s) for s in out}) >= k:
            break
    cases = word_cases(text, matcher.names)
    return [cased(s, cases) for s in out]


_WORD = re.compile(r"\w+")


def word_cases(transcript: str, names: list[str]) -> dict[str, str]:
    """Each word's spelling (lower case -> as written): the transcript's (but its first
    word, capitalised for the sentence), then the home's names. The phrases are lower case
    (hassil matches without case), but whisper scores a word as it writes it: on a German
    clip, "schalte das licht in der küche ein" scored -3.32 a token, "Schalte das Licht in
    der Küche ein" -1.55."""
    out: dict[str, str] = {}
    for w in [*_WORD.findall(transcript)[1:], *(w for n in names for w in _WORD.findall(n))]:
        out.setdefault(w.lower(), w)
    return out


def cased(sentence: str, cases: dict[str, str]) -> str:
    """`sentence` with each word written as `cases` has it (other words untouched)."""
    return _WORD.sub(lambda m: cases.get(m.group(0), m.group(0)), sentence)


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


async def rescore_match(
    ctx: Any,
    matcher: Matcher,
    text: str,
    utterance_id: str,
    k: int,
    margin: float,
    reported: set[str] | None = None,
) -> tuple[Match | None, Choice]:
    """Ask the voice component (`voice.rescore`) to score the closest sentences against
    the clip of `utterance_id`; the exact match of the chosen one, or None. A failure
    (no voice, the clip gone, rescoring unavailable) changes nothing and is said: as an
    error event the first time (per reason, in `reported`), in the log after that."""
    cands = await asyncio.to_thread(candidates, matcher, text, k)
    if not cands:
        return None, Choice("", float("-inf"), 0.0, "no candidates")
    req = RescoreRequest(utterance_id, text, tuple(cands), margin)
    try:
        if not await ctx.bus.listeners(Topic.VOICE_RESCORE):  # not 5 s of waiting for it
            raise LoomdError("no voice component answers voice.rescore")
        ev = await ctx.bus.request(Topic.VOICE_RESCORE, req.to_payload(), timeout=5.0)
        reply = RescoreReply.from_payload(ev.payload)
    except LoomdError as exc:
        reply = RescoreReply(error=f"{type(exc).__name__}: {exc}")
    if reply.error or len(reply.scores) != len(cands):
        why = f"assist: rescoring failed: {reply.error or reply}"
        if reported is None or why not in reported:
            ctx.error(ErrorCode.ASSIST_RESCORE, why)
            if reported is not None:
                reported.add(why)
        else:
            log.info("%s", why)
        return None, Choice("", float("-inf"), 0.0, "failed")
    pick = choose(cands, list(reply.scores), reply.transcript_score, margin)
    log.info("assist: rescored %r: %s %r %.2f (transcript %.2f, %.0f ms)", text, pick.reason,
             pick.sentence, pick.score, pick.transcript_score, reply.ms)  # fmt: skip
    if not pick.sentence:
        return None, pick
    m = await asyncio.to_thread(matcher.match, pick.sentence)
    if m is None or m.unknown:
        return None, pick
    return dataclasses.replace(m, fuzzy=True, text=text), pick
