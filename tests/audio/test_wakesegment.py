"""The wake check's segment, cut around the wake score's peak (loomd.audio.wakecheck
.WakeSegment), frame by frame: the pipeline and bench/falsewake.py cut it with this."""

from __future__ import annotations

from loomd.audio.wakecheck import HOLD_S, POST_S, PRE_S, WakeSegment

FRAME_MS = 20
CHUNK = 4  # frames per wake chunk (80 ms)
PRE, POST, HOLD = (round(x * 1000 / FRAME_MS) for x in (PRE_S, POST_S, HOLD_S))


def frames(start: int, n: int) -> list[bytes]:
    """Frames numbered from `start`: each one's number in its two bytes."""
    return [i.to_bytes(2, "little") for i in range(start, start + n)]


def numbers(pcm: bytes) -> list[int]:
    return [int.from_bytes(pcm[i : i + 2], "little") for i in range(0, len(pcm), 2)]


def follow(scores: list[float], extra: int = 100) -> tuple[WakeSegment, bytes, int]:
    """A crossing after frame 99 (100 frames before it), then chunks scored `scores`, then
    plain frames until the segment is ready: (segment, its audio, frames pushed)."""
    seg = WakeSegment(frames(0, 100), 0.31)
    at = 100
    for score in scores:
        for f in frames(at, CHUNK):
            seg.push(f)
        at += CHUNK
        seg.score(score)
    while (out := seg.ready()) is None and at < 100 + len(scores) * CHUNK + extra:
        seg.push(frames(at, 1)[0])
        at += 1
    assert out is not None
    return seg, out, at


def test_the_segment_ends_after_the_peak_not_after_the_crossing() -> None:
    """The score rises for three chunks after the 0.3 crossing (the phrase is still being
    said), then falls: the segment is PRE_S before the crossing to POST_S after the third."""
    seg, out, _ = follow([0.6, 0.9, 0.97, 0.5, 0.2, 0.1])
    peak = 100 + 3 * CHUNK
    assert seg.held and seg.peak == 0.97 and seg.peak_ms == 3 * CHUNK * FRAME_MS
    assert numbers(out) == list(range(100 - PRE, peak + POST))


def test_a_dip_before_the_peak_does_not_end_the_hold() -> None:
    """The score of the white-noise clip of tests/audio/test_frontend.py after the front end:
    0.48 at the crossing, 0.01 and 0.08, then 0.99 (the phrase's end)."""
    seg, out, _ = follow([0.01, 0.08, 0.99, 1.0, 0.99, 0.91])
    assert seg.peak == 1.0 and seg.peak_ms == 4 * CHUNK * FRAME_MS
    assert numbers(out)[-1] == 100 + 4 * CHUNK + POST - 1


def test_a_score_that_falls_at_once_keeps_the_crossing() -> None:
    seg, out, _ = follow([0.2, 0.1, 0.1, 0.05, 0.0, 0.0])
    assert seg.peak_ms == 0
    assert numbers(out) == list(range(100 - PRE, 100 + POST))


def test_the_hold_is_bounded() -> None:
    """A score that keeps rising is followed for HOLD_S, no longer."""
    seg, out, _ = follow([0.4 + 0.01 * i for i in range(20)])
    last = 100 + HOLD // CHUNK * CHUNK
    assert seg.held and numbers(out)[-1] == last + POST - 1


def test_a_short_utterance_takes_what_there_is() -> None:
    """The utterance ends before the peak is known: `now()` has the audio so far, from
    PRE_S before the crossing."""
    seg = WakeSegment(frames(0, 100), 0.31)
    for f in frames(100, CHUNK):
        seg.push(f)
    seg.score(0.8)
    assert not seg.held and seg.ready() is None
    assert numbers(seg.now()) == list(range(100 - PRE, 104))


def test_a_failed_detector_stops_the_hold() -> None:
    seg = WakeSegment(frames(0, 10), 0.5)
    seg.stop()
    for f in frames(10, POST):
        seg.push(f)
    assert numbers(seg.ready() or b"") == list(range(0, 10 + POST))
