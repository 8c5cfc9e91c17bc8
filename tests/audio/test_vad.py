"""The VAD segmenter is pure: frames, a clock and a speech flag in, segments out."""

from __future__ import annotations

from loomd.audio.vad import Background, Segment, Segmenter, level_db

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


def test_the_lead_opens_an_utterance_said_straight_on() -> None:
    """The wake phrase's audio (`lead`) opens the utterance when speech starts within the
    pre-roll of the crossing (the command's first word began before it), the frames after
    the crossing following it; after a pause as long as the pre-roll it is dropped and the
    utterance is what it is without one."""
    lead = [b"\2\0" * 320] * 10

    def cut(pattern: str, with_lead: bool = True) -> Segment:
        seg = Segmenter(preroll_ms=100, hangover_ms=100, min_speech_ms=100)
        seg.open(0.0, lead=lead if with_lead else None)
        (got,), _ = feed(seg, pattern)
        assert isinstance(got, Segment)
        return got

    at_once = cut("s" * 20 + "." * 5)
    assert at_once.lead and at_once.pcm == b"".join(lead) + F * 25
    closure = cut("..." + "s" * 20 + "." * 5)  # a stop's closure: still straight on
    assert closure.lead and closure.pcm == b"".join(lead) + F * 28
    paused = cut("." * 30 + "s" * 20 + "." * 5)
    assert not paused.lead and paused.pcm == F * 30  # 5 of pre-roll, 20, 5 of hangover
    assert paused == cut("." * 30 + "s" * 20 + "." * 5, with_lead=False)


def level(amplitude: int) -> bytes:
    """A 20 ms frame of a square wave at `amplitude` (its power: amplitude squared)."""
    return (amplitude.to_bytes(2, "little", signed=True) * 2
            + (-amplitude).to_bytes(2, "little", signed=True) * 2) * 80  # fmt: skip


def test_the_room_is_its_mean_level_before() -> None:
    bg = Background(window_s=0.2)
    assert bg.db is None
    for _ in range(200):
        bg.push(level(1000))
    assert bg.db is not None and abs(bg.db - level_db(level(1000))) < 0.01
    assert abs(level_db(level(1000)) - 60.0) < 0.01  # 1000 LSB: 60 dB
    bg.reset()
    assert bg.db is None


def test_the_room_rule_ends_an_utterance_over_a_loud_room() -> None:
    """Voiced frames as loud as the room (a TV the VAD calls speech) are silence for the
    hangover once `floor_db` is set; without it, or with the room's level unknown, they
    keep the utterance open."""
    speaker, tv = level(4000), level(2000)  # the speaker 6 dB over the TV

    def run(floor_db: float, background: float | None) -> str:
        seg = Segmenter(hangover_ms=200, max_utterance_s=3.0, level_drop_db=12.0,
                        floor_db=floor_db)  # fmt: skip
        seg.open(0.0, background_db=background)
        t = 0.0
        for pcm in [speaker] * 40 + [tv] * 200:  # the speaker, then the TV talking on
            cut = seg.push(pcm, t, True)
            if cut is not None:
                return f"{cut.reason} {cut.end:.2f}"
            t += 0.02
        return "none"

    room = level_db(tv)
    assert run(0.0, room) == "max_length 3.00"  # the level drop alone: 6 dB is near
    assert run(3.0, None) == "max_length 3.00"
    # 0.8 s of speech, two frames of the TV still in the 60 ms level, then 200 ms
    assert run(3.0, room) == "hangover 1.04"
