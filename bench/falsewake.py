"""False wakes per hour and wake recall, for bench/noise.py: openWakeWord at each threshold,
with and without the front end before it and loomd's wake check after it
(`loomd.audio.wakecheck`: whisper's decoder scores the wake phrase against its own
transcript of the wake segment, cut around the wake score's peak as the pipeline cuts it);
microWakeWord's hey_jarvis (pymicro-wakeword) on the same audio when it is installed. Raw
baseline: openWakeWord alone on the microphone audio (its score crossing the threshold, with
the daemon's 2 s refractory period).

The long stream: an hour (or `--stream-s`) of talk with no wake word in it
(bench/chatter.py: espeak-ng voices and Piper reading varied text, lines near the phrase,
the board's own replies, music now and then; made once and cached in ~/.cache/loomd-bench).
Recall: "hey jarvis, <command>" said by six espeak-ng voices and by Piper rendered many ways
(`wake_clips`: 48 clips a condition), clean and in TV at 10 and 5 dB, reported per voice
family; a hit is a wake at or after the phrase's start that the check lets through. Each
clip's fate on the daemon's path is kept (`diagnose`: the model never crossed, or the check
refused, and what whisper heard). microWakeWord OR-ed with openWakeWord is measured too
(`either`).
The wakes are found as the daemon finds them: one the check lets through starts the
refractory period, one it refuses leaves the board deaf for `DEAF_S` (the check's time),
then it hears again. Each wake segment is checked once and its figures serve every margin."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.tvnoise import RATE, espeak_pcm, mix
from loomd.audio.addressed import PRESETS, check_wake
from loomd.audio.frames import FRAME_BYTES
from loomd.audio.settings import NS_DEFAULT
from loomd.audio.stt import audio_ctx_for
from loomd.audio.wakecheck import PRE_S, PhraseHeard, WakeSegment, hear_phrase, segment_audio

PHRASE = "hey jarvis"
MODEL = "openwakeword/hey_jarvis_v0.1.onnx"
STEP = 1280  # openWakeWord's 80 ms
REFRACTORY_S = 2.0
DEAF_S = 0.5  # a wake the check refused: the board listens for wakes again this much later

THRESHOLDS = sorted({0.1, 0.2, 0.3, 0.5, 0.7, *(p.threshold for p in PRESETS.values())})
MARGINS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5]
FLOORS = [1.5, 2.0, 2.5, 3.0]  # the alternative: the phrase's own score over -floor
CROSSING_MARGINS = [0.75]  # the old segment (cut at the crossing), for comparison
TEXT_STRICTNESS = 0.85  # the old check, on the segment's transcript: for comparison
WAKE_VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m4", "en-gb-x-rp", "en-029"]
COMMANDS = [
    "turn on the kitchen lights",
    "what time is it",
    "close the garage door",
    "play some jazz",
]


def frontend(pcm: bytes) -> bytes:
    """`pcm` through the daemon's front end (one suppressor over the whole stream)."""
    from loomd.audio.frontend import FrontEnd

    fe = FrontEnd(NS_DEFAULT)
    n = len(pcm) // FRAME_BYTES * FRAME_BYTES
    return b"".join(fe.process(pcm[i : i + FRAME_BYTES]) for i in range(0, n, FRAME_BYTES))


def scores(models: Any, pcm: bytes, model: str = MODEL) -> list[float]:
    """openWakeWord's score for each 80 ms of `pcm` (raw: the library alone)."""
    from openwakeword.model import Model  # type: ignore[import-untyped]

    folder = models / "openwakeword"
    m = Model(wakeword_models=[str(models / model)], inference_framework="onnx",
              melspec_model_path=str(folder / "melspectrogram.onnx"),
              embedding_model_path=str(folder / "embedding_model.onnx"))  # fmt: skip
    x = np.frombuffer(pcm, np.int16)
    out = []
    for i in range(0, len(x) - STEP + 1, STEP):
        out.append(float(max(m.predict(x[i : i + STEP]).values())))
    return out


