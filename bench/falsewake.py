"""False wakes per hour and wake recall, for bench/noise.py: openWakeWord at each threshold,
with and without the front end before it and loomd's wake check after it
(`loomd.audio.wakecheck`: whisper's decoder scores the wake phrase against its own
transcript of the wake segment). Raw baseline: openWakeWord alone on the microphone audio
(its score crossing the threshold, with the daemon's 2 s refractory period).

The long stream: TV-like speech with no wake word in it (espeak-ng voices and Piper
reading news lines and conversation, some of them near the phrase: "hey Travis", "and
Jarvis said", over music-like chords now and then). Recall: "hey jarvis, <command>" said
by several espeak-ng voices and Piper, clean and in TV at 10 and 5 dB; a hit is a wake at
or after the phrase's start that the check lets through. The wakes are found as the
daemon finds them: one the check lets through starts the refractory period, one it
refuses leaves the board deaf for `DEAF_S` (the check's time), then it hears again. Each
wake segment is checked once and its figures serve every margin."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.tvnoise import RATE, espeak_pcm, mix, music, speech_power, trim
from loomd.audio.addressed import PRESETS, check_wake
from loomd.audio.frames import FRAME_BYTES
from loomd.audio.settings import NS_DEFAULT
from loomd.audio.stt import audio_ctx_for
from loomd.audio.wakecheck import POST_S, PRE_S, PhraseHeard, hear_phrase, segment_audio

PHRASE = "hey jarvis"
MODEL = "openwakeword/hey_jarvis_v0.1.onnx"
STEP = 1280  # openWakeWord's 80 ms
REFRACTORY_S = 2.0
DEAF_S = 0.5  # a wake the check refused: the board listens for wakes again this much later

THRESHOLDS = sorted({0.1, 0.2, 0.3, 0.5, 0.7, *(p.threshold for p in PRESETS.values())})
MARGINS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5]
FLOORS = [1.5, 2.0, 2.5, 3.0]  # the alternative: the phrase's own score over -floor
TEXT_STRICTNESS = 0.85  # the old check, on the segment's transcript: for comparison
LINES = [
    "and now the weather for the weekend, with rain moving in from the west",
    "the match ended two all after a late goal in the second half",
    "stay with us, after the break we talk to the mayor about the budget",
    "did you remember to buy milk on the way home",
    "I think the film starts at eight, we should leave soon",
    "can you pass me the remote, there is nothing on tonight",
    "the museum reopens on Saturday with a new exhibition",
    "traffic is heavy on the ring road this morning because of roadworks",
    "hey Travis, are you coming to the game on Sunday",
    "and then Jarvis said he would fix the car himself",
    "hey, Jar, this is the last of the jam",
    "hey Harvey, turn that music down a bit",
    "the service was slow but the food was worth it",
    "a jar of this honey costs more than the whole lunch",
    "Jeremy said hey to the neighbours and went inside",
    "hey there, welcome back to the show, tonight we have three guests",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m4", "en-029"]
WAKE_VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m4", "en-gb-x-rp", "en-029"]
COMMANDS = [
    "turn on the kitchen lights",
    "what time is it",
    "close the garage door",
    "play some jazz",
]


def stream(seconds: float, seed: int, piper: Any) -> bytes:
    """Speech with no wake word: lines back to back, music under a third of them."""
    rng = np.random.default_rng(seed)
    cache: dict[tuple[str, str], np.ndarray] = {}
    n = int(seconds * RATE)
    out = np.zeros(n)
    at = 0
    while at < n:
        line = LINES[int(rng.integers(len(LINES)))]
        voice = "piper" if piper is not None and rng.random() < 0.3 else VOICES[
            int(rng.integers(len(VOICES)))]  # fmt: skip
        if (line, voice) not in cache:
            pcm = piper.synthesize(line) if voice == "piper" else espeak_pcm(line, voice)
            x = np.frombuffer(trim(pcm), np.int16).astype(np.float64)
            cache[(line, voice)] = x / np.sqrt(speech_power(trim(pcm)))
        x = cache[(line, voice)] * 3000.0
        take = min(len(x), n - at)
        out[at : at + take] += x[:take]
        if rng.random() < 0.33:
            out[at : at + take] += music(take / RATE, int(rng.integers(1 << 30)))[:take] * 600
        at += take + int(rng.uniform(0.2, 1.0) * RATE)
    return np.clip(out, -32768, 32767).astype(np.int16).tobytes()


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


class Checks:
    """The wake check on the segments of one recording, each computed once."""

    def __init__(self, scorer: Any, pcm: bytes) -> None:
        self.scorer, self.pcm = scorer, pcm
        self.heard: dict[int, PhraseHeard] = {}

    def __call__(self, k: int) -> PhraseHeard:
        if k not in self.heard:
            end = (k + 1) * STEP * 2
            seg = self.pcm[max(0, end - int(PRE_S * RATE) * 2) : end + int(POST_S * RATE) * 2]
            audio = segment_audio(seg)
            self.heard[k] = hear_phrase(
                self.scorer, audio, audio_ctx_for(len(audio) / RATE), PHRASE
            )
        return self.heard[k]


def accepts(check: str, heard: PhraseHeard) -> bool:
    """Does the check named `check` let this wake through? "raw": no check; "text": the
    transcript starts with the phrase; "m<margin>": the forced phrase within the margin of
    whisper's guess; "a<floor>": the forced phrase's score over -floor, whatever the guess."""
    if check == "raw":
        return True
    if check == "text":
        return check_wake(heard.text, PHRASE, TEXT_STRICTNESS).ok
    if check.startswith("a"):
        return heard.phrase >= -float(check[1:])
    return heard.accepts(float(check[1:]))


CHECKS = ["raw", "text", *(f"m{m:g}" for m in MARGINS), *(f"a{f:g}" for f in FLOORS)]


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


def grid(sc: list[float], checks: Checks) -> dict[str, dict[str, list[int]]]:
    """Threshold -> check -> the wakes let through."""
    return {
        f"{t:g}": {
            c: wakes(sc, t, None if c == "raw" else lambda k, c=c: accepts(c, checks(k)))
            for c in CHECKS
        }
        for t in THRESHOLDS
    }


def bench(models: Any, quick: bool, stream_s: float = 0.0) -> dict[str, Any]:
    """`stream_s`: the long stream's length (default 5 min quick, else an hour)."""
    from loomd.audio.rescore import WhisperScorer

    piper = None
    if (models / "piper/en_US-joe-medium.onnx").is_file():
        from loomd.audio.tts import PiperTts

        piper = PiperTts(str(models), "piper/en_US-joe-medium.onnx")
    scorer = WhisperScorer(str(models / "whisper/ggml-tiny.en.bin"), 1)
    began = __import__("time").process_time()
    # -- false wakes on the long stream: openWakeWord on the mic (raw) and after the front end
    seconds = stream_s or (300.0 if quick else 3600.0)
    long = stream(seconds, seed=11, piper=piper)
    hours = seconds / 3600
    checks = Checks(scorer, long)
    false: dict[str, Any] = {}
    for front, audio in (("raw", long), ("fe", frontend(long))):
        g = grid(scores(models, audio), checks)
        false[front] = {
            t: {c: round(len(v) / hours, 2) for c, v in row.items()} for t, row in g.items()
        }
    stream_checks = len(checks.heard)
    # -- recall on wake clips
    said = []
    voices = WAKE_VOICES[:3] if quick else WAKE_VOICES
    for i, voice in enumerate(voices):
        cmd = COMMANDS[i % len(COMMANDS)]
        said.append(espeak_pcm(PHRASE, voice) + b"\0" * 6400 + espeak_pcm(cmd, voice))
    if piper is not None:
        for cmd in COMMANDS[: 2 if quick else 4]:
            said.append(piper.synthesize(f"Hey Jarvis, {cmd}."))
    snrs: list[float | None] = [None, 10.0, 5.0]
    clips = [(snr, mix(p, snr, seed=50 + i, tail_s=3.0)) for i, p in enumerate(said)
             for snr in snrs]  # fmt: skip
    hits: dict[str, Any] = {"raw": {}, "fe": {}}
    true_gaps: list[tuple[float, float]] = []
    for snr, (pcm, start, _end) in clips:
        name = "clean" if snr is None else f"{snr:g}db"
        chk = Checks(scorer, pcm)
        first = int(start * RATE / STEP)
        for front, audio in (("raw", pcm), ("fe", frontend(pcm))):
            for t, row in grid(scores(models, audio), chk).items():
                for c, ks in row.items():
                    cell = hits[front].setdefault(f"{t}/{name}", {}).setdefault(c, [])
                    cell.append(any(k >= first for k in ks))
        true_gaps += [(h.gap, round(h.phrase, 2)) for k, h in chk.heard.items() if k >= first]
    recall = {front: {key: {c: round(sum(v) / len(v), 3) for c, v in row.items()}
                      for key, row in by.items()} for front, by in hits.items()}  # fmt: skip
    heard = list(checks.heard.values())
    return {
        "stream_s": seconds,
        "false_per_hour": false,
        "recall": recall,
        "clips": len(clips),
        "stream_checks": stream_checks,
        "check_ms_p50": sorted(h.ms for h in heard)[len(heard) // 2] if heard else None,
        "false_heard": sorted((h.gap, round(h.phrase, 2), h.text) for h in heard)[:12],
        "false_gaps": sorted(h.gap for h in heard)[:40],
        "true_gaps": sorted(g for g, _ in true_gaps)[-40:],
        "true_phrase": sorted(p for _, p in true_gaps)[:40],
        "cpu_s": round(__import__("time").process_time() - began, 1),
    }
