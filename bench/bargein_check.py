"""Barge-in, duck then check (docs/design/voice-bargein.md): a candidate wake while the board
plays ducks playback at once, the wake check (whisper's decoder on the wake segment, behind
the echo canceller) decides, and only a confirmed wake stops playback. Against the control
in the same run: the code it replaced (a score over `speaking_threshold` 0.6 stops at once,
no check).

    .venv/bin/python bench/bargein_check.py [--quick]

The sample-accurate fake room of tests/audio/room.py (`SampleRoom`, `wake_over_reply`: a
14 s Piper reply in 5 sentence clips, each reaching the room after its own 5-45 ms latency,
frames up to 8 ms late, the timeline reference, libspeexdsp, openWakeWord on 80 ms hops).

- Detection: the person's espeak-ng "hey jarvis" at 24 offsets over each of several Piper
  renderings of the reply (Piper renders each differently). Detected = a candidate in the
  word's window whose check accepts it (the daemon's default rule) / the control's 0.6.
- False barge-ins: the board's replies alone, and talk over them (bench/chatter.py's cached
  stream of talk with no wake word, mixed into the room while the board speaks): ducks
  (candidates) and stops (candidates the check confirms) per hour of playback; the control's
  stops (crossings of 0.6, 2 s apart: the refractory period).
- Times from the end of the wake word (the last voiced sample of the person's clip): to the
  candidate's hop (+ <= 20 ms for the room's speaker to play the next, ducked, chunk) and to
  the verdict (the segment complete in stream time + the check's time on this box, in
  process; the daemon adds its worker hop, ~10 ms); the control's to its 0.6 hop.
For the threshold: every candidate threshold in `THRESHOLDS` is scored on the same runs
(one run per threshold would be the daemon's exact behaviour; the duck after a candidate
changes the audio after it, so the runs are made at the chosen threshold and the others are
counted on the undeducked control runs, the check included). Ends with one JSON line."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bargein import SENTENCES, person_pcm
from bench.harness import small_models_dir
from loomd.audio.settings import WakeSettings
from loomd.audio.stt import audio_ctx_for
from loomd.audio.wakecheck import PRE_S, WakeSegment, hear_phrase, segment_audio

RATE = 16000
PHRASE = "hey jarvis"
CONTROL = 0.6  # the speaking threshold the current code stops at
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)  # candidate thresholds looked at on the control runs
MARGINS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # the check's margin, swept
PRE_FRAMES = int(PRE_S * 1000) // 20
LEAD_S = 1.0  # wake_over_reply starts the board this far in


class Checker:
    """The wake check as the STT worker runs it, in process, cached per segment."""

    def __init__(self, scorer: Any, margin: float = 0.0) -> None:
        self.scorer = scorer
        self.rules = WakeSettings().check
        assert self.rules is not None
        # the margin used during playback (`[voice.wake] bargein_margin`; 0: the check's)
        self.margin = margin or WakeSettings().bargein_check()[0]
        self.ms: list[float] = []
        self._seen: dict[bytes, Any] = {}
        self.heard: dict[Any, Any] = {}  # by DuckThenCheck event

    def last(self, event: Any) -> Any:
        return self.heard[event]

    def __call__(self, pcm: bytes) -> tuple[bool, Any]:
        key = pcm[:64] + len(pcm).to_bytes(4, "little") + pcm[-64:]
        if key not in self._seen:
            audio = segment_audio(pcm)
            heard = hear_phrase(self.scorer, audio, audio_ctx_for(len(audio) / RATE), PHRASE)
            self.ms.append(heard.ms)
            self._seen[key] = heard
        heard = self._seen[key]
        return heard.accepts(self.margin, self.rules.floor), heard


class DuckThenCheck:
    """The pipeline's barge-in rule over one room (`on_hop` for wake_over_reply): a hop over
    `threshold` while the board plays ducks the room's speaker and opens a wake segment;
    hops after it give the segment its peak (then the detector forgets, as `_hold` does); the
    check runs once the segment is complete: confirmed stops the speaker, refused restores
    the volume and resets the detector (as the pipeline does)."""

    def __init__(self, room: Any, wake: Any, check: Checker, threshold: float, duck_db: float,
                 tap: list[bytes], play_end_s: float) -> None:  # fmt: skip
        self.room, self.wake, self.check = room, wake, check
        self.threshold, self.duck_db, self.tap = threshold, duck_db, tap
        self.play_end_s = play_end_s
        self.segment: WakeSegment | None = None
        self.pushed = 0
        self.cand_t = 0.0
        self.stopped = False
        # (candidate time, verdict time in stream, accepted, check ms, whisper's text)
        self.events: list[tuple[float, float, bool, float, str]] = []

    def __call__(self, t_end: float, score: float) -> None:
        if self.stopped:
            return
        seg = self.segment
        if seg is None:
            if score < self.threshold or not (LEAD_S <= t_end <= self.play_end_s):
                return
            self.room.speaker.volume.duck(self.duck_db)
            self.segment = WakeSegment(self.tap[-PRE_FRAMES:], score)
            self.pushed, self.cand_t = len(self.tap), t_end
            return
        for f in self.tap[self.pushed :]:
            seg.push(f)
        self.pushed = len(self.tap)
        if not seg.held:
            seg.score(score)
            if seg.held:
                self.wake.reset(clock=False)
        ready = seg.ready()
        if ready is None:
            return
        ok, heard = self.check(ready)
        self.events.append((self.cand_t, t_end, ok, heard.ms, heard.text))
        self.check.heard[self.events[-1]] = heard
        self.segment = None
        if ok:
            self.stopped = True
            self.room.speaker.stop()
        else:
            self.room.speaker.volume.restore()
            self.wake.reset()


def crossings(scores: list[tuple[float, float]], threshold: float, a: float, b: float,
              refractory: float = 2.0) -> list[float]:  # fmt: skip
    """Hop times in [a, b] at or over `threshold`, at least `refractory` apart."""
    out: list[float] = []
    for t, s in scores:
        if a <= t <= b and s >= threshold and (not out or t - out[-1] >= refractory):
            out.append(t)
    return out


def segment_at(tap: list[bytes], scores: list[tuple[float, float]], t: float) -> bytes:
    """The wake segment the pipeline would cut for a crossing at hop time `t` on an
    undeducked run (the control's): the peak held over the next hops."""
    end = round(t / 0.02)
    seg = WakeSegment(tap[max(0, end - PRE_FRAMES) : end], 0.0)
    seg.peak = next(s for tt, s in scores if abs(tt - t) < 1e-6)
    i = end
    for tt, s in scores:
        if tt <= t + 1e-6:
            continue
        while i < min(len(tap), round(tt / 0.02)):
            seg.push(tap[i])
            i += 1
        seg.score(s)
        if seg.ready() is not None:
            break
    while seg.ready() is None and i < len(tap):
        seg.push(tap[i])
        i += 1
    return seg.now()


def voiced_end(pcm: bytes) -> float:
    x = np.abs(np.frombuffer(pcm, np.int16).astype(np.float64))
    idx = np.nonzero(x > 300)[0]
    return float(idx[-1]) / RATE if len(idx) else 0.0


def p50(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def bench(models: Path, quick: bool, renderings: int = 0, talk_s: float = 0.0) -> dict[str, Any]:
    from bench.chatter import cache_dir
    from loomd.audio.rescore import WhisperScorer
    from loomd.audio.tts import PiperTts
    from loomd.audio.wake import WakeDetector
    from tests.audio.room import SampleRoom, wake_over_reply

    began = time.perf_counter()
    threshold = WakeSettings().limits()["*"]  # the default: the wake threshold (0.3)
    duck_db = WakeSettings().bargein_duck_db
    tts = PiperTts(str(models), "piper/en_US-joe-medium.onnx")
    wake = WakeDetector(str(models), ("openwakeword/hey_jarvis_v0.1.onnx",), refractory_s=0.0)
    check = Checker(WhisperScorer(str(models / "whisper/ggml-tiny.en.bin"), 1))
    with tempfile.TemporaryDirectory() as d:
        person = person_pcm(Path(d))
    word = len(person) / 32000
    word_end = voiced_end(person)
    n = 8 if quick else 24
    renderings = renderings or (2 if quick else 4)

    def run(room: Any, reply: list[bytes], rule: DuckThenCheck | None,
            tap: list[bytes]) -> list[tuple[float, float]]:  # fmt: skip
        return asyncio.run(wake_over_reply(room, reply, wake, tap=tap, on_hop=rule))

    per: list[dict[str, Any]] = []
    person_heard: list[Any] = []  # the first candidate in each word's window (None: none)
    talk_heard: list[Any] = []  # every candidate with no wake word in it
    duck_ms: list[float] = []
    stop_ms: list[float] = []
    ctl_ms: list[float] = []
    sweep: dict[float, list[int]] = {t: [0, 0] for t in THRESHOLDS}  # candidates, confirmed
    alone_hours = 0.0
    alone = {"ducks": 0, "stops": 0, "control_stops": 0}
    for r in range(renderings):
        reply = [tts.synthesize(s) for s in SENTENCES]
        seconds = sum(len(c) for c in reply) / 32000
        play_end = LEAD_S + seconds + 0.1
        got = {"new": 0, "control": 0, "refused_in_window": 0, "early_ducks": 0, "early_stops": 0}
        for k in range(n):
            at = 2.0 + (seconds - 2.5) * k / (n - 1)
            window = (at, at + word + 0.8)
            # the control: the code this replaces, the same room
            room = SampleRoom(seconds + 3.0, seed=1000 * r + k)
            room.speak(person, at)
            tap: list[bytes] = []
            scores = run(room, reply, None, tap)
            hits = crossings(scores, CONTROL, *window)
            if hits:
                got["control"] += 1
                ctl_ms.append((hits[0] - at - word_end) * 1000)
            for t in THRESHOLDS:  # the first crossing in the window, checked
                first = crossings(scores, t, *window)
                if first:
                    sweep[t][0] += 1
                    sweep[t][1] += check(segment_at(tap, scores, first[0]))[0]
            # duck then check, the daemon's default
            room = SampleRoom(seconds + 3.0, seed=1000 * r + k)
            room.speak(person, at)
            tap = []
            rule = DuckThenCheck(room, wake, check, threshold, duck_db, tap, play_end)
            run(room, reply, rule, tap)
            inside = [e for e in rule.events if window[0] <= e[0] <= window[1]]
            ok = [e for e in inside if e[2]]
            got["refused_in_window"] += len(inside) - len(ok)
            if inside:
                person_heard.append(check.last(inside[0]))
            else:
                person_heard.append(None)
            talk_heard.extend(check.last(e) for e in rule.events if e[0] < window[0])
            for e in inside:
                if not e[2]:
                    h = check.last(e)
                    print(
                        f"  refused in the window, offset {at:.2f} s: heard {e[4]!r}, "
                        f"gap {h.gap}, phrase {h.phrase:.2f}",
                        file=sys.stderr,
                    )
            if ok:
                got["new"] += 1
                cand, ready, _, ms, _ = ok[0]
                duck_ms.append((cand - at - word_end) * 1000 + 20)
                stop_ms.append((ready - at - word_end) * 1000 + ms + 20)
            early = [e for e in rule.events if e[0] < window[0]]
            got["early_ducks"] += len(early)  # before the person spoke: the board alone
            got["early_stops"] += sum(e[2] for e in early)
        # the board alone: no person
        room = SampleRoom(seconds + 3.0, seed=9000 + r)
        tap = []
        rule = DuckThenCheck(room, wake, check, threshold, duck_db, tap, play_end)
        room2 = SampleRoom(seconds + 3.0, seed=9000 + r)
        ctl = run(room2, reply, None, [])
        run(room, reply, rule, tap)
        alone["ducks"] += len(rule.events)
        talk_heard.extend(check.last(e) for e in rule.events)
        alone["stops"] += sum(e[2] for e in rule.events)
        alone["control_stops"] += len(crossings(ctl, CONTROL, LEAD_S, play_end))
        alone_hours += seconds / 3600
        per.append({"reply_s": round(seconds, 1), "detected": got["new"],
                    "detected_control": got["control"],
                    "refused_in_window": got["refused_in_window"],
                    "early_ducks": got["early_ducks"],
                    "early_stops": got["early_stops"]})  # fmt: skip
        print(f"rendering {r}: {got['new']}/{n} duck+check, control {got['control']}/{n}",
              file=sys.stderr)  # fmt: skip
    # talk over the board: the cached chatter (no wake word) mixed into the room
    talk_s = talk_s or (120.0 if quick else 1200.0)
    cached = sorted(cache_dir().glob("chatter-*.pcm"), key=lambda p: p.stat().st_size)
    talk: dict[str, Any] = {"ducks": 0, "stops": 0, "control_stops": 0, "hours": 0.0,
                            "control_hours": 0.0, "refused_texts": []}  # fmt: skip
    if cached:
        stream = np.frombuffer(cached[-1].read_bytes(), np.int16)
        reply = [tts.synthesize(s) for s in SENTENCES] * 4  # ~56 s of the board speaking
        seconds = sum(len(c) for c in reply) / 32000
        play_end = LEAD_S + seconds + 0.1
        rooms = max(1, round(talk_s / seconds))
        for j in range(rooms):
            a = (j * 7919 * RATE) % max(1, len(stream) - int(seconds * RATE))
            piece = stream[a : a + int(seconds * RATE)].tobytes()
            for deduck in (False, True):
                room = SampleRoom(seconds + 3.0, seed=20000 + j)
                room.speak(piece, LEAD_S)
                tap = []
                if deduck:
                    rule = DuckThenCheck(room, wake, check, threshold, duck_db, tap, play_end)
                    run(room, reply, rule, tap)
                    talk["ducks"] += len(rule.events)
                    talk_heard.extend(check.last(e) for e in rule.events)
                    talk["stops"] += sum(e[2] for e in rule.events)
                    talk["refused_texts"] += [e[4] for e in rule.events if not e[2]][:3]
                    stopped = [e for e in rule.events if e[2]]
                    played = (stopped[0][1] if stopped else play_end) - LEAD_S
                    talk["hours"] += played / 3600
                else:
                    sc = run(room, reply, None, tap)
                    talk["control_stops"] += len(crossings(sc, CONTROL, LEAD_S, play_end))
                    talk["control_hours"] += seconds / 3600
        print(f"talk over the board: {talk}", file=sys.stderr)
    hours, hours_ctl = max(talk["hours"], 1e-9), max(talk["control_hours"], 1e-9)
    # The check's margin during playback, swept on the same candidates (a confirmed one
    # would have stopped its run: the counts past it are what the sweep adds)
    margins = {}
    for m in MARGINS:
        det = sum(h is not None and h.accepts(m, check.rules.floor) for h in person_heard)
        fal = sum(h.accepts(m, check.rules.floor) for h in talk_heard)
        margins[f"{m:g}"] = [det, len(person_heard), fal, len(talk_heard)]
    print(f"margin sweep (detected, offsets, false stops, false candidates): {margins}",
          file=sys.stderr)  # fmt: skip
    gaps_person = sorted(round(h.gap, 2) for h in person_heard if h is not None)
    gaps_talk = sorted(round(h.gap, 2) for h in talk_heard)
    return {
        "bargein_rule": f"duck {duck_db:g} dB at {threshold:g}, then the wake check",
        "bargein_offsets": n,
        "bargein_renderings": renderings,
        "bargein_detected_per_rendering": [p["detected"] for p in per],
        "bargein_detected_control_per_rendering": [p["detected_control"] for p in per],
        "bargein_detected": min(p["detected"] for p in per),
        "bargein_detected_control": min(p["detected_control"] for p in per),
        "bargein_refused_in_window": sum(p["refused_in_window"] for p in per),
        "bargein_early_ducks": sum(p["early_ducks"] for p in per),
        "bargein_early_stops": sum(p["early_stops"] for p in per),
        "bargein_sweep_checked": {f"{t:g}": v for t, v in sweep.items()},
        "bargein_alone_hours": round(alone_hours, 4),
        "bargein_alone_ducks": alone["ducks"],
        "bargein_alone_stops": alone["stops"],
        "bargein_alone_control_stops": alone["control_stops"],
        "bargein_talk_hours": round(talk["hours"], 4),
        "bargein_talk_ducks_per_hour": round(talk["ducks"] / hours, 1),
        "bargein_talk_stops_per_hour": round(talk["stops"] / hours, 1),
        "bargein_talk_control_stops_per_hour": round(talk["control_stops"] / hours_ctl, 1),
        "bargein_talk_refused_examples": talk["refused_texts"][:6],
        "bargein_margin": check.margin,
        "bargein_margin_sweep": margins,
        "bargein_gaps_person_max5": gaps_person[-5:],
        "bargein_gaps_talk_min5": gaps_talk[:5],
        "bargein_duck_ms_p50": p50(duck_ms),
        "bargein_stop_ms_p50": p50(stop_ms),
        "bargein_stop_ms_p50_control": p50(ctl_ms),
        "bargein_check_ms_p50": p50(check.ms),
        "bargein_wall_s": round(time.perf_counter() - began, 1),
    }


if __name__ == "__main__":
    import os

    args = sys.argv[1:]
    quick = "--quick" in args
    r = int(args[args.index("--renderings") + 1]) if "--renderings" in args else 0
    talk = float(args[args.index("--talk-s") + 1]) if "--talk-s" in args else 0.0
    res = bench(small_models_dir(), quick, r, talk)
    res["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res))
