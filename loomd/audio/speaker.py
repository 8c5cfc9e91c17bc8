"""The board's voice: playback through the sink (feeding the echo canceller's reference),
one clip at a time, with the self-wake guard (where in a clip the board says its own wake
word, so a wake heard then is its echo), replies spoken sentence by sentence while the
next is synthesised, `voice.say` and `voice.play`."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loomd.audio.aec import Timeline
from loomd.audio.ducking import Media
from loomd.audio.frames import FRAME_MS
from loomd.audio.worker import WorkerError
from loomd.messages import PlayAudio, PlayDone, SayRequest, VoiceState

if TYPE_CHECKING:
    from loomd.audio.board import Board
    from loomd.audio.io import Sink
    from loomd.audio.recorder import TurnClock, TurnRecord
    from loomd.audio.settings import VoiceSettings
    from loomd.audio.stages import Stages

__all__ = ["Speaker"]


class Speaker:
    def __init__(
        self,
        sink: Sink,
        stages: Stages,
        board: Board,
        counts: collections.Counter[str],
        settings: Callable[[], VoiceSettings],
    ) -> None:
        self.sink, self.stages, self.board, self.counts = sink, stages, board, counts
        self._settings = settings  # read at each use: some options reload live
        self.reference = Timeline()
        sink.listeners.append(self.reference.played)
        self.lock = asyncio.Lock()
        self._clip_hot: list[tuple[float, float]] = []
        self._clip_stop_hot: list[tuple[float, float]] = []
        self._stop_scanned_s = 0.0  # how much of the clip the stop word's guard has scanned
        self._clip = 0
        self._clip_frames = 10**9
        self.stop_models: tuple[str, ...] = ()  # the stop word's model, when there is one
        self.media = Media(sink, self.play)  # what `voice.play` plays, ducked (ducking.py)

    def stop(self) -> None:
        self.sink.stop()
        self.sink.volume.restore()  # the next clip plays at its own level

    def duck(self, db: float) -> None:
        """Lower what plays by `db` from the next chunk on (a barge-in candidate)."""
        self.sink.volume.duck(db)

    def restore(self) -> None:
        self.sink.volume.restore()

    # -- the self-wake guard ------------------------------------------------------------------
    def tick(self) -> None:
        """One microphone frame went by."""
        self._clip_frames += 1

    def said_it(self, *, stop: bool = False) -> bool:
        """True while the board's own wake word (or stop word) may still be echoing in the
        room. Time is counted in microphone frames since the clip started, not on the wall
        clock: a starved machine delivers late audio, but its position in the stream holds."""
        at = self._clip_frames * FRAME_MS / 1000
        guard = self._settings().aec.guard_s
        if stop and self.stop_models and self._settings().aec.self_wake_guard:
            # Not scanned that far yet (a starved machine): the board may have said it.
            if at > self._stop_scanned_s:
                return True
        spans = self._clip_stop_hot if stop else self._clip_hot
        return any(a - 0.2 <= at <= b + guard for a, b in spans)

    async def play(self, pcm: bytes) -> bool:
        """Play through the sink, knowing where the board says its own wake word. The scan
        runs beside the playback, not before it: it is ~40x faster than real time and a
        wake word takes longer than that to say, so the spans are known before they play."""
        self._clip_hot, self._clip_stop_hot, self._clip_frames = [], [], 0
        self._stop_scanned_s = 0.0
        self._clip += 1  # a scan of a clip cut short must not speak for this one
        clip = self._clip
        aec = self._settings().aec
        if aec.self_wake_guard:
            scan = asyncio.ensure_future(self.stages.hot_spans(pcm, aec.guard_score))
            scan.add_done_callback(lambda f: self._scanned(f, "_clip_hot", clip))
            if self.stop_models:
                scan = asyncio.ensure_future(
                    self.stages.hot_spans(pcm, aec.guard_score, self.stop_models,
                                          lambda s, t: self._stop_progress(s, t, clip))
                )  # fmt: skip
                scan.add_done_callback(lambda f: self._scanned(f, "_clip_stop_hot", clip))
        return await self.sink.play(pcm)

    def _stop_progress(self, spans: list[tuple[float, float]], seconds: float, clip: int) -> None:
        if clip == self._clip:
            self._clip_stop_hot, self._stop_scanned_s = spans, seconds

    def _scanned(self, f: asyncio.Future[list[tuple[float, float]]], spans: str, clip: int) -> None:
        if clip == self._clip and not f.cancelled() and f.exception() is None:
            setattr(self, spans, f.result())

    # -- speaking -----------------------------------------------------------------------------
    async def speak_queue(
        self, sentences: asyncio.Queue[str | None], rec: TurnRecord, clock: TurnClock
    ) -> None:
        """Synthesise the next sentence while the current one plays. Raises the TTS
        worker's `WorkerError` (the sentences before it were spoken)."""
        audio_q: asyncio.Queue[bytes | WorkerError | None] = asyncio.Queue()

        async def synth() -> None:
            try:
                while (text := await sentences.get()) is not None:
                    audio_q.put_nowait(await self.stages.synthesize(text))
            except WorkerError as exc:
                audio_q.put_nowait(exc)
                return
            audio_q.put_nowait(None)

        maker = asyncio.create_task(synth())
        try:
            while (audio := await audio_q.get()) is not None:
                if isinstance(audio, WorkerError):
                    raise audio
                rec.timings.setdefault("first_audio", clock.ms())
                await self.board.set(VoiceState.SPEAKING, rec.utterance_id)
                async with self.lock:
                    if not await self.play(audio):
                        rec.outcome = "interrupted"
                        return
            rec.timings["spoken"] = clock.ms()
        finally:
            maker.cancel()

    def _ducks(self) -> bool:
        return self.media.playing and self._settings().duck_db > 0

    async def say(self, req: SayRequest) -> dict[str, Any]:
        if req.priority == "announcement" and not self._ducks():
            self.sink.stop()
        began = time.monotonic()
        audio = await self.stages.synthesize(req.text)
        synth_ms = (time.monotonic() - began) * 1000
        if req.priority == "announcement" and self._ducks():
            done = await self.media.announce(audio, self._settings().duck_db)
        else:
            done = await self._play_clip(audio, req.utterance_id)
        self.counts["said" if done else "said_cut"] += 1
        if done:
            self.board.asked(req.text, self._settings().followup_s)
        return {
            "spoken": done,
            "seconds": round(len(audio) / 32000, 2),
            "tts_ms": round(synth_ms, 1),
            "engine": self.stages.tts_name,
        }

    async def play_audio(self, req: PlayAudio) -> PlayDone:
        """`voice.play`: audio from another part (Home Assistant's TTS), played like ours."""
        if req.announcement and self._ducks():
            done = await self.media.announce(req.pcm, self._settings().duck_db)
        else:
            if req.announcement:
                self.sink.stop()
            done = await self._play_clip(req.pcm, req.utterance_id, media=not req.announcement)
        self.counts["played" if done else "played_cut"] += 1
        return PlayDone(done, round(len(req.pcm) / 32000, 2))

    async def _play_clip(self, pcm: bytes, uid: str, *, media: bool = False) -> bool:
        async with self.lock:
            await self.board.set(VoiceState.SPEAKING, uid)
            done = await (self.media.play(pcm) if media else self.play(pcm))
            if not self.board.busy():
                await self.board.set(VoiceState.IDLE, uid)
        return done
