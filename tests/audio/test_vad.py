"""The VAD segmenter is pure: frames, a clock and a speech flag in, segments out."""

from __future__ import annotations

from loomd.audio.vad import Segmenter

F = b"\1\0" * 320  # one 20 ms frame (contents do not matter: the flag decides)


def feed(seg: Segmenter, pattern: str, t0: float = 0.0) -> tuple[list[object], float]:
    """'s' = speech frame, '.' = silence; returns the segments emitted and the next time."""
    out = []
    t = t0
    for ch in pattern:
        cut = seg.push(F, t, ch == "s")
        if cut is not None:
            out.append(cut)
        t += 0.02
    return out, t


def test_hangover_ends_the_utterance_with_preroll() -> None:
    seg = Segmenter(preroll_ms=100, hangover_ms=200, min_speech_ms=100)
    seg.open(0.0)
    cuts, _ = feed(seg, "." * 20 + "s" * 30 + "." * 9)
    assert cuts == []  # 180 ms of silence: not over yet
    cuts, _ = feed(seg, ".", t0=(20 + 30 + 9) * 0.02)
    assert len(cuts) == 1
    cut = cuts[0]
    assert cut.reason == "hangover"
    assert abs(cut.speech_start - 0.40) < 1e-9
    assert abs(cut.speech_end - 1.00) < 1e-9
    # 5 frames of pre-roll + 30 speech + 10 of hangover
    assert len(cut.pcm) == (5 + 30 + 10) * 640


def test_short_bursts_are_ignored() -> None:
    seg = Segmenter(hangover_ms=100, min_speech_ms=200, no_speech_s=60)
    seg.open(0.0)
    cuts, t = feed(seg, "sss" + "." * 10)  # 60 ms: a click
    assert cuts == []
    assert not seg.in_speech
    cuts, _ = feed(seg, "s" * 15 + "." * 5, t0=t)
    assert [c.reason for c in cuts] == ["hangover"]


def test_max_length_cuts_an_endless_utterance() -> None:
    seg = Segmenter(max_utterance_s=1.0)
    seg.open(0.0)
    cuts, _ = feed(seg, "s" * 200)
    assert [c.reason for c in cuts][:1] == ["max_length"]
    assert abs(cuts[0].end - 1.0) < 1e-9


def test_no_speech_times_out() -> None:
    seg = Segmenter(no_speech_s=0.5)
    seg.open(10.0)
    cuts, _ = feed(seg, "." * 30, t0=10.0)
    assert [c.reason for c in cuts] == ["no_speech"]
    assert abs(cuts[0].end - 10.48) < 1e-6
