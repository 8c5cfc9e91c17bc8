"""The model stages behind async faces: wake word detectors, text to speech and speech to
text. Each runs off the event loop; the pipeline, the speaker and the Wyoming server are
given these objects and never touch the threads or processes behind them."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loomd.audio.stt import SttWorker
    from loomd.audio.tts import Tts
    from loomd.audio.wake import Detection, WakeDetector

__all__ = ["Stages", "Wake"]


class Wake:
    """One wake word detector (its own audio history and refractory clock)."""

    def __init__(self, det: WakeDetector, pool: concurrent.futures.Executor) -> None:
        self._det, self._pool = det, pool
        self.words = det.words

    @property
    def last(self) -> float:
        return self._det.last

    @property
    def peak(self) -> float:
        return self._det.peak

    async def process(
        self, pcm: bytes, t_end: float, threshold: float | None = None
    ) -> Detection | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._det.process, pcm, t_end, threshold)

    async def reset(self, *, clock: bool = True) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, lambda: self._det.reset(clock=clock))


class Stages:
    """The wake word models, the TTS engine and the STT worker of one voice component."""

    stt: SttWorker

    def __init__(self, models_dir: str, words: tuple[str, ...]) -> None:
        self.models_dir, self.word_models = models_dir, words
        self._wake_pool = concurrent.futures.ThreadPoolExecutor(1, "loomd-wake")
        self._tts_pool = concurrent.futures.ThreadPoolExecutor(1, "loomd-tts")
        self._tts: Tts | None = None
        self._ref: WakeDetector | None = None

    @property
    def tts_name(self) -> str:
        return self._tts.name if self._tts is not None else ""

    async def load_stt(self, model: str, threads: int, vocabulary: tuple[str, ...]) -> None:
        from loomd.audio.stt import SttWorker

        self.stt = SttWorker(self.models_dir, model, threads=threads, vocabulary=vocabulary)
        await self.stt.load()

    async def load_tts(self, engine: str, voice: str) -> str:
        """Load the TTS engine; the reason it fell back to espeak-ng, or ""."""
        from loomd.audio.tts import load_tts

        self._tts, why = await asyncio.to_thread(load_tts, engine, self.models_dir, voice)
        return why

    async def wake(self, threshold: float = 0.5, refractory_s: float = 2.0) -> Wake:
        """A new detector for the configured wake words."""
        from loomd.audio.wake import WakeDetector

        loop = asyncio.get_running_loop()
        det = await loop.run_in_executor(
            self._wake_pool,
            lambda: WakeDetector(
                self.models_dir, self.word_models, threshold=threshold, refractory_s=refractory_s
            ),
        )
        return Wake(det, self._wake_pool)

    async def synthesize(self, text: str) -> bytes:
        assert self._tts is not None, "load_tts() first"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tts_pool, self._tts.synthesize, text)

    async def load_guard(self) -> None:
        """The same wake word models on what the board is about to play (the self-wake
        guard), loaded now so the first reply's scan does not wait for them."""
        from loomd.audio.wake import WakeDetector

        loop = asyncio.get_running_loop()
        self._ref = await loop.run_in_executor(
            self._tts_pool,
            lambda: WakeDetector(
                self.models_dir, self.word_models, threshold=1.0, refractory_s=0.0
            ),
        )

    async def hot_spans(self, pcm: bytes, guard_score: float) -> list[tuple[float, float]]:
        """Where in `pcm` the wake word is said (see `wake.hot_spans`); on the TTS side so
        it runs beside the live wake word, not in its way."""
        from loomd.audio.wake import hot_spans

        assert self._ref is not None, "load_guard() first"
        ref = self._ref
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tts_pool, hot_spans, ref, pcm, guard_score)

    def close(self) -> None:
        if hasattr(self, "stt"):
            self.stt.close()
        self._wake_pool.shutdown(wait=False, cancel_futures=True)
        self._tts_pool.shutdown(wait=False, cancel_futures=True)
