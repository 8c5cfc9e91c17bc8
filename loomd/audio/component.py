"""The `voice` component: the pipeline of stages, the default voice agent, the operator
commands (`loomctl say`, `loomctl voice last|test|stop`) and the flight recorder.

Per frame: wake word (openWakeWord, in its own thread) while idle or speaking; after a wake,
the VAD segmenter cuts the utterance; STT runs in its own thread while the wake word keeps
listening; the transcript is published on `voice.transcript` and, by default, sent to the
router as a chat turn (`llm.chat`, priority "voice"); the reply is spoken sentence by
sentence while it streams. The wake word during playback stops it (barge-in) and
publishes `voice.stop`."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomd.audio.frames import FRAME_MS, Frame, FreshQueue
from loomd.audio.models import missing_models
from loomd.audio.settings import VoiceSettings
from loomd.component import Command, Component, StatusBlock
from loomd.config import ResolvedPaths
from loomd.errors import LoomdError
from loomd.messages import (
    AssistRequest,
    AssistTurn,
    ChatChunk,
    ChatDone,
    ChatMessage,
    ChatRequest,
    ErrorCode,
    EventType,
    PlayAudio,
    PlayDone,
    SayRequest,
    Topic,
    Transcript,
    Vocabulary,
    VoiceState,
    VoiceStateEvent,
    WakeAction,
)
from loomd.metrics import Family

if TYPE_CHECKING:
    from loomd.audio.aec import EchoCanceller
    from loomd.audio.frontend import FrontEnd
    from loomd.audio.io import Sink, Source
    from loomd.audio.stt import SttWorker
    from loomd.audio.tts import Tts
    from loomd.audio.vad import Segment
    from loomd.audio.wake import Detection, WakeDetector

__all__ = ["VoiceComponent", "VoiceStatus"]

# Wake scoring runs on 80 ms; collecting 4 frames before each thread hop keeps it cheap.
_WAKE_FRAMES = 4
# How long a wake waits for a claimant on `voice.wake` (it listens locally meanwhile).
_HANDOFF_ASK_S = 0.5


@dataclass(frozen=True)
class VoiceStatus(StatusBlock):
    state: str
    source: str
    tts: str
    frames: int
    wakes: int
    utterances: int
    failed: int
    barge_ins: int
    self_wakes_blocked: int
    said: int
    dropped_frames: int
    stt_pid: int
    stt_restarts: int


@dataclass
class TurnRecord:
    """One interaction in the flight recorder. Timings: ms since the end of speech."""

    utterance_id: str
    site: str
    started: float  # time.time()
    wake: str = ""
    wake_score: float = 0.0
    transcript: str = ""
    reply: str = ""
    outcome: str = "open"  # ok | no_speech | failed | interrupted | open
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    # What the assist made of it (when [voice] agent = "assist"): AssistTurn's fields
    intent: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)
    route: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class _Clock:
    """Turns wall-clock moments into ms since the end of speech."""

    def __init__(self, speech_end: float) -> None:
        self.speech_end = speech_end

    def ms(self) -> float:
        return round((time.monotonic() - self.speech_end) * 1000, 1)


class VoiceComponent(Component[VoiceSettings]):
    name = "voice"
    Settings = VoiceSettings
    requires = ("numpy", "pywhispercpp", "openwakeword", "onnxruntime", "webrtcvad", "piper")
    # (`wyoming` is imported only when [voice.wyoming] is enabled.)
    extra = "voice"
    apt = "loomd-voice"
    summary = "local wake word, STT and TTS: mic -> wake -> whisper.cpp -> router -> Piper"

    wake: WakeDetector
    stt: SttWorker

    @classmethod
    def check(cls, settings: VoiceSettings, paths: ResolvedPaths) -> list[str]:
        """The speech-to-text and wake word models are installed (Piper falls back to
        espeak-ng, so a missing voice is a problem only without espeak-ng)."""
        return missing_models(settings, Path(settings.models_dir or paths.models_dir))

    tts: Tts
    sink: Sink

    async def start(self) -> None:
        from loomd.audio.aec import EchoCanceller, Reference
        from loomd.audio.frontend import FrontEnd
        from loomd.audio.io import BufferSink, BusSink, PyAudioSpeaker, WavSink, count_devices
        from loomd.audio.stt import SttWorker
        from loomd.audio.tts import load_tts
        from loomd.audio.vad import WebRtcVad
        from loomd.audio.wake import WakeDetector

        s = self.settings
        self.models_dir = s.models_dir or str(self.ctx.models_dir)
        self._wake_pool = concurrent.futures.ThreadPoolExecutor(1, "loomd-wake")
        self._tts_pool = concurrent.futures.ThreadPoolExecutor(1, "loomd-tts")
        loop = asyncio.get_running_loop()
        self.wake = await loop.run_in_executor(
            self._wake_pool,
            lambda: WakeDetector(
                self.models_dir,
                s.wake.models,
                threshold=s.wake.threshold,
                refractory_s=s.wake.refractory_s,
            ),
        )
        self.stt = SttWorker(
            self.models_dir, s.stt.model, threads=s.stt.threads, vocabulary=s.stt.vocabulary
        )
        await self.stt.load()
        self.tts, why = await asyncio.to_thread(
            load_tts, s.tts.engine, self.models_dir, s.tts.voice
        )
        if why:
            self.ctx.error(ErrorCode.TTS_FALLBACK, why)
        # Warm up: the first synthesis imports scipy (resampling, ~1.5 s) and the first
        # whisper call allocates its buffers; neither should land on the first reply.
        await loop.run_in_executor(self._tts_pool, self.tts.synthesize, "Ready.")
        await self.stt.transcribe(b"\0" * 16000)
        self.vad = WebRtcVad(s.vad.mode)
        # The same wake word model on what the board is about to play: while its own voice
        # says the wake word, a wake from the microphone is its echo (self-wake guard).
        self.ref_wake = await loop.run_in_executor(
            self._wake_pool,
            lambda: WakeDetector(self.models_dir, s.wake.models, threshold=1.0, refractory_s=0.0),
        )
        self._clip_frames = 10**9
        self._follow_up = False
        self._clip_hot: list[tuple[float, float]] = []
        self.reference = Reference()
        self.aec: EchoCanceller | None = None
        if s.aec.enabled:
            try:
                self.aec = EchoCanceller(s.aec.tail_ms)
            except LoomdError as exc:
                self.ctx.error(
                    ErrorCode.AEC_MISSING, f"voice: {exc}; the wake word is gated instead"
                )
        self.frontend: FrontEnd | None = None
        if s.frontend.enabled:
            try:
                self.frontend = FrontEnd(s.frontend.noise_suppression, s.frontend.auto_gain)
            except LoomdError as exc:
                self.ctx.error(ErrorCode.FRONTEND_MISSING, f"voice: {exc}; running without it")
        self.source, sink = s.source, s.sink
        if "auto" in (s.source, s.sink):  # a board with a mic and a speaker just works
            ins, outs = await asyncio.to_thread(count_devices, s.mic.device)
            self.source = ("mic" if ins else "none") if s.source == "auto" else s.source
            sink = ("speaker" if outs else "none") if s.sink == "auto" else s.sink
            self.log.info("voice: audio from %s, speech to %s (auto)", self.source, sink)
        if sink == "speaker":
            self.sink = PyAudioSpeaker(s.mic.device)
        elif sink == "wav":
            self.sink = WavSink(s.sink_dir or self.ctx.cache_dir / "voice")
        elif sink == "bus":
            self.sink = BusSink(self.ctx.bus, s.site)
        else:
            self.sink = BufferSink(realtime=sink == "buffer")
        self.sink.listeners.append(self.reference.played)
        self.state = VoiceState.IDLE
        self.counts: collections.Counter[str] = collections.Counter()
        self._seq = itertools.count(int(time.time() * 1000))
        self._turn_task: asyncio.Task[None] | None = None
        self._speak_lock = asyncio.Lock()
        self._fresh: FreshQueue | None = None
        self._live_lock = asyncio.Lock()
        self._stt_hist: list[float] = []
        self._wyoming: Any = None
        if s.wyoming.enabled:
            from loomd.audio.wyoming_server import serve

            self._wyoming = await serve(self, s.wyoming.host, s.wyoming.port)
        self._vocabulary = ""  # the assist's names, for whisper's initial prompt
        self._assist_seen = False
        self.spawn(self._follow_vocabulary, "vocabulary", restart=True)
        from loomd.audio.handoff import Handoff

        self.handoff = Handoff(
            self.ctx.bus, s.site, ask_s=_HANDOFF_ASK_S, max_s=s.vad.max_utterance_s + 5
        )
        self.spawn(self._follow_say, "say", restart=True)
        self.spawn(self._follow_stop, "stop", restart=True)
        self.spawn(self._follow_play, "play", restart=True)
        self.spawn(self.handoff.follow, "handoff", restart=True)
        if self.source != "none":
            self.spawn(self._listen_live, "listen", restart=True)

    async def stop(self) -> None:
        if self._wyoming is not None:
            await self._wyoming.stop()
        if self._turn_task is not None:
            self._turn_task.cancel()
        self.sink.stop()
        await asyncio.to_thread(self.stt.close)
        self._wake_pool.shutdown(wait=False, cancel_futures=True)
        self._tts_pool.shutdown(wait=False, cancel_futures=True)

    # -- state and events ---------------------------------------------------------------------
    async def _set_state(self, state: VoiceState, uid: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        ev = VoiceStateEvent(state, self.settings.site, uid)
        await self.ctx.bus.publish(Topic.VOICE_STATE, ev.to_payload(), qos="realtime")

    # -- the live pipeline --------------------------------------------------------------------
    def _source(self) -> Source:
        from loomd.audio.io import BusSource, PyAudioMic, WavSource

        s = self.settings
        if self.source == "mic":
            return PyAudioMic(s.mic.device)
        if self.source == "wav":
            return WavSource(s.source_path, realtime=True)
        return BusSource(self.ctx.bus, s.site)

    async def _listen_live(self) -> None:
        """A device is realtime: frames go through a queue bounded by age and count, so a
        stage that fell behind resumes on fresh audio."""
        fresh = self._fresh = FreshQueue(max_frames=50, max_age_s=0.5)
        source = self._source()

        async def feed() -> None:
            async for frame in source.frames():
                fresh.put(frame)
            fresh.put(Frame(b"", -1.0, time.monotonic()))  # the end of a finite source

        async def frames() -> AsyncIterator[Frame]:
            while True:
                frame = await fresh.get()
                if not frame.pcm:
                    return
                yield frame

        feeder = asyncio.create_task(feed())
        try:
            async with self._live_lock:
                await self._run(frames(), wait_turns=False)
            await feeder
        finally:
            feeder.cancel()

    async def _run(self, frames: AsyncIterator[Frame], *, wait_turns: bool) -> list[TurnRecord]:
        """Frames -> wake -> VAD -> turns. Returns the turns started (for `voice test`)."""
        from loomd.audio.vad import Segmenter

        s = self.settings
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._wake_pool, self.wake.reset)
        seg = Segmenter(
            preroll_ms=s.vad.preroll_ms,
            hangover_ms=s.vad.hangover_ms,
            min_speech_ms=s.vad.min_speech_ms,
            max_utterance_s=s.vad.max_utterance_s,
            no_speech_s=s.vad.no_speech_s,
        )
        listening = False
        self._follow_up = False
        wake_buf: list[bytes] = []
        turns: list[TurnRecord] = []
        detection: Detection | None = None
        last: Frame | None = None
        handoff = self.handoff
        async for frame in frames:
            last = frame
            self.counts["frames"] += 1
            self._clip_frames += 1
            echo = self.reference.active
            played = self.reference.take()
            if echo and self.aec is not None:
                frame = Frame(self.aec.process(frame.pcm, played), frame.t, frame.at)
            speech = frame.pcm  # what speech to text hears
            if self.frontend is not None:  # the wake word and the VAD hear the front end
                frame = Frame(self.frontend.process(frame.pcm), frame.t, frame.at)
                speech = frame.pcm if s.frontend.stt else speech
            if handoff.streaming:  # the turn is another part's: it hears the mic
                if not await handoff.feed(speech):
                    await loop.run_in_executor(self._wake_pool, self.wake.reset)
                    await self._set_state(VoiceState.IDLE)
                continue
            if handoff.listen_now and not listening:
                uid, handoff.listen_now = handoff.listen_now, ""
                await handoff.start(uid)
                await self._set_state(VoiceState.LISTENING, uid)
                continue
            if listening and (action := handoff.pending(speech)) is not None:
                if action != WakeAction.LOCAL:
                    listening = False
                    if action == WakeAction.STREAM:
                        await handoff.start(handoff.asked)
                        await handoff.feed(speech)
                    else:
                        await self._set_state(VoiceState.IDLE)
                    continue
            if listening:
                cut = seg.push(speech, frame.t, self.vad(frame.pcm))
                if cut is not None:
                    listening = False
                    handoff.cancel()
                    rec = self._new_record(detection)
                    turns.append(rec)
                    self._start_turn(cut, rec, frame)
                    if wait_turns and self._turn_task is not None:
                        await asyncio.shield(self._turn_task)
                continue
            if self._follow_up:  # the board just asked a question: listen without the wake
                self._follow_up = False
                listening, detection, wake_buf = True, None, []
                seg.open(frame.t, no_speech_s=s.followup_s)
                await self._set_state(VoiceState.LISTENING)
                continue
            wake_buf.append(frame.pcm)
            if len(wake_buf) < _WAKE_FRAMES:
                continue
            pcm, wake_buf = b"".join(wake_buf), []
            t_end = frame.t + FRAME_MS / 1000
            if echo and self.aec is None and s.aec.gate:
                continue  # no echo cancellation: the board would hear itself
            if (
                echo
                and self.aec is not None
                and self.reference.playing_frames * FRAME_MS < (s.aec.converge_ms)
            ):
                continue  # the canceller has not converged yet: its residue can wake it
            limit = s.wake.speaking_threshold if echo else s.wake.threshold
            hit = await loop.run_in_executor(self._wake_pool, self.wake.process, pcm, t_end, limit)
            if hit is None:
                continue
            if self._said_it():
                self.counts["self_wakes_blocked"] += 1
                self.log.info("voice: ignored a wake (score %.2f): the board said it", hit.score)
                continue
            detection = hit
            self.counts["wakes"] += 1
            self.log.info(
                "voice: wake %s (score %.2f)%s", hit.word, hit.score,
                f" {self.reference.playing_frames * FRAME_MS} ms into playback" if echo else "",
            )  # fmt: skip
            # Its feature window still holds the wake word: it would fire again on it once
            # the refractory period is over (it hears no new audio while the VAD listens).
            await loop.run_in_executor(self._wake_pool, lambda: self.wake.reset(clock=False))
            if self.state == VoiceState.SPEAKING or (
                self._turn_task is not None and not self._turn_task.done()
            ):
                await self._barge_in()
            listening = True
            seg.open(t_end)
            handoff.ask(hit.word, hit.score, uuid.uuid4().hex[:12])
            await self._set_state(VoiceState.LISTENING)
        if listening and last is not None:
            # A finite source ended while listening: let the segmenter's clock run on over
            # silence so the utterance (or its absence) is decided as it would be live.
            t, silence = last.t, b"\0" * len(last.pcm)
            limit = s.vad.no_speech_s + s.vad.max_utterance_s
            cut = None
            while cut is None and t - last.t < limit:
                t += FRAME_MS / 1000
                cut = seg.push(silence, t, False)
            if cut is not None:
                handoff.cancel()
                rec = self._new_record(detection)
                turns.append(rec)
                self._start_turn(cut, rec, Frame(silence, t, time.monotonic()))
        if wait_turns and self._turn_task is not None:
            await asyncio.shield(self._turn_task)
        return turns

    def _new_record(self, det: Detection | None) -> TurnRecord:
        rec = TurnRecord(uuid.uuid4().hex[:12], self.settings.site, time.time())
        if det is not None:
            rec.wake, rec.wake_score = det.word, round(det.score, 3)
        else:
            rec.wake = "(follow-up)"
        return rec

    def _start_turn(self, cut: Segment, rec: TurnRecord, frame: Frame) -> None:
        # The segmenter decided `cut.end - cut.speech_end` of stream time after speech ended.
        speech_end = frame.at - (cut.end - cut.speech_end)
        clock = _Clock(speech_end)
        rec.timings["vad_end"] = clock.ms()
        self.counts["utterances"] += 1
        self._turn_task = self.spawn(
            lambda: self._turn(cut, rec, clock), f"turn-{rec.utterance_id}", critical=False
        )

    async def _turn(self, cut: Segment, rec: TurnRecord, clock: _Clock) -> None:
        try:
            await self._set_state(VoiceState.THINKING, rec.utterance_id)
            if cut.reason == "no_speech":
                rec.outcome = "no_speech"
                return
            if self.settings.agent == "assist" and not self._assist_seen:
                await self._probe_assist()
            rec.timings["stt_start"] = clock.ms()
            try:
                extra = self._vocabulary if self.settings.stt.assist_vocabulary else ""
                res = await self.stt.transcribe(cut.pcm, extra)
            except Exception as exc:
                rec.outcome, rec.error = "failed", f"STT failed: {type(exc).__name__}: {exc}"
                self.counts["failed"] += 1
                self.ctx.error(
                    ErrorCode.STT_FAILED, f"voice: utterance {rec.utterance_id}: {rec.error}"
                )
                return
            rec.timings["stt_end"] = clock.ms()
            self._stt_hist.append(res.ms)
            del self._stt_hist[:-200]
            if not res.text:
                rec.outcome = "no_speech"
                return
            rec.transcript = res.text
            tr = Transcript(
                res.text,
                rec.utterance_id,
                self.settings.site,
                confidence=1.0,
                timings=dict(rec.timings),
            )
            await self.ctx.bus.publish(Topic.VOICE_TRANSCRIPT, tr.to_payload(), wait=False)
            agent = self.settings.agent
            if agent == "assist" and self._assist_seen:
                await self._assist(rec, clock)
            elif agent != "none":
                await self._converse(rec, clock)
        except asyncio.CancelledError:
            rec.outcome = "interrupted"
            raise
        finally:
            if rec.outcome == "open":
                rec.outcome = "ok"
            await self._record(rec)
            if self._turn_task is asyncio.current_task():
                await self._set_state(VoiceState.IDLE, rec.utterance_id)

    async def _follow_vocabulary(self) -> None:
        """The assist's vocabulary (device and area names) becomes whisper's prompt; hearing
        from the assist at all tells that it runs."""
        async with self.ctx.bus.subscribe(Topic.ASSIST_VOCABULARY, "reliable") as sub:
            await sub.ready()
            try:
                ev = await self.ctx.bus.request(Topic.ASSIST_VOCABULARY, None, timeout=3.0)
                self._take_vocabulary(ev.payload)
            except LoomdError:
                pass  # no assist yet: its first vocabulary event tells when it starts
            async for ev in sub:
                if ev.payload is not None:
                    self._take_vocabulary(ev.payload)

    async def _probe_assist(self) -> None:
        """Is the assist there (it may have started after this component)? Asked at most
        every 30 s; meanwhile the router answers directly."""
        now = time.monotonic()
        if now - getattr(self, "_probed", -1e9) < 30.0:
            return
        self._probed = now
        try:
            ev = await self.ctx.bus.request(Topic.ASSIST_VOCABULARY, None, timeout=1.0)
            self._take_vocabulary(ev.payload)
        except LoomdError:
            self.log.info("voice: no assist answers; the router answers this site directly")

    def _take_vocabulary(self, payload: Any) -> None:
        try:
            self._vocabulary = Vocabulary.from_payload(payload).prompt
            self._assist_seen = True
        except LoomdError as exc:
            self.ctx.error(ErrorCode.BAD_VOCABULARY, f"voice: {exc}")

    async def _assist(self, rec: TurnRecord, clock: _Clock) -> None:
        """Hand the transcript to the assist; speak its reply; listen again if it asks."""
        from loomd.audio.tts import SentenceSplitter

        s = self.settings
        ask = AssistRequest(rec.transcript, f"voice-{s.site}", s.site,
                            speech_end_ns=int(clock.speech_end * 1e9),
                            utterance_id=rec.utterance_id)  # fmt: skip
        try:
            ev = await self.ctx.bus.request(Topic.ASSIST_CONVERSE, ask.to_payload(),
                                            timeout=s.reply_timeout_s)  # fmt: skip
            turn = AssistTurn.from_payload(ev.payload)
        except LoomdError as exc:
            rec.outcome, rec.error = "failed", f"no answer from the assist: {exc}"
            self.counts["failed"] += 1
            why = f"voice: utterance {rec.utterance_id}: {rec.error}"
            self.ctx.error(ErrorCode.REPLY_FAILED, why)
            return
        rec.intent = turn.intent.to_payload()
        rec.actions = [a.to_payload() for a in turn.actions]
        rec.route, rec.reply = turn.route, turn.reply
        for key in ("matched", "action_done", "llm_first"):
            if key in turn.timings:
                rec.timings[key] = turn.timings[key]
        rec.timings["reply"] = clock.ms()
        if turn.error:
            rec.error = turn.error
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        split = SentenceSplitter()
        for sentence in [*split.feed(turn.reply), *split.flush()]:
            sentences.put_nowait(sentence)
        sentences.put_nowait(None)
        await self._speak_queue(sentences, rec, clock)
        if turn.continue_conversation and s.followup_s > 0:
            self._follow_up = True
        else:
            self._asked(turn.reply)

    async def _converse(self, rec: TurnRecord, clock: _Clock) -> None:
        """The default voice agent: ask the router, speak the reply while it streams."""
        from loomd.audio.tts import SentenceSplitter

        s = self.settings
        reply_to = f"voice.reply.{rec.utterance_id}"
        req = ChatRequest(
            (ChatMessage("system", s.system_prompt), ChatMessage("user", rec.transcript)),
            priority="voice",
            stream=True,
            max_tokens=96,
            agent="voice",
        )
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_queue(sentences, rec, clock))
        split = SentenceSplitter()
        text = ""
        try:
            async with self.ctx.bus.subscribe(reply_to) as sub:
                await sub.ready()
                await self.ctx.bus.publish(
                    Topic.LLM_CHAT, req.to_payload(), reply_to=reply_to, wait=False
                )
                # The limit is on silence (before the first chunk and between chunks): a
                # router that is gone fails the turn, a slow one streaming a long reply
                # does not.
                deadline = time.monotonic() + s.reply_timeout_s
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LoomdError(f"no reply from the router within {s.reply_timeout_s} s")
                    ev = await sub.get(timeout=left)
                    deadline = time.monotonic() + s.reply_timeout_s
                    if ev.type == EventType.LLM_CHUNK:
                        piece = ChatChunk.from_event(ev).text
                        if "first_token" not in rec.timings:
                            rec.timings["first_token"] = clock.ms()
                        text += piece
                        for sentence in split.feed(piece):
                            rec.timings.setdefault("first_sentence", clock.ms())
                            sentences.put_nowait(sentence)
                    elif ev.type == EventType.LLM_DONE:
                        done = ChatDone.from_payload(ev.payload)
                        if done.error:
                            raise LoomdError(f"the router said: {done.error}")
                        if not text and done.text:  # a router that did not stream
                            text = done.text
                            split.feed(done.text)
                        break
            for sentence in split.flush():
                rec.timings.setdefault("first_sentence", clock.ms())
                sentences.put_nowait(sentence)
            rec.reply = text.strip()
            self._asked(rec.reply)
        except (LoomdError, TimeoutError) as exc:
            rec.outcome, rec.error = "failed", str(exc) or "no reply from the router"
            self.counts["failed"] += 1
            self.ctx.error(
                ErrorCode.REPLY_FAILED, f"voice: utterance {rec.utterance_id}: {rec.error}"
            )
        finally:
            sentences.put_nowait(None)
            try:
                await speaker
            except asyncio.CancelledError:
                speaker.cancel()
                raise

    async def _speak_queue(
        self, sentences: asyncio.Queue[str | None], rec: TurnRecord, clock: _Clock
    ) -> None:
        """Synthesise the next sentence while the current one plays."""
        loop = asyncio.get_running_loop()
        audio_q: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def synth() -> None:
            while (text := await sentences.get()) is not None:
                audio_q.put_nowait(
                    await loop.run_in_executor(self._tts_pool, self.tts.synthesize, text)
                )
            audio_q.put_nowait(None)

        maker = asyncio.create_task(synth())
        try:
            while (audio := await audio_q.get()) is not None:
                rec.timings.setdefault("first_audio", clock.ms())
                await self._set_state(VoiceState.SPEAKING, rec.utterance_id)
                async with self._speak_lock:
                    if not await self._play(audio):
                        rec.outcome = "interrupted"
                        return
            rec.timings["spoken"] = clock.ms()
        finally:
            maker.cancel()

    def _hot_spans(self, pcm: bytes) -> list[tuple[float, float]]:
        """Where in `pcm` the board itself says the wake word: (start, end) in seconds.
        The wake model scores at the end of a word; a span covers the second before it."""
        spans: list[tuple[float, float]] = []
        det = self.ref_wake
        det.reset()
        step = 2560  # 80 ms
        # The score peaks after the word: a clip that ends on it peaks in the silence after.
        pcm = pcm + b"\0" * 32000
        for i in range(0, len(pcm), step):
            det.process(pcm[i : i + step], 0.0)
            if det.last >= self.settings.aec.guard_score:
                end = (i + step) / 32000
                if spans and spans[-1][1] >= end - 1.0:
                    spans[-1] = (spans[-1][0], end)
                else:
                    spans.append((end - 1.0, end))
        return spans

    def _said_it(self) -> bool:
        """True while the board's own wake word may still be echoing in the room. Time is
        counted in microphone frames since the clip started, not on the wall clock: a
        starved machine delivers late audio, but its position in the stream holds."""
        at = self._clip_frames * FRAME_MS / 1000
        guard = self.settings.aec.guard_s
        return any(a - 0.2 <= at <= b + guard for a, b in self._clip_hot)

    async def _play(self, pcm: bytes) -> bool:
        """Play through the sink, knowing where the board says its own wake word. The scan
        runs beside the playback, not before it: it is ~40x faster than real time and a
        wake word takes longer than that to say, so the spans are known before they play."""
        self._clip_hot, self._clip_frames = [], 0
        scan: asyncio.Future[list[tuple[float, float]]] | None = None
        if self.settings.aec.self_wake_guard:
            loop = asyncio.get_running_loop()
            scan = loop.run_in_executor(self._tts_pool, self._hot_spans, pcm)
            scan.add_done_callback(
                lambda f: setattr(self, "_clip_hot", f.result()) if not f.cancelled() else None
            )
        return await self.sink.play(pcm)

    def _asked(self, text: str) -> None:
        """After the board asks a question, the next words need no wake word."""
        if self.settings.followup_s > 0 and text.rstrip().endswith("?"):
            self._follow_up = True

    async def _barge_in(self) -> None:
        """The wake word while speaking or thinking: cut playback, cancel the turn."""
        self.counts["barge_ins"] += 1
        self.sink.stop()
        task = self._turn_task
        if task is not None and not task.done():
            task.cancel()
        await self.ctx.bus.publish(
            Topic.VOICE_STOP, {"site": self.settings.site, "reason": "barge-in"}, qos="realtime"
        )

    # -- flight recorder ----------------------------------------------------------------------
    async def _record(self, rec: TurnRecord) -> None:
        try:
            kv = self.ctx.state.kv("voice")
            await kv.put(f"turn/{next(self._seq):016d}", rec.to_dict())
            keys = kv.keys("turn/")
            for old in keys[: max(0, len(keys) - self.settings.recorder_size)]:
                await kv.delete(old)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.RECORDER, f"voice: flight recorder write failed: {exc}")

    # -- say ----------------------------------------------------------------------------------
    async def speak(self, req: SayRequest) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if req.priority == "announcement":
            self.sink.stop()
        began = time.monotonic()
        audio = await loop.run_in_executor(self._tts_pool, self.tts.synthesize, req.text)
        synth_ms = (time.monotonic() - began) * 1000
        async with self._speak_lock:
            await self._set_state(VoiceState.SPEAKING, req.utterance_id)
            done = await self._play(audio)
            if self._turn_task is None or self._turn_task.done():
                await self._set_state(VoiceState.IDLE, req.utterance_id)
        self.counts["said" if done else "said_cut"] += 1
        if done:
            self._asked(req.text)
        return {
            "spoken": done,
            "seconds": round(len(audio) / 32000, 2),
            "tts_ms": round(synth_ms, 1),
            "engine": self.tts.name,
        }

    async def _follow_say(self) -> None:
        async with self.ctx.bus.subscribe(Topic.VOICE_SAY) as sub:
            async for ev in sub:
                try:
                    req = SayRequest.from_payload(ev.payload)
                except LoomdError as exc:
                    self.counts["bad_say"] += 1
                    self.ctx.error(ErrorCode.BAD_SAY, f"voice: bad voice.say payload: {exc}")
                    continue
                if req.site == self.settings.site:
                    self.spawn(lambda r=req: self._say_task(r), "say-one", critical=False)  # type: ignore[misc]

    async def _say_task(self, req: SayRequest) -> None:
        await self.speak(req)

    async def _follow_play(self) -> None:
        """`voice.play`: audio from another part (Home Assistant's TTS), played like our own."""
        async with self.ctx.bus.subscribe(Topic.VOICE_PLAY) as sub:
            async for ev in sub:
                try:
                    req = PlayAudio.from_payload(ev.payload)
                except LoomdError as exc:
                    self.ctx.error(ErrorCode.BAD_PLAY, f"voice: bad voice.play payload: {exc}")
                    continue
                if req.site == self.settings.site:
                    self._spawn_play(req, ev)

    def _spawn_play(self, req: PlayAudio, ev: Any) -> None:
        self.spawn(lambda: self._play_task(req, ev), "play-one", critical=False)

    async def _play_task(self, req: PlayAudio, ev: Any) -> None:
        if req.announcement:
            self.sink.stop()
        async with self._speak_lock:
            await self._set_state(VoiceState.SPEAKING, req.utterance_id)
            done = await self._play(req.pcm)
            if self._turn_task is None or self._turn_task.done():
                await self._set_state(VoiceState.IDLE, req.utterance_id)
        self.counts["played" if done else "played_cut"] += 1
        if ev.reply_to:
            reply = PlayDone(done, round(len(req.pcm) / 32000, 2))
            await self.ctx.bus.reply(ev, reply.to_payload())

    async def _follow_stop(self) -> None:
        async with self.ctx.bus.subscribe(Topic.VOICE_STOP) as sub:
            async for ev in sub:
                if ev.sender == self.ctx.bus.name:
                    continue
                self.sink.stop()
                if self._turn_task is not None:
                    self._turn_task.cancel()

    # -- operator view ------------------------------------------------------------------------
    def status(self) -> VoiceStatus | None:
        if not hasattr(self, "counts"):
            return None
        return VoiceStatus(
            state=str(self.state),
            source=self.source,
            tts=self.tts.name,
            frames=self.counts["frames"],
            wakes=self.counts["wakes"],
            utterances=self.counts["utterances"],
            failed=self.counts["failed"],
            barge_ins=self.counts["barge_ins"],
            self_wakes_blocked=self.counts["self_wakes_blocked"],
            said=self.counts["said"],
            dropped_frames=self._fresh.dropped if self._fresh else 0,
            stt_pid=self.stt.pid or 0,
            stt_restarts=self.stt.restarts,
        )

    def metrics(self) -> Iterable[Family]:
        if not hasattr(self, "counts"):
            return
        for key in ("wakes", "utterances", "failed", "barge_ins", "said"):
            yield Family(
                f"loomd_voice_{key}_total", "counter", f"Voice {key}.", [({}, self.counts[key])]
            )
        yield Family(
            "loomd_voice_dropped_frames_total",
            "counter",
            "Frames dropped as stale before a stage read them.",
            [({}, float(self._fresh.dropped if self._fresh else 0))],
        )
        yield Family(
            "loomd_voice_stt_failures_total", "counter", "STT calls that failed.",
            [({}, float(self.stt.failures))],
        )  # fmt: skip

    def commands(self) -> Mapping[str, Command]:
        return {
            "say": Command(self._op_say, "speak text", ("text", "priority")),
            "test": Command(self._op_test, "run the whole pipeline on a WAV file", ("path", "out")),
            "last": Command(self._op_last, "the last N interactions with timings", ("n",)),
            "stop": Command(self._op_stop, "stop speaking and cancel the turn"),
        }

    async def _op_say(self, text: Any, priority: Any = "normal") -> dict[str, Any]:
        if not isinstance(text, str) or not text.strip():
            raise LoomdError("say: give the text to speak")
        return await self.speak(SayRequest(text, str(priority), self.settings.site))

    async def _op_test(self, path: Any, out: Any = "") -> dict[str, Any]:
        from loomd.audio.io import BufferSink, WavSource, write_wav

        clip = Path(str(path))
        if not await asyncio.to_thread(clip.is_file):
            raise LoomdError(f"voice test: no file {clip}")
        sink, test_sink = self.sink, BufferSink()
        self.sink = test_sink
        try:
            began = time.monotonic()
            turns = await self._run(WavSource(clip).frames(), wait_turns=True)
        finally:
            self.sink = sink
        audio = bytes(test_sink.audio)
        target = Path(str(out)) if out else clip.with_name(clip.stem + ".reply.wav")
        if audio:
            await asyncio.to_thread(write_wav, target, audio)
        return {
            "turns": [t.to_dict() for t in turns],
            "wake": bool(turns and turns[0].wake),
            "reply_audio": str(target) if audio else "",
            "reply_seconds": round(len(audio) / 32000, 2),
            "wall_ms": round((time.monotonic() - began) * 1000, 1),
        }

    async def _op_last(self, n: Any = 5) -> dict[str, Any]:
        items = self.ctx.state.kv("voice").items("turn/")
        return {"turns": [v for _, v in items[-int(n) :]]}

    async def _op_stop(self) -> dict[str, Any]:
        await self._barge_in()
        return {}
