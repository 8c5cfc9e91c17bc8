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


def in_worker(engine: str, model: str, sets: dict[str, list[bytes]]) -> dict[str, Any]:
    """Every clip through the engine's SttWorker: texts per condition, wall ms, peak RSS."""
    w = SttWorker(str(MODELS), model, engine=engine)

    async def run() -> dict[str, Any]:
        await w.load()
        await w.transcribe(b"\0" * 16000)  # as the component warms it up
        out: dict[str, Any] = {"ms": []}
        for label, pcms in sets.items():
            texts = []
            for pcm in pcms:
                t = time.perf_counter()
                texts.append((await w.transcribe(pcm)).text)
                out["ms"].append((time.perf_counter() - t) * 1000)
            out[label] = texts
        out["rss"] = peak_rss_mb(w.pid or 0)
        return out

    try:
        return asyncio.run(run())
    finally:
        w.close()


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


def raw_run(fn: Callable[[bytes], str], sets: dict[str, list[bytes]]) -> dict[str, Any]:
    out: dict[str, Any] = {"ms": []}
    for label, pcms in sets.items():
        texts = []
        for pcm in pcms:
            t = time.perf_counter()
            texts.append(fn(pcm))
            out["ms"].append((time.perf_counter() - t) * 1000)
        out[label] = texts
    return out


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


def stt_bench(quick: bool) -> dict[str, Any]:
    from bench.assist import noisy

    refs, pcms = clips(quick)
    snrs: dict[str, float | None] = {"clean": None, "10db": 10.0}
    if not quick:
        snrs["20db"] = 20.0
    sets = {k: [noisy(p, snr, i) for i, p in enumerate(pcms)] for k, snr in snrs.items()}
    res: dict[str, Any] = {"stt_clips": len(pcms)}
    runs = {"": (lambda: in_worker("whisper", WHISPER, sets)),
            "raw_": (lambda: raw_run(raw_whisper(), sets))}  # fmt: skip
    if (MODELS / MOONSHINE).is_dir():
        runs["moonshine_"] = lambda: in_worker("moonshine", MOONSHINE, sets)
        runs["raw_moonshine_"] = lambda: raw_run(raw_moonshine(), sets)
    else:
        res["moonshine"] = f"not measured: no {MODELS / MOONSHINE} (fetch moonshine-base-en)"
    for prefix, run in runs.items():
        got = run()
        for label in sets:
            res[f"{prefix}wer_{label}"] = round(wer(refs, got[label]), 3)
        res[f"{prefix}stt_ms_p50"] = p50(got["ms"])
        if "rss" in got:
            res[f"{prefix}rss_stt_mb"] = round(got["rss"] or 0.0, 1)
    res.update(padding(refs, sets))
    return res


if __name__ == "__main__":
    import os

    print(f"load: {os.getloadavg()}", file=sys.stderr)
    print(json.dumps(stt_bench("--quick" in sys.argv)))
