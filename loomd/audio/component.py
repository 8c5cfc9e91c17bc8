"""The `voice` component: wires the rooms of the voice pipeline together and serves the
operator commands (`loomctl say`, `loomctl voice last|test|stop`).

The rooms: the model stages (`stages`: wake word, TTS, STT off the event loop), the live
pipeline (`pipeline`: frames -> wake -> VAD -> a turn), the turn and its default agent
(`agent`: STT, then the assist or the router, the reply spoken), the board's voice
(`speaker`: playback, echo reference, self-wake guard, `voice.say`, `voice.play`), the
flight recorder (`recorder`), the hand-off to another part (`handoff`) and the Wyoming
services (`wyoming_server`), each given its collaborators here."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomd.audio.models import missing_models, wake_models
from loomd.audio.settings import VoiceSettings
from loomd.component import Command, Component, StatusBlock
from loomd.config import ResolvedPaths
from loomd.errors import LoomdError
from loomd.messages import (
    ErrorCode,
    PlayAudio,
    RescoreReply,
    RescoreRequest,
    SayRequest,
    Topic,
    VoiceMute,
)
from loomd.metrics import Family

if TYPE_CHECKING:
    from loomd.audio.agent import Agent
    from loomd.audio.board import Board
    from loomd.audio.handoff import Handoff
    from loomd.audio.io import Source
    from loomd.audio.pipeline import Pipeline
    from loomd.audio.recorder import FlightRecorder
    from loomd.audio.speaker import Speaker
    from loomd.audio.stages import Stages, Wake

__all__ = ["VoiceComponent", "VoiceStatus"]

# How long a wake waits for a claimant on `voice.wake` (it listens locally meanwhile).
_HANDOFF_ASK_S = 0.5


@dataclass(frozen=True)
class VoiceStatus(StatusBlock):
    state: str
    source: str
    identity: str  # who a spoken turn acts for (`voice:local`, `voice:<site>`)
    tts: str
    frames: int
    wakes: int
    utterances: int
    failed: int
    barge_ins: int
    bargein_ducks: int  # barge-in candidates: playback ducked while the wake check ran
    bargein_refused: int  # candidates the check refused: the volume came back
    self_wakes_blocked: int
    said: int
    stops: int
    dropped_frames: int
    stt_pid: int
    stt_restarts: int
    wake_pid: int
    wake_restarts: int
    tts_pid: int
    tts_restarts: int
    muted: bool


class VoiceComponent(Component[VoiceSettings]):
    requires = ("numpy", "pywhispercpp", "openwakeword", "onnxruntime", "webrtcvad", "piper")
    # (`wyoming` is imported only when [voice.wyoming] is enabled.)
    extra = "voice"
    apt = "loomd-voice"
    summary = "local wake word, STT and TTS: mic -> wake -> whisper.cpp -> router -> Piper"

    stages: Stages
    wake: Wake
    board: Board
    speaker: Speaker
    recorder: FlightRecorder
    agent: Agent
    handoff: Handoff
    pipeline: Pipeline

    @classmethod
    def check(cls, settings: VoiceSettings, paths: ResolvedPaths) -> list[str]:
        """The speech-to-text and wake word models are installed (Piper falls back to
        espeak-ng, so a missing voice is a problem only without espeak-ng)."""
        return missing_models(settings, Path(settings.models_dir or paths.models_dir))

    async def start(self) -> None:
        from loomd.audio.agent import Agent, voice_identity
        from loomd.audio.board import Board
        from loomd.audio.handoff import Handoff
        from loomd.audio.pipeline import Pipeline
        from loomd.audio.recorder import FlightRecorder
        from loomd.audio.speaker import Speaker
        from loomd.audio.stages import Stages

        s = self.settings
        self.models_dir = s.models_dir or str(self.ctx.models_dir)
        words = wake_models(s, Path(self.models_dir))
        if words[len(s.wake.models) :]:
            self.log.info("voice: wake words from the folder: %s",
                          ", ".join(Path(w).stem for w in words[len(s.wake.models) :]))  # fmt: skip
        tts = (s.tts.engine, s.tts_voice, s.tts.threads, s.language)
        self.stages = stages = Stages(self.models_dir, words, tts)
        try:
            stop = await self._load(stages)
        except BaseException:  # no worker process outlives a failed start
            await asyncio.to_thread(stages.close)
            raise
        stt = stages.stt
        self.source, sink = await self._devices()
        self.counts: collections.Counter[str] = collections.Counter()
        self.board = Board(self.ctx.bus, s.site)
        self.speaker = Speaker(self._sink(sink), stages, self.board, self.counts,
                               lambda: self.settings)  # fmt: skip
        self.recorder = FlightRecorder(lambda: self.ctx.state, s.recorder_size, self.ctx.error)
        self.agent = Agent(self.ctx, stt=stt, speaker=self.speaker, board=self.board,
                           recorder=self.recorder, counts=self.counts,
                           spawn=lambda w, name: self.spawn(w, name, critical=False),
                           identity=voice_identity(self.source, s.site))  # fmt: skip
        self.handoff = Handoff(
            self.ctx.bus,
            s.site,
            ask_s=_HANDOFF_ASK_S,
            max_s=s.vad.max_utterance_s + 5,
            receive=self.ctx.receive,
        )
        self.pipeline = Pipeline(self.ctx, wake=self.wake, vad=self._vad(),
                                 aec=self._aec(), frontend=self._frontend(),
                                 speaker=self.speaker, handoff=self.handoff, board=self.board,
                                 agent=self.agent, counts=self.counts)  # fmt: skip
        if stop is not None:
            self.pipeline.stop = stop
            self.speaker.stop_models = (s.stop.model,)
        self._wyoming: Any = None
        self._wyoming_mdns: Any = None
        if s.wyoming.enabled:
            from loomd.audio.wyoming_server import WyomingServices, serve

            voice = s.tts_voice if stages.tts_name == "piper" else "espeak-ng"  # what speaks
            svc = WyomingServices(stages, voice, s.language, self.wake.words,
                                  s.wake.bare_limit, self.ctx.error)  # fmt: skip
            self._wyoming = await serve(svc, s.wyoming.host, s.wyoming.port)
            if s.wyoming.mdns:  # mDNS probing takes a second or two: not in start's way
                self.spawn(self._announce_wyoming, "wyoming mdns", restart=False, critical=False)
        self.spawn(self.agent.follow_vocabulary, "vocabulary", restart=True)
        self.spawn(self._follow_say, "say", restart=True)
        self.spawn(self._follow_stop, "stop", restart=True)
        self.spawn(self._follow_play, "play", restart=True)
        self.spawn(self._follow_mute, "mute", restart=True)
        self.spawn(self._follow_rescore, "rescore", restart=True)
        self.spawn(self.handoff.follow, "handoff", restart=True)
        if self.source != "none":
            self.spawn(self._listen_live, "listen", restart=True)

    async def _announce_wyoming(self) -> None:
        """`_wyoming._tcp` on mDNS, so Home Assistant's Wyoming integration finds the board
        (on the address it listens on only); zeroconf comes with loomd[homeassistant]."""
        w = self.settings.wyoming
        try:
            from loomd.homeassistant.mdns import announce_wyoming
        except ImportError as exc:
            self.log.warning("[voice.wyoming] mdns: not announced, %s (loomd[homeassistant])", exc)
            return
        try:
            self._wyoming_mdns = await announce_wyoming(
                f"loomd-{self.ctx.device_id}", w.host, w.port
            )
        except Exception as exc:  # a name taken, no multicast on the interface: serve anyway
            self.ctx.error(ErrorCode.WYOMING_MDNS, f"Wyoming not announced on mDNS: {exc}")

    async def stop(self) -> None:
        if self._wyoming_mdns is not None:
            await self._wyoming_mdns.stop()
        if self._wyoming is not None:
            await self._wyoming.stop()
        self.board.cancel_turn()
        self.speaker.stop()
        await asyncio.to_thread(self.stages.close)

    # -- wiring -------------------------------------------------------------------------------
    async def _load(self, stages: Stages) -> Wake | None:
        """Start the stage workers and warm them up; the stop word's detector, if any."""
        s = self.settings
        await stages.load_wake()
        self.wake = await stages.wake(s.wake.limits()["*"], s.wake.refractory_s)
        await stages.load_stt(s.stt_model, s.stt.threads, s.stt.vocabulary, s.stt.engine,
                              s.language)  # fmt: skip
        why = await stages.load_tts()
        if why:
            self.ctx.error(ErrorCode.TTS_FALLBACK, why)
        # Warm up: the first synthesis imports scipy (resampling, ~1.5 s) and the first
        # whisper call allocates its buffers; neither should land on the first reply.
        await stages.synthesize("Ready.")
        await stages.stt.transcribe(b"\0" * 16000)
        # The same wake word model on what the board is about to play: while its own voice
        # says the wake word, a wake from the microphone is its echo (self-wake guard).
        await stages.load_guard()
        return await self._stop_word(stages)

    async def _stop_word(self, stages: Stages) -> Wake | None:
        """The stop word's detector, or None (no model set, or it did not load: said)."""
        from loomd.audio.models import model_path

        model = self.settings.stop.model
        if not model:
            return None
        try:
            model_path(self.models_dir, model, "openwakeword")
            stop = await stages.wake(self.settings.stop.threshold, 1.0, (model,))
            await stop.process(b"", 0.0)  # made now: a bad model is named at start
            await stages.load_guard((model,))
        except LoomdError as exc:
            self.ctx.error(ErrorCode.STOP_MISSING, f"voice: no stop word: {exc}")
            return None
        return stop

    def _aec(self) -> Any:
        from loomd.audio.aec import EchoCanceller

        if not self.settings.aec.enabled:
            return None
        try:
            return EchoCanceller(self.settings.aec.tail_ms)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.AEC_MISSING, f"voice: {exc}; the wake word is gated instead")
            return None

    def _vad(self) -> Any:
        """The configured VAD; webrtcvad when its library is missing (said, not fatal)."""
        from loomd.audio.vad import make_vad

        v = self.settings.vad
        if v.engine == "silero" and importlib.util.find_spec("llama_cpp") is not None:
            # Both bundle ggml under the same library names: in one process the second to
            # load fails (the router's local model, or this VAD). docs/design/voice-noise.md
            self.ctx.error(ErrorCode.VAD_MISSING, "voice: [voice.vad] engine = 'silero' cannot "
                           "share the daemon with llama-cpp-python (both bundle ggml); using "
                           "webrtcvad")  # fmt: skip
            return make_vad("webrtc", mode=v.mode)
        try:
            return make_vad(v.engine, mode=v.mode, threshold=v.threshold)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.VAD_MISSING, f"voice: {exc}; using webrtcvad")
            return make_vad("webrtc", mode=v.mode)

    def _frontend(self) -> Any:
        from loomd.audio.frontend import FrontEnd

        f = self.settings.frontend
        if not f.enabled:
            return None
        try:
            return FrontEnd(f.noise_suppression, f.auto_gain)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.FRONTEND_MISSING, f"voice: {exc}; running without it")
            return None

    async def _devices(self) -> tuple[str, str]:
        """The source and sink to use ("auto": a board with a mic and a speaker just works)."""
        from loomd.audio.io import count_devices

        s = self.settings
        source, sink = s.source, s.sink
        if "auto" in (s.source, s.sink):
            ins, outs = await asyncio.to_thread(count_devices, s.mic.device)
            source = ("mic" if ins else "none") if s.source == "auto" else s.source
            sink = ("speaker" if outs else "none") if s.sink == "auto" else s.sink
            self.log.info("voice: audio from %s, speech to %s (auto)", source, sink)
        return source, sink

    def _sink(self, kind: str) -> Any:
        from loomd.audio.io import BufferSink, BusSink, PyAudioSpeaker, WavSink

        s = self.settings
        if kind == "speaker":
            return PyAudioSpeaker(s.mic.device)
        if kind == "wav":
            return WavSink(s.sink_dir or self.ctx.cache_dir / "voice")
        if kind == "bus":
            return BusSink(self.ctx.bus, s.site)
        return BufferSink(realtime=kind == "buffer")

    def _source(self) -> Source:
        from loomd.audio.io import BusSource, PyAudioMic, WavSource

        s = self.settings
        if self.source == "mic":
            return PyAudioMic(s.mic.device)
        if self.source == "wav":
            return WavSource(s.source_path, realtime=True)
        return BusSource(self.ctx.bus, s.site)

    async def _listen_live(self) -> None:
        await self.pipeline.listen(self._source())

    # -- say, play, stop ----------------------------------------------------------------------
    async def _follow_say(self) -> None:
        say = self.ctx.receive(SayRequest, code=ErrorCode.BAD_SAY,
                               on_bad=lambda ev, exc: self.counts.update(["bad_say"]))  # fmt: skip
        async for req, _ev in say:
            if req.site == self.settings.site:
                self.spawn(lambda r=req: self._say_task(r), "say-one", critical=False)  # type: ignore[misc]

    async def _say_task(self, req: SayRequest) -> None:
        from loomd.audio.worker import WorkerError

        try:
            await self.speaker.say(req)
        except WorkerError as exc:
            self.ctx.error(ErrorCode.TTS_FAILED, f"voice: voice.say: {exc}")

    async def _follow_play(self) -> None:
        """`voice.play`: audio from another part (Home Assistant's TTS), played like our own."""
        async for req, ev in self.ctx.receive(PlayAudio, code=ErrorCode.BAD_PLAY):
            if req.site == self.settings.site:
                self._spawn_play(req, ev)

    def _spawn_play(self, req: PlayAudio, ev: Any) -> None:
        self.spawn(lambda: self._play_task(req, ev), "play-one", critical=False)

    async def _play_task(self, req: PlayAudio, ev: Any) -> None:
        done = await self.speaker.play_audio(req)
        if ev.reply_to:
            await done.respond(self.ctx.bus, ev)

    async def _follow_rescore(self) -> None:
        """`voice.rescore` (the assist, on a transcript no sentence takes): the STT worker
        scores the sentences against the clip it still holds (loomd.audio.rescore)."""
        async with self.ctx.bus.subscribe(Topic.VOICE_RESCORE) as sub:
            async for ev in sub:
                try:
                    req = RescoreRequest.from_payload(ev.payload)
                except LoomdError as exc:
                    self.ctx.error(ErrorCode.BAD_RESCORE, f"voice: bad voice.rescore: {exc}")
                    if ev.reply_to:
                        await RescoreReply(error=str(exc)).respond(self.ctx.bus, ev)
                    continue
                if ev.reply_to:
                    reply = await self._rescore(req)
                    await reply.respond(self.ctx.bus, ev)

    async def _rescore(self, req: RescoreRequest) -> RescoreReply:
        stt = self.stages.stt
        if stt.last_tag != req.utterance_id:
            return RescoreReply(error=f"utterance {req.utterance_id} is no longer held")
        try:
            got = await stt.rescore(req.transcript, list(req.sentences), req.margin)
        except LoomdError as exc:  # WorkerError: rescoring unavailable, or the worker died
            return RescoreReply(error=str(exc))
        return RescoreReply(got.transcript, got.scores, round(got.ms, 1))

    async def _follow_stop(self) -> None:
        async with self.ctx.bus.subscribe(Topic.VOICE_STOP) as sub:
            async for ev in sub:
                if ev.sender == self.ctx.bus.name:
                    continue
                self.speaker.stop()
                self.board.cancel_turn()

    async def _follow_mute(self) -> None:
        """`voice.mute` (Home Assistant's "Mute" switch through the MQTT bridge)."""
        async for mute, _ev in self.ctx.receive(VoiceMute, code=ErrorCode.BAD_MUTE):
            await self._mute(mute.muted)

    async def _mute(self, on: bool) -> None:
        if await self.board.mute(on):
            self.log.info("voice: microphone %s", "muted" if on else "unmuted")

    # -- operator view ------------------------------------------------------------------------
    def status(self) -> VoiceStatus | None:
        if not hasattr(self, "pipeline"):
            return None
        fresh, tts = self.pipeline.fresh, self.stages.tts_worker
        return VoiceStatus(
            state=str(self.board.state),
            source=self.source,
            identity=self.agent.identity.label,
            tts=self.stages.tts_name,
            frames=self.counts["frames"],
            wakes=self.counts["wakes"],
            utterances=self.counts["utterances"],
            failed=self.counts["failed"],
            barge_ins=self.counts["barge_ins"],
            bargein_ducks=self.counts["bargein_ducks"],
            bargein_refused=self.counts["bargein_refused"],
            self_wakes_blocked=self.counts["self_wakes_blocked"],
            said=self.counts["said"],
            stops=self.counts["stops"],
            dropped_frames=fresh.dropped if fresh else 0,
            stt_pid=self.stages.stt.pid or 0,
            stt_restarts=self.stages.stt.restarts,
            wake_pid=self.stages.wake_worker.pid or 0,
            wake_restarts=self.stages.wake_worker.restarts,
            tts_pid=tts.pid or 0 if tts is not None else 0,
            tts_restarts=tts.restarts if tts is not None else 0,
            muted=self.board.muted,
        )

    def metrics(self) -> Iterable[Family]:
        if not hasattr(self, "pipeline"):
            return
        for key in ("wakes", "utterances", "failed", "barge_ins", "bargein_ducks",
                    "bargein_refused", "said", "ignored"):  # fmt: skip
            yield Family(
                f"loomd_voice_{key}_total", "counter", f"Voice {key}.", [({}, self.counts[key])]
            )
        fresh = self.pipeline.fresh
        yield Family(
            "loomd_voice_dropped_frames_total",
            "counter",
            "Frames dropped as stale before a stage read them.",
            [({}, float(fresh.dropped if fresh else 0))],
        )
        yield Family(
            "loomd_voice_stt_failures_total", "counter", "STT calls that failed.",
            [({}, float(self.stages.stt.failures))],
        )  # fmt: skip

    def commands(self) -> Mapping[str, Command]:
        return {
            "say": Command(self._op_say, "speak text", ("text", "priority")),
            "test": Command(self._op_test, "run the whole pipeline on a WAV file", ("path", "out")),
            "last": Command(self._op_last, "the last N interactions with timings", ("n",)),
            "stop": Command(self._op_stop, "stop speaking and cancel the turn"),
            "mute": Command(self._op_mute, "mute (on) or unmute (off) the microphone", ("on",)),
        }

    async def _op_say(self, text: Any, priority: Any = "normal") -> dict[str, Any]:
        if not isinstance(text, str) or not text.strip():
            raise LoomdError("say: give the text to speak")
        return await self.speaker.say(SayRequest(text, str(priority), self.settings.site))

    async def _op_test(self, path: Any, out: Any = "") -> dict[str, Any]:
        from loomd.audio.io import BufferSink, WavSource, write_wav

        clip = Path(str(path))
        if not await asyncio.to_thread(clip.is_file):
            raise LoomdError(f"voice test: no file {clip}")
        sink, test_sink = self.speaker.sink, BufferSink()
        self.speaker.sink = test_sink
        try:
            began = time.monotonic()
            turns = await self.pipeline.run(WavSource(clip).frames(), wait_turns=True)
        finally:
            self.speaker.sink = sink
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
        return {"turns": self.recorder.last(int(n))}

    async def _op_mute(self, on: Any) -> dict[str, Any]:
        if on not in (True, False, "on", "off"):
            raise LoomdError("voice mute: on or off")
        muted = on in (True, "on")
        await self._mute(muted)
        await VoiceMute(muted).publish(self.ctx.bus)  # so the other parts know (the switch)
        return {"muted": muted}

    async def _op_stop(self) -> dict[str, Any]:
        await self.pipeline.barge_in()
        return {}
