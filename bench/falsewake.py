"""False wakes per hour and wake recall, with and without loomd's second check, for
bench/noise.py. Raw baseline: openWakeWord alone (its score crossing the threshold, with
the daemon's 2 s refractory period) on the same audio.

The long stream: TV-like speech with no wake word in it (espeak-ng voices and Piper
reading news lines and conversation, some of them near the phrase: "hey Travis", "and
Jarvis said", over music-like chords now and then). Each raw wake on it goes through what
the daemon does next: the segmenter (default VAD rule) cuts what follows, whisper (loomd's
STT stage) hears the 1.5 s wake segment plus that, and the second check looks for the
phrase at the start (`loomd.audio.addressed`); a wake that survives and has something
addressed is a false wake. Recall: "hey jarvis, <command>" said by several espeak-ng
voices and Piper, clean and in TV at 10 and 5 dB; a hit is a wake whose turn passes the
check. The transcript does not depend on the strictness, so every preset is scored from
the same STT calls."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from bench.tvnoise import RATE, espeak_pcm, mix, music, speech_power, trim
from loomd.audio.addressed import PRESETS, check_wake, not_addressed
from loomd.audio.frames import FRAME_BYTES
from loomd.audio.settings import VadSettings
from loomd.audio.vad import Segmenter, make_vad

PHRASE = "hey jarvis"
MODEL = "openwakeword/hey_jarvis_v0.1.onnx"
STEP = 1280  # openWakeWord's 80 ms
SEGMENT_S = 1.5
REFRACTORY_S = 2.0
THRESHOLDS = sorted({0.35, 0.5, 0.6, 0.7, 0.8, *(p.threshold for p in PRESETS.values())})
STRICTNESS = [0.0, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9]
TRUST = [1.01, 0.99, 0.98, 0.95, 0.9]  # a wake scoring this much skips the check
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


def wakes(sc: list[float], threshold: float) -> list[int]:
    """Chunks where a wake fires (the daemon's refractory period after each)."""
    out, quiet = [], -1
    for k, s in enumerate(sc):
        if s >= threshold and k >= quiet:
            out.append(k)
            quiet = k + int(REFRACTORY_S * RATE / STEP)
    return out


def peak(sc: list[float], k: int) -> float:
    """The wake's score as the daemon has it: the chunk that crossed the threshold."""
    return round(sc[k], 3)


def turn_audio(pcm: bytes, k: int) -> bytes:
    """What the daemon transcribes after a wake at chunk `k`: the 1.5 s wake segment, then
    the utterance the segmenter cuts from there (default VAD rule, 8 s cap)."""
    end = (k + 1) * STEP * 2
    seg_pcm = pcm[max(0, end - int(SEGMENT_S * RATE) * 2) : end]
    v = VadSettings()
    vad = make_vad("webrtc", mode=v.mode)
    seg = Segmenter(preroll_ms=v.preroll_ms, hangover_ms=v.hangover_ms,
                    min_speech_ms=v.min_speech_ms, max_utterance_s=8.0, no_speech_s=v.no_speech_s,
                    level_drop_db=v.level_drop_db)  # fmt: skip
    seg.open(0.0)
    for i, at in enumerate(range(end, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)):
        f = pcm[at : at + FRAME_BYTES]
        cut = seg.push(f, i * 0.02, vad(f))
        if cut is not None:
            return seg_pcm + (b"" if cut.reason == "no_speech" else cut.pcm)
    return seg_pcm


async def transcripts(models: Any, clips: list[bytes]) -> list[str]:
    from loomd.audio.stt import SttWorker

    stt = SttWorker(str(models), "whisper/ggml-tiny.en.bin")
    await stt.load()
    try:
        return [(await stt.transcribe(c)).text for c in clips]
    finally:
        await asyncio.to_thread(stt.close)


def passes(text: str, strictness: float, score: float = 0.0, trust: float = 1.01) -> bool:
    """The turn acts: the phrase heard at the start (when checked) and something asked."""
    if strictness <= 0 or score >= trust:
        return bool(text)
    heard = check_wake(text, PHRASE, strictness)
    return heard.ok and not not_addressed(heard.command)


def bench(models: Any, quick: bool) -> dict[str, Any]:
    piper = None
    if (models / "piper/en_US-joe-medium.onnx").is_file():
        from loomd.audio.tts import PiperTts

        piper = PiperTts(str(models), "piper/en_US-joe-medium.onnx")
    # -- false wakes on the long stream
    seconds = 300.0 if quick else 3600.0
    long = stream(seconds, seed=11, piper=piper)
    sc = scores(models, long)
    hits = {t: wakes(sc, t) for t in THRESHOLDS}
    ks = sorted({k for v in hits.values() for k in v})
    heard = dict(zip(ks, asyncio.run(transcripts(models, [turn_audio(long, k) for k in ks])),
                     strict=True))  # fmt: skip
    hours = seconds / 3600
    false: dict[str, Any] = {}
    for t in THRESHOLDS:
        false[f"{t:g}"] = {
            f"{s:g}/{u:g}": round(sum(passes(heard[k], s, sc[k], u) for k in hits[t]) / hours, 2)
            for s in STRICTNESS
            for u in TRUST
        }
        false[f"{t:g}"]["raw"] = round(len(hits[t]) / hours, 2)
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
    clips = [(snr, mix(p, snr, seed=50 + i, tail_s=3.0)[0]) for i, p in enumerate(said)
             for snr in snrs]  # fmt: skip
    clip_scores = [scores(models, pcm) for _, pcm in clips]
    first = {t: [next(iter(wakes(s, t)), None) for s in clip_scores] for t in THRESHOLDS}
    need = sorted({(i, k) for t in THRESHOLDS for i, k in enumerate(first[t]) if k is not None})
    texts = asyncio.run(transcripts(models, [turn_audio(clips[i][1], k) for i, k in need]))
    said_text = dict(zip(need, texts, strict=True))
    recall: dict[str, Any] = {}
    for t in THRESHOLDS:
        for snr in snrs:
            name = "clean" if snr is None else f"{snr:g}db"
            idx = [i for i, (s, _) in enumerate(clips) if s == snr]
            row = {"raw": round(sum(first[t][i] is not None for i in idx) / len(idx), 3)}
            for s in STRICTNESS:
                for u in TRUST:
                    ok = 0
                    for i in idx:
                        k = first[t][i]
                        ok += k is not None and passes(said_text[(i, k)], s, clip_scores[i][k], u)
                    row[f"{s:g}/{u:g}"] = round(ok / len(idx), 3)
            recall[f"{t:g}/{name}"] = row
    samples = [(heard[k], peak(sc, k)) for k in ks[:12]]
    true_peaks = sorted(peak(clip_scores[i], k) for i, k in need)
    missed = [t for t in texts if not passes(t, PRESETS["default"].strictness)][:12]
    return {
        "stream_s": seconds,
        "raw_wakes": {f"{t:g}": len(v) for t, v in hits.items()},
        "false_per_hour": false,
        "recall": recall,
        "clips": len(clips),
        "false_heard": samples,
        "true_peaks": true_peaks,
        "false_peaks": sorted(peak(sc, k) for k in ks),
        "missed_heard": missed,
    }
