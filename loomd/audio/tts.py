"""Text to speech: Piper, with espeak-ng when Piper or its voice is missing.

Both give 16 kHz mono s16 (the pipeline's format) so every sink, the echo reference and the
bus carry one format. `sentences()` cuts streamed LLM text at sentence ends so the first
sentence is spoken while the rest is still being generated."""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any, Protocol

from loomd.audio.frames import RATE
from loomd.audio.language import espeak_voice, piper_model_id
from loomd.audio.models import ModelError, lean_session, model_path

__all__ = [
    "EspeakTts",
    "PiperTts",
    "SentenceSplitter",
    "Tts",
    "load_tts",
    "resample",
    "tts_server",
]

log = logging.getLogger("loomd.voice.tts")


class Tts(Protocol):
    name: str

    def synthesize(self, text: str) -> bytes:
        """16 kHz mono s16le audio for `text` (blocking: call it off the loop)."""
        ...


def resample(pcm: bytes, rate: int) -> bytes:
    """s16le mono at `rate` -> 16 kHz: libsoxr (`soxr`, high quality, ~0.3 MB; scipy's
    resample_poly cost the TTS worker ~75 MB of imports), linear if soxr is missing."""
    import numpy as np

    if rate == RATE or not pcm:
        return pcm
    x = np.frombuffer(pcm, dtype=np.int16)
    try:
        import soxr  # type: ignore[import-untyped]

        return bytes(soxr.resample(x, rate, RATE, quality="HQ").tobytes())
    except ImportError:
        n = int(len(x) * RATE / rate)
        y = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x.astype(np.float32))
        return bytes(np.clip(y, -32768, 32767).astype(np.int16).tobytes())


class PiperTts:
    name = "piper"

    def __init__(self, models_dir: str, voice: str, threads: int = 0) -> None:
        import json

        from piper import PiperVoice
        from piper.config import PiperConfig

        path = model_path(models_dir, voice, "piper")
        config = path.with_name(path.name + ".json")
        if not config.is_file():
            raise ModelError(
                f"piper voice config {config} is missing: put the voice's "
                ".onnx.json beside it (https://huggingface.co/rhasspy/piper-voices)"
            )
        try:
            # PiperVoice.load's own session keeps ONNX Runtime's memory arena and a thread
            # per core; the lean one returns a sentence's buffers (docs/design/voice-memory.md).
            cfg = PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
            self._voice: Any = PiperVoice(session=lean_session(str(path), threads), config=cfg)
        except Exception as exc:
            raise ModelError(
                f"piper voice {path} did not load ({type(exc).__name__}: {exc}); "
                "get it again from https://huggingface.co/rhasspy/piper-voices"
            ) from None

    def synthesize(self, text: str) -> bytes:
        out = []
        for chunk in self._voice.synthesize(text):
            out.append(resample(chunk.audio_int16_bytes, chunk.sample_rate))
        return b"".join(out)


class EspeakTts:
    name = "espeak"

    def __init__(self, voice: str = "en-us", speed: int = 160) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise ModelError("espeak-ng is missing: apt install espeak-ng")
        self.exe, self.voice, self.speed = exe, voice, speed

    def synthesize(self, text: str) -> bytes:
        wav = subprocess.run(
            [self.exe, "-v", self.voice, "-s", str(self.speed), "--stdout", text],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        with wave.open(io.BytesIO(wav)) as w:
            return resample(w.readframes(w.getnframes()), w.getframerate())


def load_tts(
    engine: str, models_dir: str, voice: str, threads: int = 0, language: str = "en"
) -> tuple[Tts, str]:
    """The configured engine, or espeak-ng (speaking `language`) with the reason Piper was
    not used; `voice` "" is no Piper voice for the language."""
    espeak = espeak_voice(language)
    if engine == "piper":
        try:
            if not voice:
                raise ModelError(f"the catalogue has no Piper voice for {language!r}")
            model_id = piper_model_id(voice)
            path = Path(models_dir) / voice
            if model_id and not path.is_file():  # the language's voice, not fetched
                raise ModelError(
                    f"Piper voice {voice} is not installed: `loomctl models fetch {model_id}`"
                )
            return PiperTts(models_dir, voice, threads), ""
        except (ModelError, ImportError) as exc:
            why = f"Piper unavailable ({exc}); speaking with espeak-ng"
            log.warning("%s", why)
            return EspeakTts(espeak), why
    return EspeakTts(espeak), ""


def tts_server(
    engine: str, models_dir: str, voice: str, threads: int = 0, language: str = "en"
) -> tuple[Any, dict[str, str]]:
    """In the worker process (loomd.audio.worker): the engine, and what answers a text
    with its audio. Says which engine it is and why Piper was not used, if it was not."""
    tts, why = load_tts(engine, models_dir, voice, threads, language)

    def handle(req: Any) -> bytes:
        text: str = req[0]
        return tts.synthesize(text)

    return handle, {"name": tts.name, "why": why}


_END = re.compile(r"(?<=[.!?])\s+|\n+")


class SentenceSplitter:
    """Feed streamed text; get whole sentences as soon as they end."""

    def __init__(self, min_chars: int = 12) -> None:
        self.min_chars = min_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        start = 0
        for m in _END.finditer(self._buf):
            piece = self._buf[start : m.start()].strip()
            if len(piece) >= self.min_chars:  # "Dr." or "1." alone is not a sentence
                out.append(piece)
                start = m.end()
        self._buf = self._buf[start:]
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []
