"""Speech to text: each engine as the daemon runs it (its worker process) against its raw
library on the same clips, for bench/voice.py; alone:

    .venv/bin/python bench/voice_stt.py [--quick]

Clips: bench/assist.py's commands, questions and distractors, each spoken by Piper (joe)
and espeak-ng (66 clips; 40 with --quick), clean and with white noise at 10 dB (and 20 dB
without --quick). Engines: whisper tiny.en (the default) and Moonshine base-en when its
files are in the models folder (`loomctl models fetch moonshine-base-en`). Raw: pywhispercpp
with the audio_ctx loomd picks, on the clip as given; ONNX Runtime sessions with their
defaults and useful-moonshine-onnx's greedy loop. Per engine: WER per condition, the
call's p50 (wall, from the daemon side: pipe and worker included) and the worker's peak
RSS. Then whisper's padding (loomd.audio.stt.padded): only topping up the quiet at each
edge against a quarter second each side whatever is there, WER and time on the same clips,
in this process. Ends with one JSON line."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import peak_rss_mb, small_models_dir
from loomd.audio.stt import SttWorker, audio_ctx_for, clean_text, max_tokens_for, padded
from loomd.audio.wer import wer

MODELS = small_models_dir()
WHISPER = "whisper/ggml-tiny.en.bin"
MOONSHINE = "moonshine/base-en"
VOCAB = ("kitchen", "thermostat", "garage", "living room", "Lisbon", "jazz", "plants")


def clips(quick: bool) -> tuple[list[str], list[bytes]]:
    """(reference texts, s16 clips): each command in Piper's voice and espeak-ng's, with
    0.3 s of silence each side (as bench/assist.py makes them)."""
    from bench.assist import COMMANDS, espeak
    from loomd.audio.tts import PiperTts

    texts = [t for t, _, _ in COMMANDS][: 20 if quick else None]
    piper = PiperTts(str(MODELS), "piper/en_US-joe-medium.onnx")
    tmp = Path(tempfile.mkdtemp(prefix="vs-"))
    refs, pcms = [], []
    pad = b"\0" * 9600
    for i, t in enumerate(texts):
        refs += [t, t]
        pcms += [pad + piper.synthesize(t) + pad, espeak(t, tmp / f"e{i}.wav")]
    return refs, pcms


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 1)


class InWorker:
    """An engine's SttWorker as the component runs it (loaded, warmed up), called from
    this thread: `__call__(pcm)` is one transcription, timed from the daemon's side."""

    def __init__(self, engine: str, model: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.w = SttWorker(str(MODELS), model, engine=engine)
        self.loop.run_until_complete(self.w.load())
        self(b"\0" * 16000)  # as the component warms it up

    def __call__(self, pcm: bytes) -> str:
        return self.loop.run_until_complete(self.w.transcribe(pcm)).text

    def rss(self) -> float:
        return round(peak_rss_mb(self.w.pid or 0) or 0.0, 1)

    def close(self) -> None:
        self.w.close()
        self.loop.close()


def raw_whisper() -> Callable[[bytes], str]:
    from pywhispercpp.model import Model

    model = Model(str(MODELS / WHISPER), n_threads=1, print_progress=False,
                  print_realtime=False, redirect_whispercpp_logs_to=None)  # fmt: skip

    def run(pcm: bytes) -> str:
        audio = np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0
        segs = model.transcribe(audio, audio_ctx=audio_ctx_for(len(audio) / 16000),
                                single_segment=True, no_context=True)  # fmt: skip
        return clean_text(" ".join(s.text for s in segs))

    return run


def raw_moonshine() -> Callable[[bytes], str]:
    """ONNX Runtime as it comes (default sessions) and useful-moonshine-onnx's decode loop
    (its model.py: the cache in (0, heads, 1, dim) zeros, 192 tokens at most)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    from loomd.audio.moonshine import read_tokenizer

    d = MODELS / MOONSHINE
    enc = ort.InferenceSession(str(d / "encoder_model.ort"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(d / "decoder_model_merged.ort"),
                               providers=["CPUExecutionProvider"])  # fmt: skip
    vocab = read_tokenizer(d / "tokenizer.bin")
    names = [i.name for i in dec.get_inputs() if i.name.startswith("past_key_values.")]
    heads, dim = dec.get_inputs()[2].shape[1], dec.get_inputs()[2].shape[3]

    def run(pcm: bytes) -> str:
        audio = (np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0)[None, :]
        hidden = enc.run(None, {"input_values": audio})[0]
        past = {n: np.zeros((0, heads, 1, dim), np.float32) for n in names}
        tokens = [1]
        for i in range(192):
            logits, *present = dec.run(None, {"input_ids": [[tokens[-1]]],
                                              "encoder_hidden_states": hidden,
                                              "use_cache_branch": [i > 0], **past})  # fmt: skip
            tokens.append(int(logits[0, -1].argmax()))
            if tokens[-1] == 2:
                break
            for k, v in zip(names, present, strict=True):
                if i == 0 or ".decoder." in k:
                    past[k] = v
        text = b"".join(vocab[t] for t in tokens if t > 2).decode("utf-8", "replace")
        return clean_text(text.replace("\u2581", " "))

    return run


def padding(refs: list[str], sets: dict[str, list[bytes]]) -> dict[str, Any]:
    """whisper on the clips as loomd's worker gives them, each padding rule, alternated."""
    from pywhispercpp.model import Model

    model = Model(str(MODELS / WHISPER), n_threads=1, print_progress=False,
                  print_realtime=False, redirect_whispercpp_logs_to=None)  # fmt: skip
    res: dict[str, Any] = {}
    ms: dict[bool, list[float]] = {True: [], False: []}
    for label, pcms in sets.items():
        hyps: dict[bool, list[str]] = {True: [], False: []}
        for pcm in pcms:
            for fill in (True, False):
                audio = padded(np.frombuffer(pcm, np.int16), fill)
                n = len(audio) / 16000
                t = time.perf_counter()
                segs = model.transcribe(audio, audio_ctx=audio_ctx_for(n), single_segment=True,
                                        no_context=True, max_tokens=max_tokens_for(n),
                                        initial_prompt="")  # fmt: skip
                ms[fill].append((time.perf_counter() - t) * 1000)
                hyps[fill].append(clean_text(" ".join(s.text for s in segs)))
        res[f"pad_fill_wer_{label}"] = round(wer(refs, hyps[True]), 3)
        res[f"pad_always_wer_{label}"] = round(wer(refs, hyps[False]), 3)
    res["pad_fill_ms_p50"], res["pad_always_ms_p50"] = p50(ms[True]), p50(ms[False])
    return res


def stt_row(model: Any, clip: bytes, rounds: int) -> dict[str, Any]:
    """Issue 21's STT row: raw pywhispercpp with the audio_ctx loomd picks against loomd's
    STT stage on the same clip, alternated call by call (the box is shared: load moves
    between runs), plus what loomd's call spends outside whisper (the pipe, the thread
    hop). loomd as configured by default (no vocabulary prompt: the raw call has none
    either); the prompt's own cost is whisper's, measured beside it."""
    audio = np.frombuffer(clip, np.int16).astype(np.float32) / 32768.0
    ctx = audio_ctx_for(len(audio) / 16000)

    def raw(**kw: Any) -> float:
        t = time.perf_counter()
        model.transcribe(audio, **kw)
        return (time.perf_counter() - t) * 1000

    res = {"raw_stt_ms": p50([raw() for _ in range(rounds)])}
    plain = InWorker("whisper", WHISPER)
    vocab = SttWorker(str(MODELS), WHISPER, vocabulary=VOCAB)
    plain.loop.run_until_complete(vocab.load())
    raw_ms, ours_ms, outside, vocab_ms = [], [], [], []
    try:
        for _ in range(rounds + 2):
            raw_ms.append(raw(audio_ctx=ctx))
            t = time.perf_counter()
            r = plain.loop.run_until_complete(plain.w.transcribe(clip))
            ours_ms.append((time.perf_counter() - t) * 1000)
            outside.append(ours_ms[-1] - r.ms)
            t = time.perf_counter()
            plain.loop.run_until_complete(vocab.transcribe(clip))
            vocab_ms.append((time.perf_counter() - t) * 1000)
    finally:
        vocab.close()
        plain.close()
    res["raw_stt_ctx_ms"] = p50(raw_ms)
    res["loomd_stt_ms"] = p50(ours_ms)
    res["loomd_stt_outside_ms"] = round(statistics.median(outside), 2)
    res["loomd_stt_vocab_ms"] = p50(vocab_ms)
    return res


def stt_bench(quick: bool) -> dict[str, Any]:
    from bench.assist import noisy

    refs, pcms = clips(quick)
    snrs: dict[str, float | None] = {"clean": None, "10db": 10.0}
    if not quick:
        snrs["20db"] = 20.0
    sets = {k: [noisy(p, snr, i) for i, p in enumerate(pcms)] for k, snr in snrs.items()}
    res: dict[str, Any] = {"stt_clips": len(pcms)}
    runs: dict[str, Callable[[bytes], str]] = {"": InWorker("whisper", WHISPER),
                                               "raw_": raw_whisper()}  # fmt: skip
    if (MODELS / MOONSHINE).is_dir():
        runs["moonshine_"] = InWorker("moonshine", MOONSHINE)
        runs["raw_moonshine_"] = raw_moonshine()
    else:
        res["moonshine"] = f"not measured: no {MODELS / MOONSHINE} (fetch moonshine-base-en)"
    # Clip by clip, each engine in turn: the box is shared, its load moves during a run
    hyps: dict[str, dict[str, list[str]]] = {k: {c: [] for c in sets} for k in runs}
    ms: dict[str, list[float]] = {k: [] for k in runs}
    for label, clips_ in sets.items():
        for pcm in clips_:
            for prefix, run in runs.items():
                t = time.perf_counter()
                hyps[prefix][label].append(clean_text(run(pcm)))
                ms[prefix].append((time.perf_counter() - t) * 1000)
    for prefix, run in runs.items():
        for label in sets:
            res[f"{prefix}wer_{label}"] = round(wer(refs, hyps[prefix][label]), 3)
        res[f"{prefix}stt_ms_p50"] = p50(ms[prefix])
        if isinstance(run, InWorker):
            res[f"{prefix}rss_stt_mb"] = run.rss()
            run.close()
    res.update(padding(refs, sets))
    return res


if __name__ == "__main__":
    import os

    from bench.voice import raw_whisper as raw_model
    from bench.voice import speak
    from loomd.audio.io import read_wav

    quick = "--quick" in sys.argv
    print(f"load: {os.getloadavg()}", file=sys.stderr)
    clip = read_wav(speak("turn on the kitchen lights", Path(tempfile.mkdtemp()) / "cmd.wav"))
    row = stt_row(raw_model(), clip, 3 if quick else 7)
    print(json.dumps(row), file=sys.stderr)
    print(json.dumps({**row, **stt_bench(quick)}))
