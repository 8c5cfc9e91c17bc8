"""Word error rate: how the voice tests and bench/voice.py score a transcript."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["wer", "word_errors", "words"]


def words(text: str) -> list[str]:
    """Lower-case words; punctuation splits words, an apostrophe stays in them."""
    return "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text).split()


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(substitutions + insertions + deletions, words in the reference): Levenshtein on words."""
    r, h = words(ref), words(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)], len(r)


def wer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Errors over reference words, for one pair of texts or a corpus of pairs."""
    pairs = [(refs, hyps)] if isinstance(refs, str) else list(zip(refs, hyps, strict=True))
    errors = total = 0
    for ref, hyp in pairs:
        e, n = word_errors(ref, hyp)  # type: ignore[arg-type]
        errors, total = errors + e, total + n
    return errors / max(1, total)
