"""Speech to text: pywhispercpp in a worker thread, never on the event loop.

whisper.cpp encodes a 30 s window unless told otherwise; `audio_ctx` is sized to the
utterance (50 encoder frames a second, at least 512: below ~300 it repeats words). The
initial prompt is built from a configured vocabulary so names are spelled the way the
house spells them. `[BLANK_AUDIO]`, `(music)` and other non-speech markers are dropped."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from loomd.audio.frames import RATE
from loomd.audio.models import ModelError, model_path

__all__ = ["SttResult", "SttWorker", "audio_ctx_for", "clean_text"]

log = logging.getLogger("loomd.voice.stt")

_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")


def clean_text(text: str) -> str:
    """Whisper's text without non-speech markers and stray whitespace."""
    return " ".join(_NON_SPEECH.sub(" ", text).split())


def audio_ctx_for(seconds: float) -> int:
    """Encoder context for an utterance: 50 frames/s, doubled for margin, in [512, 1500]."""
    return max(512, min(1500, int(seconds * 100) // 64 * 64 + 64))


@dataclass(frozen=True)
class SttResult:
    text: str  # cleaned; "" for no speech
    raw: str
    audio_ctx: int
    ms: float


class SttWorker:
    """One whisper model in one dedicated thread. A crash in a call is reported to the caller
    (the utterance is marked failed) and the model is loaded afresh before the next call."""

    def __init__(
        self, models_dir: str, model: str, *, threads: int = 1, vocabulary: tuple[str, ...] = ()
    ) -> None:
        self.path = model_path(models_dir, model, "whisper")
        self.threads = threads
        self.prompt = ", ".join(vocabulary)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loomd-stt")
        self._model: Any = None
        self.calls = 0
        self.failures = 0
        self.restarts = 0
        self.busy = threading.Event()

    def _load(self) -> Any:
        from pywhispercpp.model import Model

        with open(self.path, "rb") as f:
            magic = f.read(4)
        if self.path.stat().st_size < 1_000_000 or magic not in (b"lmgg", b"ggml"):
            raise ModelError(
                f"whisper model {self.path} is not a ggml model (corrupt or truncated?): "
                "get ggml-tiny.en.bin from https://huggingface.co/ggerganov/whisper.cpp"
            )
        return Model(
            str(self.path),
            n_threads=self.threads,
            print_progress=False,
            print_realtime=False,
            redirect_whispercpp_logs_to=None,
        )

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._pool, self._load)

    def _run(self, audio: Any, prompt: str) -> SttResult:
        import time

        if self._model is None:
            self.restarts += 1
            self._model = self._load()
        seconds = len(audio) / RATE
        ctx = audio_ctx_for(seconds)
        began = time.perf_counter()
        self.busy.set()
        try:
            kw: dict[str, Any] = {"audio_ctx": ctx, "single_segment": True, "no_context": True}
            if prompt:
                kw["initial_prompt"] = prompt
            segments = self._model.transcribe(audio, **kw)
        except BaseException:
            self._model = None  # a broken context is not reused
            raise
        finally:
            self.busy.clear()
        raw = " ".join(s.text for s in segments).strip()
        return SttResult(clean_text(raw), raw, ctx, (time.perf_counter() - began) * 1000)

    async def transcribe(self, pcm: bytes, extra_prompt: str = "") -> SttResult:
        import numpy as np

        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        # Pad short clips: whisper drops words in clips that start or end abruptly.
        pad = np.zeros(RATE // 4, dtype=np.float32)
        audio = np.concatenate([pad, audio, pad])
        prompt = ", ".join(p for p in (self.prompt, extra_prompt) if p)
        self.calls += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._run, audio, prompt)
        except Exception:
            self.failures += 1
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
