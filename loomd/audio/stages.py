"""The model stages behind async faces: wake word detectors, text to speech and speech to
text, each in its own supervised worker process (loomd.audio.worker): a native crash in
ONNX Runtime, Piper or whisper.cpp restarts that worker and fails the call that was in it
(`WorkerDied`); the daemon and the bus run on. The pipeline, the speaker and the Wyoming
server are given these objects and never touch the processes behind them."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from loomd.audio.models import model_path
from loomd.audio.wake import CHUNK_SAMPLES, Detection, hot_spans
from loomd.audio.worker import Host, Worker
from loomd.errors import LoomdError

if TYPE_CHECKING:
    from loomd.audio.stt import SttWorker

__all__ = ["Stages", "Wake"]

log = logging.getLogger("loomd.voice.stages")

_OWW_HINT = "replace them with the files of the openwakeword 0.5.1 release"
# The self-wake guard scans a clip in pieces of this many bytes (~1 s), so a live wake
# call waits behind one piece at most, never behind a whole reply.
_SCAN_PIECE = CHUNK_SAMPLES * 2 * 12


class Wake:
    """One wake word detector (its own audio history and refractory clock) in the wake
    worker. A worker that died takes the history with it: the fresh one starts clean."""

    _ids = itertools.count()

    def __init__(self, worker: Worker, models: tuple[str, ...], threshold: float,
                 refractory_s: float) -> None:  # fmt: skip
        self._worker = worker
        self.words = tuple(Path(m).stem for m in models)
        self._id = f"d{next(self._ids)}"
        self._cfg = (list(models), threshold, refractory_s)
        self.last = 0.0  # the highest score of the last process() call
        self.peak = 0.0

    async def process(
        self, pcm: bytes, t_end: float, threshold: float | Mapping[str, float] | None = None
    ) -> Detection | None:
        """Raises `WorkerError` if the worker failed (it restarts for the next call)."""
        hit, self.last, self.peak = await self._worker.call(
            "process", self._id, self._cfg, pcm, t_end,
            dict(threshold) if isinstance(threshold, Mapping) else threshold,
        )  # fmt: skip
        return None if hit is None else Detection(*hit)

    async def scores(self, pcm: bytes) -> list[float]:
        """The highest score of each 80 ms chunk of `pcm`, in pieces (see `_SCAN_PIECE`)."""
        out: list[float] = []
        for i in range(0, len(pcm), _SCAN_PIECE):
            out += await self._worker.call("scores", self._id, self._cfg, pcm[i : i + _SCAN_PIECE])
        return out

    async def reset(self, *, clock: bool = True) -> None:
        try:
            await self._worker.call("reset", self._id, self._cfg, clock)
        except LoomdError as exc:  # a fresh worker has nothing to forget
            log.warning("voice: wake reset: %s", exc)


class Stages:
    """The wake word, TTS and STT workers of one voice component."""

    stt: SttWorker

    def __init__(
        self,
        models_dir: str,
        words: tuple[str, ...],
        tts: tuple[str, str, int, str] | None = None,
    ) -> None:
        """`tts` (engine, voice, threads, language): TTS in the wake word's process (one Python and
        one ONNX Runtime for both; a crash in either restarts both), else its own."""
        self.models_dir, self.word_models = models_dir, words
        host = Host()
        self.wake_worker = Worker(
            "wake", (models_dir, list(words)), stage="wake word", engine="openWakeWord",
            load_hint=f"openwakeword models did not load ({{detail}}); {_OWW_HINT}",
            check=self._check_wake, fail_found_dead=True, host=host,
        )  # fmt: skip
        self.tts_worker: Worker | None = None
        if tts is not None:
            self.tts_worker = self._tts_worker(*tts, host=host)
        self._guards: dict[tuple[str, ...], tuple[Wake, asyncio.Lock]] = {}

    @property
    def tts_name(self) -> str:
        info = self.tts_worker.info if self.tts_worker is not None else None
        return str(info["name"]) if info else ""

    @property
    def words(self) -> tuple[str, ...]:
        info = self.wake_worker.info
        return tuple(info["words"]) if info else ()

    def _check_wake(self) -> None:
        for w in self.word_models:  # a missing file is named here, before any process
            model_path(self.models_dir, w, "openwakeword")

    async def load_wake(self) -> None:
        await self.wake_worker.start()

    async def load_stt(
        self,
        model: str,
        threads: int,
        vocabulary: tuple[str, ...],
        engine: str = "whisper",
        language: str = "en",
    ) -> None:
        from loomd.audio.stt import SttWorker

        self.stt = SttWorker(self.models_dir, model, threads=threads, vocabulary=vocabulary,
                             engine=engine, language=language)  # fmt: skip
        await self.stt.load()

    def _tts_worker(
        self, engine: str, voice: str, threads: int, language: str = "en", host: Host | None = None
    ) -> Worker:
        return Worker(
            "tts", (engine, self.models_dir, voice, threads, language), stage="TTS",
            engine=engine, load_hint="the TTS worker did not start ({detail})", host=host,
        )  # fmt: skip

    async def load_tts(
        self, engine: str = "", voice: str = "", threads: int = 0, language: str = "en"
    ) -> str:
        """Start the TTS worker (the one given at construction, or one of its own for
        `engine`, `voice` and `language`); the reason it fell back to espeak-ng, or ""."""
        if self.tts_worker is None:
            self.tts_worker = self._tts_worker(engine, voice, threads, language)
        await self.tts_worker.start()
        return str(self.tts_worker.info["why"])

    async def wake(
        self, threshold: float = 0.5, refractory_s: float = 2.0, models: tuple[str, ...] = ()
    ) -> Wake:
        """A new detector for the configured wake words (or for `models`, the stop word)."""
        return Wake(self.wake_worker, models or self.word_models, threshold, refractory_s)

    async def synthesize(self, text: str) -> bytes:
        """Raises `WorkerError` if the TTS worker failed (it restarts for the next call)."""
        assert self.tts_worker is not None, "load_tts() first"
        audio: bytes = await self.tts_worker.call(text)
        return audio

    async def load_guard(self, models: tuple[str, ...] = ()) -> None:
        """The wake word models (or `models`) on what the board is about to play (the
        self-wake guard), made now so the first reply's scan does not wait for them."""
        key = models or self.word_models
        self._guards[key] = (await self.wake(1.0, 0.0, key), asyncio.Lock())
        await self._guards[key][0].reset()

    async def hot_spans(
        self,
        pcm: bytes,
        guard_score: float,
        models: tuple[str, ...] = (),
        progress: Callable[[list[tuple[float, float]], float], None] | None = None,
    ) -> list[tuple[float, float]]:
        """Where in `pcm` the wake word (or the word of `models`) is said (see
        `wake.hot_spans`). `progress(spans, seconds)` hears after each piece how far the
        scan has come: a guard can trust nothing past that point yet. Scans of different
        guards interleave piece by piece on the wake worker."""
        guard, lock = self._guards[models or self.word_models]
        # The score peaks after the word: a clip that ends on it peaks in the silence after.
        pcm = pcm + b"\0" * 32000
        async with lock:
            await guard.reset()
            scores: list[float] = []
            for i in range(0, len(pcm), _SCAN_PIECE):
                scores += await guard.scores(pcm[i : i + _SCAN_PIECE])
                if progress is not None:
                    progress(hot_spans(scores, guard_score), len(scores) * CHUNK_SAMPLES / 16000)
        return hot_spans(scores, guard_score)

    def close(self) -> None:
        """Stop the workers (blocking: call it off the loop)."""
        for w in (self.wake_worker, self.tts_worker):
            if w is not None:
                w.close()
        if hasattr(self, "stt"):
            self.stt.close()
