"""Was the board spoken to? The second check on a wake, and the quiet end of a turn that
heard nothing addressed to it. Pure text functions: the agent gives them whisper's
transcript of the wake segment and the command together (one STT call, no added latency)
and acts on what they say.

The wake word model fires on sounds like its phrase ("hey travis", a TV line); whisper on
the same audio writes what was said. A wake counts when the transcript's first words are
close to the phrase (a character similarity, so "Hey, Jarvis." and "hey jarvis" match and
"hey travis" does not at the default strictness); its words are then cut off the command.
The wake check itself is whisper's decoder on the wake segment (loomd.audio.wakecheck);
the threshold and its margin come in presets (`Preset`); why these numbers:
docs/design/voice-noise.md (bench/noise.py)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BARE_THRESHOLD",
    "CHECK_MARGIN",
    "LEAD_STRICTNESS",
    "PRESETS",
    "Heard",
    "Preset",
    "check_wake",
    "not_addressed",
    "wake_phrase",
]

_VERSION = re.compile(r"(_v\d+(\.\d+)*)$")
_WORD = re.compile(r"[a-z0-9']+")
# What whisper writes for a noise, a cough or a TV in the background (after clean_text
# took its [bracketed] and (parenthesised) markers out)
# What whisper writes for noise or a word that was not meant. Not the answers ("yes", "no",
# "okay"): a turn may be the answer to the board's own question (a confirmation).
_FILLER = {"you", "thank you", "thanks", "bye", "oh", "uh", "um", "hmm", "so", "the", "a",
           "and", "i", "hey"}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    threshold: float  # the wake word score that counts as a wake
    # The wake check (loomd.audio.wakecheck), nats per token; both None = no check
    floor: float | None = None  # the phrase's own score must be at least -floor
    margin: float | None = None  # and within this of whisper's guess

    @property
    def checked(self) -> bool:
        return self.floor is not None or self.margin is not None


# From bench/noise.py (docs/design/voice-noise.md, 20 min of TV-like speech, 30 wake
# clips): openWakeWord fires at a lower threshold than it could alone and the wake check
# refuses what whisper's decoder does not hear as the phrase. "default": the fewest false
# wakes with recall (clean, 10 dB, 5 dB) no worse than openWakeWord alone at 0.5 (3 an hour
# against 48); "low": the fewest false wakes (0), then the best recall; "high": the best
# recall in TV noise with no more false wakes than openWakeWord alone. Session 11 (two hours
# of talk, 48 clips a condition, the check taking the phrase as an opening too): default 0.5
# an hour against raw openWakeWord's 10.5, recall 0.94 clean / 0.63 at 10 dB (0.83 on Piper);
# low 0 an hour, 0.92 / 0.63; high 3 an hour, 1.0 / 0.77.
# `second_check = "always"` on a preset without a check uses `CHECK_MARGIN`.
CHECK_MARGIN = 0.5
BARE_THRESHOLD = 0.5  # openWakeWord's own, where no check follows a wake
# The phrase cut off the transcript of a command said straight on from it (the utterance
# opens with the wake's audio: loomd.audio.pipeline): the wake is already decided, so the
# text rule only finds where the phrase ends, leniently ("Hey, Travis.", "Jarvis,"), but
# not so leniently that a command's own words pass for it ("Play the harvest album": 0.67)
LEAD_STRICTNESS = 0.7
PRESETS = {
    "low": Preset(0.3, margin=0.5),  # wakes less: a TV, a busy room
    "default": Preset(0.3, margin=0.75),
    "high": Preset(0.2, margin=1.25),  # wakes more easily: a quiet voice, far away
}


def wake_phrase(model: str) -> str:
    """The phrase a wake model listens for, from its file name: `hey_jarvis_v0.1.onnx` ->
    "hey jarvis"."""
    stem = _VERSION.sub("", Path(model).name.removesuffix(".onnx"))
    return " ".join(_WORD.findall(stem.replace("_", " ").replace("-", " ").lower()))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Heard:
    ok: bool  # the wake phrase was heard at the start
    score: float  # the best similarity found
    command: str  # the transcript after the wake phrase (all of it when not ok)


def check_wake(transcript: str, phrase: str, strictness: float) -> Heard:
    """Does `transcript` start with `phrase` (give or take a word whisper added, dropped or
    merged)? The command is what follows the best-matching first words."""
    words, target = _words(transcript), _words(phrase)
    if not target:
        return Heard(True, 1.0, transcript.strip())
    want = " ".join(target)
    best, cut = 0.0, 0
    # The phrase may come out as one word more or fewer ("hey jarvis" -> "hay jar vis",
    # "heyjarvis"); it is looked for in the first few words only.
    for n in range(max(1, len(target) - 1), min(len(words), len(target) + 2) + 1):
        for skip in range(0, min(2, len(words) - n) + 1):  # a filler whisper put first
            got = " ".join(words[skip : skip + n])
            score = difflib.SequenceMatcher(None, want, got).ratio()
            if score > best:
                best, cut = score, skip + n
    ok = best >= strictness
    if not ok:
        return Heard(False, round(best, 3), transcript.strip())
    # The command: the transcript's own text after the cut words (keeps its capitals)
    rest = transcript
    for w in words[:cut]:
        m = re.search(re.escape(w), rest, re.IGNORECASE)
        if m is None:
            break
        rest = rest[m.end() :]
    rest = rest.lstrip(" ,.!?;:-").strip()
    # A sentence of its own, as whisper writes the command alone ("Turn on ...")
    return Heard(True, round(best, 3), rest[:1].upper() + rest[1:])


def not_addressed(command: str, min_words: int = 1) -> str:
    """Why a turn's command is nothing to act on ("" when it is something): empty, only
    punctuation, or only a filler whisper writes for noise."""
    words = _words(command)
    if not words:
        return "nothing was said after the wake word"
    if len(words) < min_words:
        return f"too short: {command!r}"
    if " ".join(words) in _FILLER:
        return f"not a request: {command!r}"
    return ""
