"""TV-like noise for the voice benches and tests: speech from other voices (espeak-ng
reading other sentences, back to back with short pauses, as a TV talks) plus music-like
tones (chords of harmonic notes with an envelope), and a command mixed into it at a given
speech-to-noise ratio. Everything is made here from a seed; nothing is downloaded."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

RATE = 16000
TV_LINES = [
    "and now the weather for the weekend, with rain moving in from the west",
    "the match ended two all after a late goal in the second half",
    "scientists say the new bridge will open to traffic next spring",
    "stay with us, after the break we talk to the mayor about the budget",
    "prices at the pump fell again this week across most of the country",
    "the film follows a young detective who returns to her home town",
    "in other news, the museum reopens on Saturday with a new exhibition",
    "traffic is heavy on the ring road this morning because of roadworks",
]
TV_VOICES = ["en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m4", "en-029", "en-gb-scotland+f2"]


def espeak_pcm(text: str, voice: str = "en-us", speed: int = 150) -> bytes:
    """`text` read by espeak-ng, as s16le mono 16 kHz (sox converts)."""
    with tempfile.TemporaryDirectory() as d:
        raw, out = Path(d) / "raw.wav", Path(d) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
                       check=True)  # fmt: skip
        subprocess.run(["sox", "-V1", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-t", "raw",
                        str(out)], check=True)  # fmt: skip
        return out.read_bytes()


def _f(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float64)


def trim(pcm: bytes, floor: float = 200.0) -> bytes:
    """Cut the silence before and after the speech (20 ms frames under `floor` RMS)."""
    x = _f(pcm)
    n = len(x) // 320
    rms = np.sqrt(np.mean(x[: n * 320].reshape(n, 320) ** 2, axis=1))
    on = np.flatnonzero(rms > floor)
    if not on.size:
        return pcm
    return pcm[on[0] * 640 : (on[-1] + 1) * 640]


def speech_power(pcm: bytes) -> float:
    """Mean power over the voiced samples (the level a speech-to-noise ratio refers to)."""
    x = _f(pcm)
    voiced = x[np.abs(x) > 100]
    return float(np.mean(voiced**2)) if voiced.size else 1.0


def babble(seconds: float, seed: int, speak: Callable[[str, str, int], bytes] = espeak_pcm,
           cache: dict[tuple[str, str, int], np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
    """Other voices talking, as a TV does: lines back to back, 0.1-0.4 s apart."""
    rng = np.random.default_rng(seed)
    cache = {} if cache is None else cache
    n = int(seconds * RATE)
    out = np.zeros(n)
    at = 0
    while at < n:
        line = TV_LINES[int(rng.integers(len(TV_LINES)))]
        voice = TV_VOICES[int(rng.integers(len(TV_VOICES)))]
        speed = int(rng.integers(150, 190))
        key = (line, voice, speed)
        if key not in cache:
            x = _f(trim(speak(line, voice, speed)))
            cache[key] = x / np.sqrt(speech_power(trim(speak(line, voice, speed))))
        x = cache[key]
        take = min(len(x), n - at)
        out[at : at + take] = x[:take]
        at += take + int(rng.uniform(0.1, 0.4) * RATE)
    return out


def music(seconds: float, seed: int) -> np.ndarray:
    """Music-like tones: three-note chords of harmonic notes, 0.2-0.5 s each, decaying."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n)
    at = 0
    while at < n:
        dur = int(rng.uniform(0.2, 0.5) * RATE)
        t = np.arange(dur) / RATE
        env = np.exp(-3.0 * t) * np.minimum(1.0, t / 0.01)
        root = 110.0 * 2 ** (int(rng.integers(0, 24)) / 12)
        note = np.zeros(dur)
        for step in (0, 4, 7):
            f0 = root * 2 ** (step / 12)
            for h in (1, 2, 3):
                note += np.sin(2 * np.pi * f0 * h * t) / h
        take = min(dur, n - at)
        out[at : at + take] += (note * env)[:take]
        at += dur
    return out / np.sqrt(np.mean(out**2) + 1e-9)


def tv(seconds: float, seed: int, cache: dict[tuple[str, str, int], np.ndarray] | None = None,
       ) -> np.ndarray:  # fmt: skip
    """TV-like noise at unit speech power: babble plus music 6 dB under it."""
    b = babble(seconds, seed, cache=cache)
    return b + 0.5 * music(seconds, seed + 7)


def mix(command: bytes, snr_db: float | None, seed: int, *, lead_s: float = 1.0,
        tail_s: float = 6.0, cache: dict[tuple[str, str, int], np.ndarray] | None = None,
        ) -> tuple[bytes, float, float]:  # fmt: skip
    """`lead_s` of TV, the (trimmed) command over it at `snr_db` (None: no TV at all), then
    `tail_s` of TV alone. Returns (pcm, speech start s, speech end s): the true times."""
    cmd = _f(trim(command))
    lead, tail = int(lead_s * RATE), int(tail_s * RATE)
    n = lead + len(cmd) + tail
    y = np.zeros(n)
    y[lead : lead + len(cmd)] = cmd
    if snr_db is not None:
        noise = tv((n + 1) / RATE, seed, cache)[:n]
        y += noise * np.sqrt(speech_power(cmd.astype(np.int16).tobytes()) / 10 ** (snr_db / 10))
    pcm = np.clip(y, -32768, 32767).astype(np.int16).tobytes()
    return pcm, lead_s, (lead + len(cmd)) / RATE