def cut(pcm: bytes, sc: list[float], k: int, hold: bool = True) -> tuple[int, bytes]:
    """The wake segment the daemon checks for a wake that crossed the threshold at chunk `k`
    of `pcm` (scores `sc`), cut as the pipeline cuts it (`WakeSegment`: around the score's
    peak; without `hold`, 0.3 s after the crossing, as before the peak-hold): (the peak's
    frame in the recording, the segment)."""
    fb = FRAME_BYTES
    end = (k + 1) * STEP * 2
    before = [pcm[i : i + fb] for i in range(max(0, end - int(PRE_S * RATE) * 2), end, fb)]
    seg = WakeSegment(before, sc[k])
    if not hold:
        seg.stop()
    at, j = end, k + 1
    while (out := seg.ready()) is None and at < len(pcm):
        for _ in range(STEP * 2 // fb):
            seg.push(pcm[at : at + fb])
            at += fb
        if not seg.held:
            seg.score(sc[j] if j < len(sc) else 0.0)
            j += 1
    return end // fb + seg.peak_at - seg.crossing, out if out is not None else seg.now()


class Checks:
    """The wake check on the segments of one recording, each computed once (keyed by the
    segment: its first frame and its peak's; engines and thresholds share them)."""

    def __init__(self, scorer: Any, pcm: bytes) -> None:
        self.scorer, self.pcm = scorer, pcm
        self.heard: dict[tuple[int, int], PhraseHeard] = {}
        self.held_ms: list[float] = []  # how far after the crossing each peak was

    def __call__(self, k: int, sc: list[float], hold: bool = True) -> PhraseHeard:
        peak, seg = cut(self.pcm, sc, k, hold)
        key = ((k + 1) * STEP // 320 - round(PRE_S * 50), peak)
        if key not in self.heard:
            self.heard[key] = self.hear(seg)
        if hold:
            self.held_ms.append((peak - (k + 1) * STEP // 320) * 20.0)
        return self.heard[key]

    def hear(self, seg: bytes) -> PhraseHeard:
        audio = segment_audio(seg)
        return hear_phrase(self.scorer, audio, audio_ctx_for(len(audio) / RATE), PHRASE)


def accepts(check: str, heard: PhraseHeard) -> bool:
    """Does the check named `check` let this wake through? "raw": no check; "text": the
    transcript starts with the phrase; "o<margin>": the daemon's rule, the forced phrase
    (said alone, or as the opening of what was said) within the margin of whisper's guess;
    "m<margin>": the phrase said alone only (the rule before session 11); "a<floor>": the
    forced phrase's score over -floor, whatever the guess; "x<margin>": as "m", on the
    segment cut at the crossing (before the peak-hold)."""
    if check == "raw":
        return True
    if check == "text":
        return check_wake(heard.text, PHRASE, TEXT_STRICTNESS).ok
    if check.startswith("a"):
        return heard.phrase >= -float(check[1:])
    if check.startswith("o"):  # the daemon's: the phrase alone or as an opening
        return heard.accepts(float(check[1:]))
    # "m" and "x": the phrase alone (before session 11); the segment differs (`Checks`)
    return heard.gap <= float(check[1:])


Scored = list[float] | Callable[[float], list[float]]
CHECKS = ["raw", "text", *(f"m{m:g}" for m in MARGINS), *(f"o{m:g}" for m in MARGINS),
          *(f"a{f:g}" for f in FLOORS),
          *(f"x{m:g}" for m in CROSSING_MARGINS)]  # fmt: skip


def wakes(sc: list[float], threshold: float, ok: Any = None) -> list[int]:
    """Chunks where a wake fires and `ok(k)` lets it through: the refractory period after
    each, `DEAF_S` after a refused one."""
    out, k, step_s = [], 0, STEP / RATE
    while k < len(sc):
        if sc[k] < threshold:
            k += 1
        elif ok is None or ok(k):
            out.append(k)
            k += int(REFRACTORY_S / step_s)
        else:
            k += max(1, int(DEAF_S / step_s))
    return out


def grid(scored: Scored, checks: Checks, thresholds: list[float] = THRESHOLDS,
         names: list[str] = CHECKS) -> dict[str, dict[str, list[int]]]:  # fmt: skip
    """Threshold -> check -> the wakes let through. `scored`: the scores per 80 ms, or a
    function of the threshold that gives them (`either`)."""
    out: dict[str, dict[str, list[int]]] = {}
    for t in thresholds:
        sc = scored(t) if callable(scored) else scored

        def check(c: str, sc: list[float] = sc) -> Any:
            return None if c == "raw" else lambda k: accepts(c, checks(k, sc, hold=c[0] != "x"))

        out[f"{t:g}"] = {c: wakes(sc, t, check(c)) for c in names}
    return out


def either(
    first: list[float], second: list[float], cutoff: float
) -> Callable[[float], list[float]]:
    """Two engines OR-ed: at threshold t a chunk fires when the first scores t or more, or
    the second `cutoff` or more. The second's score is moved onto the first's scale (by
    t - cutoff) so that the wake segment follows whichever peaks."""
    n = len(first)
    second = (second + [0.0] * n)[:n]
    return lambda t: [max(a, b + t - cutoff) for a, b in zip(first, second, strict=True)]


def micro_scores(pcm: bytes) -> list[float] | None:
    """microWakeWord's hey_jarvis (pymicro-wakeword, its own TFLite runtime and model) on
    `pcm`: its probability (the mean of its sliding window, as the library decides) at its
    best in each 80 ms; None when the package is not installed."""
    try:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
    except ImportError:
        return None
    mww = MicroWakeWord.from_builtin(Model.HEY_JARVIS)
    feats = MicroWakeWordFeatures()
    out = []
    for i in range(0, len(pcm) - STEP * 2 + 1, STEP * 2):
        best = 0.0
        for f in feats.process_streaming(pcm[i : i + STEP * 2]):
            best = max(best, mww.process_streaming_prob(f) or 0.0)
        out.append(best)
    mww.close()
    return out


# The engines on the same audio: openWakeWord on the microphone ("raw", the baseline) and
# after the front end ("fe", the daemon's path); microWakeWord on each ("micro", "micro_fe");
# the two OR-ed after the front end ("or<cutoff>_fe": openWakeWord at the threshold, or
# microWakeWord at its cutoff), the check after either.
MICRO_THRESHOLDS = [0.5, 0.7, 0.9, 0.97]  # 0.97: the model's own cutoff (its .json)
MICRO_CHECKS = ["raw", "m0.75", "m1", "m1.25"]
OR_CUTOFFS = [0.5, 0.9, 0.97]
OR_THRESHOLDS = [0.3, 0.5]
OR_CHECKS = ["raw", "m0.5", "m0.75", "m1", "o0.5", "o0.75", "o1"]
# The long stream: the checks at the thresholds the presets use and above (0.1 makes the most
# checks and no preset uses it; its raw count is kept).
STREAM_CHECKED = 0.2


def engines(models: Any, pcm: bytes) -> dict[str, tuple[Scored, list[float], list[str]]]:
    """Engine -> (scores per 80 ms or a function of the threshold, thresholds, checks) on
    `pcm`."""
    fe = frontend(pcm)
    # the checks run on the daemon's path (after the front end); on the microphone each
    # engine is measured alone (the baselines)
    fe_sc = scores(models, fe)
    out: dict[str, tuple[Scored, list[float], list[str]]] = {
        "raw": (scores(models, pcm), THRESHOLDS, ["raw"]),
        "fe": (fe_sc, THRESHOLDS, CHECKS),
    }
    for name, audio, names in (("micro", pcm, ["raw"]), ("micro_fe", fe, MICRO_CHECKS)):
        sc = None if os.environ.get("LOOMD_BENCH_NO_MICRO") else micro_scores(audio)
        if sc is not None:
            out[name] = (sc, MICRO_THRESHOLDS, names)
    if "micro_fe" in out:
        micro_fe = out["micro_fe"][0]
        assert isinstance(micro_fe, list)
        for cutoff in OR_CUTOFFS:
            out[f"or{cutoff:g}_fe"] = (either(fe_sc, micro_fe, cutoff), OR_THRESHOLDS, OR_CHECKS)
    return out


def pipers(models: Any) -> dict[str, Any]:
    """The Piper voices among the models (the board's voice first)."""
    from loomd.audio.tts import PiperTts

    found = sorted((models / "piper").glob("*.onnx")) if (models / "piper").is_dir() else []
    found.sort(key=lambda p: p.name != "en_US-joe-medium.onnx")
    return {p.stem: PiperTts(str(models), f"piper/{p.name}") for p in found}


# The recall clips: "hey jarvis, <command>" by every espeak-ng voice (two commands each,
# the phrase and the command synthesized apart with 0.2 s between them) and by Piper's voice,
# rendered many ways: its length, noise and duration-noise scales drawn per clip (from a
# seed; Piper's synthesis is itself random, so its clips differ between runs), the command
# and the punctuation after the phrase varied. Each clip has a TV of its own (seed).
PIPER_COMMANDS = [*COMMANDS, "set a timer for ten minutes", "turn off the bedroom lights",
                  "what is the weather tomorrow", "lock the front door",
                  "turn the volume down", "start the vacuum", "open the blinds",
                  "how warm is it outside"]  # fmt: skip
PIPER_FORMS = ["Hey Jarvis, {}.", "Hey Jarvis, {}.", "Hey Jarvis. {}.", "Hey Jarvis! {}."]
PIPER_LENGTHS = [0.8, 0.9, 1.0, 1.1, 1.25]  # length_scale: faster to slower speech
PIPER_NOISES = [0.33, 0.5, 0.667, 0.8, 1.0]  # noise_scale (the voice's default: 0.667)
PIPER_NOISE_WS = [0.4, 0.6, 0.8, 1.0, 1.2]  # noise_w (the voice's default: 0.8)
PIPER_CLIPS = 36  # with 12 espeak-ng clips: 48 a condition
ESPEAK_PER_VOICE = 2
SNRS: list[float | None] = [None, 10.0, 5.0]


def piper_styled(models: Any) -> Callable[[str, tuple[float, float, float]], bytes] | None:
    """Piper's voice (the board's) saying a text with (length, noise, noise_w) scales, 16 kHz;
    None without the model."""
    onnx = models / "piper/en_US-joe-medium.onnx"
    if not onnx.is_file():
        return None
    from piper import PiperVoice, SynthesisConfig  # type: ignore[import-untyped]

    from loomd.audio.tts import resample

    voice = PiperVoice.load(str(onnx), config_path=str(onnx) + ".json")
    gap = b"\0" * int(0.2 * RATE) * 2  # between sentences ("Hey Jarvis. Turn on ...")

    def say(text: str, style: tuple[float, float, float]) -> bytes:
        cfg = SynthesisConfig(length_scale=style[0], noise_scale=style[1], noise_w_scale=style[2])
        return gap.join(resample(c.audio_int16_bytes, c.sample_rate)
                        for c in voice.synthesize(text, syn_config=cfg))  # fmt: skip

    return say


def wake_clips(models: Any, quick: bool) -> list[tuple[str, str, bytes]]:
    """(family, label, pcm) of each wake clip: "espeak" (the voice) and "piper" (its
    scales and text)."""
    out = []
    voices = WAKE_VOICES[:3] if quick else WAKE_VOICES
    for i, voice in enumerate(voices):
        for j in range(1 if quick else ESPEAK_PER_VOICE):
            cmd = COMMANDS[(i + 2 * j) % len(COMMANDS)]
            pcm = espeak_pcm(PHRASE, voice) + b"\0" * 6400 + espeak_pcm(cmd, voice)
            out.append(("espeak", voice, pcm))
    say = piper_styled(models)
    if say is None:
        return out
    rng = np.random.default_rng(7)
    for j in range(4 if quick else PIPER_CLIPS):
        if j < 4:  # the first four as before: the voice's own scales, the comma
            style, form = (1.0, 0.667, 0.8), PIPER_FORMS[0]
        else:
            style = (float(rng.choice(PIPER_LENGTHS)), float(rng.choice(PIPER_NOISES)),
                     float(rng.choice(PIPER_NOISE_WS)))  # fmt: skip
            form = str(rng.choice(PIPER_FORMS))
        text = form.format(PIPER_COMMANDS[j % len(PIPER_COMMANDS)])
        label = f"ls{style[0]:g}/ns{style[1]:g}/nw{style[2]:g} {text}"
        out.append(("piper", label, say(text, style)))
    return out


def diagnose(pcm: bytes, first: int, chk: Checks, sc: list[float], threshold: float,
             margin: float | None) -> dict[str, Any]:  # fmt: skip
    """Where a wake clip is lost on the daemon's path at `threshold` with the check's
    `margin`: "model" (the wake word never crossed the threshold after the phrase began),
    "check" (it did; the check refused every crossing), or "ok"; each crossing's verdict
    (what whisper heard); for a refused first crossing, the check on the segment cut from the
    phrase's true start (0.3 s before it) to the same end, to tell a bad cut from a
    mishearing."""
    tried: list[tuple[int, PhraseHeard]] = []

    def ok(k: int) -> bool:
        heard = chk(k, sc)
        if k >= first:
            tried.append((k, heard))
        return margin is None or heard.accepts(margin)

    passed = [k for k in wakes(sc, threshold, ok) if k >= first]
    out: dict[str, Any] = {"lost": "ok" if passed else "check" if tried else "model"}
    out["crossings"] = [
        {"s": round((k + 1) * STEP / RATE, 2), "gap": h.gap, "open_gap": h.open_gap,
         "text": h.text} for k, h in tried
    ]  # fmt: skip
    if not passed and tried:
        k = tried[0][0]
        _peak, seg = cut(pcm, sc, k)
        end = max(0, (k + 1) * STEP * 2 - int(PRE_S * RATE) * 2) + len(seg)
        h = chk.hear(pcm[max(0, first * STEP * 2 - int(0.3 * RATE) * 2) : end])
        out["true_start_gap"], out["true_start_text"] = h.gap, h.text
    return out


def bench(models: Any, quick: bool, stream_s: float = 0.0) -> dict[str, Any]:
    """`stream_s`: the long stream's length (default 5 min quick, else an hour)."""
    import time

    from bench.chatter import chatter
    from loomd.audio.rescore import WhisperScorer

    voices_p = pipers(models)
    scorer = WhisperScorer(str(models / "whisper/ggml-tiny.en.bin"), 1)
    began = time.process_time()
    # -- false wakes on the long stream (no wake word in it), every engine on the same audio
    seconds = stream_s or (300.0 if quick else 3600.0)
    long, made = chatter(seconds, seed=11, pipers=voices_p)
    made["synth_cpu_s"] = round(time.process_time() - began, 1)
    hours = seconds / 3600
    checks = Checks(scorer, long)
    false: dict[str, Any] = {}
    for name, (sc, thresholds, names) in engines(models, long).items():
        row = {}
        for t in thresholds:
            g = grid(sc, checks, [t], names if t >= STREAM_CHECKED else ["raw"])
            row |= {k: {c: round(len(v) / hours, 2) for c, v in r.items()} for k, r in g.items()}
        false[name] = row
    stream_checks = len(checks.heard)
    stream_cpu_s = round(time.process_time() - began, 1)
    # -- recall on wake clips
    said = wake_clips(models, quick)
    default = PRESETS["default"]
    hits: dict[str, Any] = {}
    by_voice: dict[str, Any] = {}
    per_clip: list[dict[str, Any]] = []
    true_gaps: list[tuple[float, float]] = []
    held: list[float] = []
    for i, (family, label, p) in enumerate(said):
        for snr in SNRS:
            pcm, start, _end = mix(p, snr, seed=50 + i, tail_s=3.0)
            name = "clean" if snr is None else f"{snr:g}db"
            chk = Checks(scorer, pcm)
            first = int(start * RATE / STEP)
            row: dict[str, Any] = {"family": family, "label": label, "snr": name}
            engs = engines(models, pcm)
            for eng, (scored, thresholds, names) in engs.items():
                for t, cells in grid(scored, chk, thresholds, names).items():
                    for c, ks in cells.items():
                        cell = hits.setdefault(eng, {}).setdefault(f"{t}/{name}", {})
                        cell.setdefault(c, []).append((family, any(k >= first for k in ks)))
                if callable(scored):
                    continue
                peak = max(scored[first:], default=0.0)
                row[eng] = round(peak, 2)
                key = family if family == "piper" else label
                by_voice.setdefault(eng, {}).setdefault(f"{key}/{name}", []).append(round(peak, 2))
            fe_sc = engs["fe"][0]
            assert isinstance(fe_sc, list)
            row |= diagnose(pcm, first, chk, fe_sc, default.threshold, default.margin)
            per_clip.append(row)
            true_gaps += [(h.gap, round(h.phrase, 2)) for (_s, k), h in chk.heard.items()
                          if k >= first * STEP // 320]  # fmt: skip
            held += chk.held_ms
    recall: dict[str, Any] = {}
    by_family: dict[str, Any] = {}
    for eng, by in hits.items():
        for key, cells in by.items():
            for c, v in cells.items():
                recall.setdefault(eng, {}).setdefault(key, {})[c] = round(
                    sum(h for _, h in v) / len(v), 3
                )
                for fam in sorted({f for f, _ in v}):
                    mine = [h for f, h in v if f == fam]
                    by_family.setdefault(eng, {}).setdefault(key, {}).setdefault(c, {})[fam] = (
                        round(sum(mine) / len(mine), 3)
                    )
    heard = list(checks.heard.values())
    families = {f: sum(1 for g, _, _ in said if g == f) for f in ("espeak", "piper")}
    return {
        "stream_s": seconds,
        "stream": made,
        "stream_cpu_s": stream_cpu_s,
        "false_per_hour": false,
        "recall": recall,
        "recall_by_family": by_family,
        "peak_score_by_voice": by_voice,
        "per_clip": per_clip,
        "clips": len(said) * len(SNRS),
        "clips_by_family": families,
        "stream_checks": stream_checks,
        "held_ms_p50": sorted(held)[len(held) // 2] if held else None,
        "check_ms_p50": sorted(h.ms for h in heard)[len(heard) // 2] if heard else None,
        "false_heard": sorted((h.gap, round(h.phrase, 2), h.text) for h in heard)[:12],
        "false_gaps": sorted(h.gap for h in heard)[:40],
        "true_gaps": sorted(g for g, _ in true_gaps)[-40:],
        "true_phrase": sorted(p for _, p in true_gaps)[:40],
        "cpu_s": round(time.process_time() - began, 1),
    }
