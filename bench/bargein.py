"""Barge-in: does the wake word said over the board's own voice wake it, and does the board's
voice alone never wake it? The fake room of tests/audio/test_room.py, offline and frame exact.

    .venv/bin/python bench/bargein.py [--quick]

The board says a long Piper reply; its echo comes back 60 ms later, 6 dB down, over a noise
floor; a person (espeak-ng) says "hey jarvis" at N offsets into the playback (steps that are
no multiple of the wake model's 80 ms chunk, so the word falls on every phase of it and on
every part of the board's speech). loomd's path: libspeexdsp echo cancellation with the
played reference, then openWakeWord on 4-frame hops, as the voice component runs them.
Baselines in the same run: the person alone over the noise (the best the wake model does),
and the same room with no echo cancellation. For each, the peak wake score per offset and
the share of offsets detected at 0.5 / 0.6 / 0.7. "aec_jitter" is loomd's path with the
reference's lag wandering 0-2 whole frames (a step now and then, as a FIFO reference fed by
a sink on its own clock can). For the board alone, its highest score (what a speaking
threshold must stay above). Ends with one JSON line."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import small_models_dir
from loomd.audio.aec import EchoCanceller
from loomd.audio.frames import FRAME_BYTES
from loomd.audio.io import read_wav
from loomd.audio.tts import PiperTts
from loomd.audio.wake import WakeDetector

QUICK = "--quick" in sys.argv
MODELS = small_models_dir()
REPLY = " ".join(["The weather tomorrow will be mild with a light breeze."] * 4)
OTHER = (
    "I have set a timer for ten minutes. The kitchen lights are on, and the thermostat "
    "is at twenty one degrees. Jazz is playing in the living room."
)
DELAY_FRAMES = 3  # 60 ms
GAIN = 10 ** (-6 / 20)
THRESHOLDS = (0.5, 0.6, 0.7)
HOP = 4 * FRAME_BYTES  # the component's wake hop (4 frames, 80 ms)


def frames(pcm: bytes) -> list[bytes]:
    pcm += b"\0" * (-len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def person_pcm(tmp: Path) -> bytes:
    raw, out = tmp / "p.raw.wav", tmp / "p.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), "hey jarvis"],
                   check=True)  # fmt: skip
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out), "pad",
                    "0", "0.3"], check=True)  # fmt: skip
    return read_wav(out)


def room(
    board: bytes, person: bytes | None, at_frame: int, seed: int
) -> tuple[list[bytes], list[bytes]]:
    """(mic frames, reference frames): the board plays `board` from frame 0."""
    played = frames(board)
    n = max(len(played), at_frame + len(frames(person or b""))) + 50
    rng = np.random.default_rng(seed)
    mic = rng.normal(0, 30, (n, FRAME_BYTES // 2))
    for i, f in enumerate(played):
        if i + DELAY_FRAMES < n:
            mic[i + DELAY_FRAMES] += np.frombuffer(f, np.int16) * GAIN
    if person is not None:
        for j, f in enumerate(frames(person)):
            if at_frame + j < n:
                mic[at_frame + j] += np.frombuffer(f, np.int16)
    silence = b"\0" * FRAME_BYTES
    ref = played + [silence] * (n - len(played))
    out = np.clip(mic, -32768, 32767).astype(np.int16)
    return [row.tobytes() for row in out], ref


def jittered(ref: list[bytes], seed: int) -> list[bytes]:
    """A FIFO reference (one frame per microphone frame) whose lag behind the speaker steps
    by a frame now and then, within the 0-2 frames `Reference` allows."""
    rng = np.random.default_rng(seed)
    out, lag = [], 0
    for i in range(len(ref)):
        if i % 50 == 0:
            lag = int(np.clip(lag + rng.integers(-1, 2), 0, 2))
        out.append(ref[i - lag] if i >= lag else ref[0])
    return out


def peak_score(
    wake: WakeDetector, mic: list[bytes], ref: list[bytes], *, aec: bool, window: tuple[int, int]
) -> float:
    """The highest wake score in frames [a, b) (the person's word plus the model's lag)."""
    wake.reset()
    canceller = EchoCanceller(200) if aec else None
    best, buf = 0.0, []
    a, b = window
    try:
        for i, (m, r) in enumerate(zip(mic, ref, strict=True)):
            if canceller is not None:
                m = canceller.process(m, r)
            buf.append(m)
            if len(buf) < 4:
                continue
            wake.process(b"".join(buf), (i + 1) * 0.02, threshold=1.01)
            buf = []
            if a <= i < b:
                best = max(best, wake.last)
    finally:
        if canceller is not None:
            canceller.close()
    return best


def rates(scores: list[float]) -> dict[str, float]:
    return {f"{t}": round(sum(s >= t for s in scores) / len(scores), 3) for t in THRESHOLDS}


def main() -> None:
    if not (MODELS / "models.json").exists():
        sys.exit(f"no test models in {MODELS}: run scripts/fetch-test-models")
    t0 = time.perf_counter()
    tts = PiperTts(str(MODELS), "piper/en_US-joe-medium.onnx")
    wake = WakeDetector(str(MODELS), ("openwakeword/hey_jarvis_v0.1.onnx",), refractory_s=0.0)
    board = tts.synthesize(REPLY)
    other = tts.synthesize(OTHER)
    with tempfile.TemporaryDirectory() as d:
        person = person_pcm(Path(d))
    p_frames = len(frames(person))
    board_frames = len(frames(board))
    n = 6 if QUICK else 24
    # From 1 s in to 1.5 s before the end, in steps of 7 frames and a bit (140 ms + jitter).
    first, last = 50, board_frames - p_frames - 75
    offsets = [first + (last - first) * k // (n - 1) for k in range(n)]
    cases: dict[str, list[float]] = {"alone": [], "loomd_aec": [], "aec_jitter": [], "no_aec": []}
    for k, at in enumerate(offsets):
        window = (at, at + p_frames + 40)  # the word, then 800 ms of model lag
        mic, ref = room(b"", person, 50, seed=k)
        cases["alone"].append(
            peak_score(wake, mic, ref, aec=False, window=(50, 50 + p_frames + 40))
        )
        mic, ref = room(board, person, at, seed=k)
        cases["loomd_aec"].append(peak_score(wake, mic, ref, aec=True, window=window))
        cases["aec_jitter"].append(peak_score(wake, mic, jittered(ref, k), aec=True, window=window))
        cases["no_aec"].append(peak_score(wake, mic, ref, aec=False, window=window))
    # The board alone (two replies): its highest score anywhere after the first second
    # (the canceller's convergence; the self-wake guard covers the board's own wake word).
    board_alone, board_alone_jitter, board_first_s = [], [], []
    for k, text_pcm in enumerate((board, other)):
        mic, ref = room(text_pcm, None, 0, seed=100 + k)
        board_first_s.append(peak_score(wake, mic, ref, aec=True, window=(0, 50)))
        board_alone.append(peak_score(wake, mic, ref, aec=True, window=(50, len(mic))))
        board_alone_jitter.append(
            peak_score(wake, mic, jittered(ref, 100 + k), aec=True, window=(50, len(mic)))
        )
    elapsed = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"barge-in over the board's voice: {n} offsets, echo 60 ms / -6 dB, noise sd 30")
    print(
        f"{'case':<12}{'min':>7}{'median':>8}{'max':>7}"
        + "".join(f"{'>=' + str(t):>8}" for t in THRESHOLDS)
    )
    for name, sc in cases.items():
        r = rates(sc)
        print(f"{name:<12}{min(sc):>7.2f}{statistics.median(sc):>8.2f}{max(sc):>7.2f}"
              + "".join(f"{r[str(t)]:>8.2f}" for t in THRESHOLDS))  # fmt: skip
    print(f"board alone (echo-cancelled): highest score after 1 s {max(board_alone):.3f}, "
          f"with a wandering reference {max(board_alone_jitter):.3f}; "
          f"in the first second (the canceller converging) {max(board_first_s):.3f}")  # fmt: skip
    ratio = statistics.median(cases["loomd_aec"]) / max(statistics.median(cases["alone"]), 1e-9)
    no_aec = statistics.median(cases["no_aec"]) / max(statistics.median(cases["alone"]), 1e-9)
    print(f"median score over the board / alone: {ratio:.2f}; no-AEC / alone: {no_aec:.2f}")
    print(f"{elapsed:.1f} s, peak RSS {rss_mb:.0f} MB")
    result: dict[str, Any] = {
        "offsets": n,
        "scores": {k: [round(s, 3) for s in v] for k, v in cases.items()},
        "detect_rate": {k: rates(v) for k, v in cases.items()},
        "board_alone_max": round(max(board_alone), 3),
        "board_alone_jitter_max": round(max(board_alone_jitter), 3),
        "board_first_second_max": round(max(board_first_s), 3),
        "median_ratio_aec_over_alone": round(ratio, 3),
        "elapsed_s": round(elapsed, 1),
        "peak_rss_mb": round(rss_mb, 1),
    }
    print(json.dumps(result))


SENTENCES = (
    "The weather tomorrow will be mild with a light breeze.",
    "Expect sunshine in the morning and a few clouds after lunch.",
    "Temperatures will reach twenty two degrees by the afternoon.",
    "In the evening the wind picks up a little from the west.",
    "It should stay dry until the weekend.",
)


def timeline_bench(models: Path, quick: bool) -> dict[str, Any]:
    """For bench/voice.py: barge-in over a reply spoken sentence by sentence in the
    sample-accurate fake room (tests/audio/room.py `SampleRoom`: each clip reaches the room
    after a new random 5-45 ms latency, frames delivered up to 8 ms late), with the timeline
    reference (loomd) and the FIFO it replaced (the control), the same rooms. Keys: offsets
    detected at the speaking threshold (0.6), the board alone's hops at or over it
    (self-wakes), echo reduction after 2 s."""
    import asyncio

    from tests.audio.room import SampleRoom, wake_over_reply

    tts = PiperTts(str(models), "piper/en_US-joe-medium.onnx")
    wake = WakeDetector(str(models), ("openwakeword/hey_jarvis_v0.1.onnx",), refractory_s=0.0)
    reply = [tts.synthesize(s) for s in SENTENCES]
    seconds = sum(len(c) for c in reply) / 32000
    with tempfile.TemporaryDirectory() as d:
        person = person_pcm(Path(d))
    word = len(person) / 32000
    n = 8 if quick else 24
    peaks: dict[bool, list[float]] = {False: [], True: []}
    for k in range(n):
        # From 1 s into the reply (the room's first second is noise) to its last words, at
        # steps that are no multiple of the wake model's 80 ms chunk.
        at = 2.0 + (seconds - 2.5) * k / (n - 1)
        for fifo in (False, True):
            room = SampleRoom(seconds + 3.0, seed=k)
            room.speak(person, at)
            scores = asyncio.run(wake_over_reply(room, reply, wake, fifo=fifo))
            peaks[fifo].append(max(s for t, s in scores if at <= t <= at + word + 0.8))
    alone: dict[bool, list[float]] = {}
    erle: dict[bool, float] = {}
    for fifo in (False, True):
        power: list[tuple[float, float]] = []
        room = SampleRoom(seconds + 3.0, seed=500)
        alone[fifo] = [s for _, s in asyncio.run(
            wake_over_reply(room, reply, wake, fifo=fifo, power=power))]  # fmt: skip
        p = np.array(power[150:])
        erle[fifo] = round(10 * float(np.log10(p[:, 0].sum() / p[:, 1].sum())), 1)
    return {
        "bargein_offsets": n,
        "bargein_reply_s": round(seconds, 1),
        "bargein_detected": sum(s >= 0.6 for s in peaks[False]),
        "bargein_detected_fifo": sum(s >= 0.6 for s in peaks[True]),
        "bargein_min_score": round(min(peaks[False]), 3),
        "bargein_min_score_fifo": round(min(peaks[True]), 3),
        "bargein_self_wakes": sum(s >= 0.6 for s in alone[False]),
        "bargein_self_wakes_fifo": sum(s >= 0.6 for s in alone[True]),
        "bargein_board_max_after_1s": round(max(alone[False][25:]), 3),
        "bargein_erle_db": erle[False],
        "bargein_erle_fifo_db": erle[True],
    }


if __name__ == "__main__":
    main()
