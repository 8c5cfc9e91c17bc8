"""Speech to text: pywhispercpp in a supervised worker process, never on the event loop.

whisper.cpp encodes a 30 s window unless told otherwise; `audio_ctx` is sized to the
utterance (50 encoder frames a second, at least 512: below ~300 it repeats words). The
initial prompt is built from a configured vocabulary so names are spelled the way the
house spells them. `[BLANK_AUDIO]`, `(music)` and other non-speech markers are dropped."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loomd.audio.frames import RATE
from loomd.audio.models import ModelError, model_path
from loomd.audio.worker import Worker

__all__ = [
    "SttResult",
    "SttWorker",
    "audio_ctx_for",
    "clean_text",
    "max_tokens_for",
    "stt_server",
]

log = logging.getLogger("loomd.voice.stt")

_GET = "get ggml-tiny.en.bin from https://huggingface.co/ggerganov/whisper.cpp"
_PAD = RATE // 4  # silence added before and after an utterance, in samples
_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")


def clean_text(text: str) -> str:
    """Whisper's text without non-speech markers and stray whitespace."""
    return " ".join(_NON_SPEECH.sub(" ", text).split())


def max_tokens_for(seconds: float) -> int:
    """A bound on the decode: speech is ~4 tokens a second; without one, tiny.en caught in
    a repetition loop decodes to its limit and retries at higher temperatures (10-15 s
    for a 2 s command, measured with a 48-word prompt in docs/design/assist.md)."""
    return int(seconds * 6) + 12


def audio_ctx_for(seconds: float) -> int:
    """Encoder context for an utterance: 50 frames/s, doubled for margin, in [512, 1500]."""
    return max(512, min(1500, int(seconds * 100) // 64 * 64 + 64))


@dataclass(frozen=True)
class SttResult:
    text: str  # cleaned; "" for no speech
    raw: str
    audio_ctx: int
    ms: float


def stt_server(path: str, threads: int) -> tuple[Callable[[Any], Any], None]:
    """In the worker process (loomd.audio.worker): the model, and what answers a request
    `(s16le pcm bytes, prompt, audio_ctx)` with `(text, ms)`. The conversion to float and
    the padding happen here: half the bytes through the pipe, none of it on the daemon's
    event loop."""
    import time

    import numpy as np
    from pywhispercpp.model import Model

    model = Model(path, n_threads=threads, print_progress=False, print_realtime=False,
                  redirect_whispercpp_logs_to=None)  # fmt: skip

    def handle(request: Any) -> tuple[str, float]:
        pcm, prompt, ctx = request
        began = time.perf_counter()
        # Pad short clips: whisper drops words in clips that start or end abruptly.
        audio = np.zeros(len(pcm) // 2 + 2 * _PAD, dtype=np.float32)
        audio[_PAD:-_PAD] = np.frombuffer(pcm, dtype=np.int16)
        audio /= 32768.0
        kw: dict[str, Any] = {"audio_ctx": ctx, "single_segment": True, "no_context": True,
                              "max_tokens": max_tokens_for(len(audio) / RATE)}  # fmt: skip
        # pywhispercpp keeps parameters between calls: an empty prompt must be set, not left
        kw["initial_prompt"] = prompt
        text = " ".join(seg.text for seg in model.transcribe(audio, **kw)).strip()
        return text, (time.perf_counter() - began) * 1000

    return handle, None


class SttWorker:
    """One whisper model in a supervised worker process (loomd.audio.worker). If the
    process dies mid-utterance (a native crash, the OOM killer), that utterance fails with
    a clear error and a fresh process is started for the next one."""

    def __init__(
        self, models_dir: str, model: str, *, threads: int = 1, vocabulary: tuple[str, ...] = ()
    ) -> None:
        self.path = model_path(models_dir, model, "whisper")
        self.threads = threads
        self.prompt = ", ".join(vocabulary)
        self.worker = Worker(
            "stt", (str(self.path), threads), stage="STT", engine="whisper", check=self._check,
            load_hint=f"whisper model {self.path} did not load ({{detail}}): {_GET}",
        )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    @property
    def restarts(self) -> int:
        return self.worker.restarts

    @property
    def failures(self) -> int:
        return self.worker.failures

    @property
    def calls(self) -> int:
        return self.worker.calls

    def _check(self) -> None:
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if self.path.stat().st_size < 1_000_000 or magic not in (b"lmgg", b"ggml"):
            raise ModelError(
                f"whisper model {self.path} is not a ggml model (corrupt or truncated?): {_GET}"
            )

    async def load(self) -> None:
        await self.worker.start()

    async def transcribe(self, pcm: bytes, extra_prompt: str = "") -> SttResult:
        prompt = ", ".join(p for p in (self.prompt, extra_prompt) if p)
        ctx = audio_ctx_for((len(pcm) // 2 + 2 * _PAD) / RATE)
        raw, ms = await self.worker.call(pcm, prompt, ctx)
        return SttResult(clean_text(raw), raw, ctx, ms)

    def close(self) -> None:
        self.worker.close()
