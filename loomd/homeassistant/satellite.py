"""The board as Home Assistant's voice satellite: HA's side of a turn, over the ESPHome API.

A wake word that is HA's (`mode = "satellite"`) is claimed on `voice.wake`: a
`VoiceAssistantRequest(start)` goes to HA and the microphone's frames
(`audio.frames.<site>`) follow as `VoiceAssistantAudio` once HA has answered. HA's pipeline
events drive the rest: the end of speech releases the microphone (`voice.release`), the TTS
URL is fetched over HTTP and played through the board's sink (`voice.play`), then
`VoiceAssistantAnnounceFinished` tells HA the answer was spoken, and a reply that asks
back opens the microphone again (`voice.listen`). Announcements, start_conversation,
timers and the wake word choice come from HA too. When HA is not connected, every wake
word stays local, so the board keeps working."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loomd.errors import LoomdError
from loomd.homeassistant.esphome import api_pb
from loomd.messages import (
    PlayAudio,
    PlayDone,
    SayRequest,
    Topic,
    VoiceListen,
    VoiceRelease,
    WakeAction,
    WakeClaim,
    WakeDetected,
)

if TYPE_CHECKING:
    from loomd.homeassistant.esphome import ApiConnection, ApiServer, MediaPlayer
    from loomd.homeassistant.settings import HomeAssistantSettings

__all__ = ["Run", "Satellite", "wav_pcm"]

log = logging.getLogger("loomd.homeassistant.satellite")

# aioesphomeapi's VoiceAssistantEvent numbers (api.proto)
ERROR, RUN_START, RUN_END, STT_START, STT_END = 0, 1, 2, 3, 4
INTENT_START, INTENT_END, TTS_START, TTS_END = 5, 6, 7, 8
STT_VAD_START, STT_VAD_END = 11, 12
TIMER_FINISHED = 3


def wav_pcm(data: bytes) -> tuple[bytes, int, int]:
    """(s16le mono PCM, rate, channels) from a WAV, streamed ones included (HA's TTS proxy
    writes the header before it knows the length, so sizes may be 0 or 0xFFFFFFFF)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise LoomdError(f"not a WAV file ({data[:4]!r}...)")
    pos, rate, channels, width = 12, 0, 0, 0
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if tag == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            width = bits // 8
        elif tag == b"data":
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            if width != 2 or not rate:
                raise LoomdError(f"WAV with {8 * width}-bit samples; 16-bit PCM expected")
            pcm = data[body:end]
            return pcm[: len(pcm) - len(pcm) % (2 * channels)], rate, channels
        pos = body + size + (size & 1)
    raise LoomdError("WAV without a data chunk")


def to_board(pcm: bytes, rate: int, channels: int) -> bytes:
    """16 kHz mono: what every loomd sink plays."""
    if channels > 1:
        import numpy as np

        x = np.frombuffer(pcm, dtype=np.int16).reshape(-1, channels).mean(axis=1)
        pcm = x.astype(np.int16).tobytes()
    if rate != 16000:
        from loomd.audio.tts import resample

        pcm = resample(pcm, rate)
    return pcm


@dataclass
class Run:
    """One pipeline run HA does for the board. Timings: ms since the request went out."""

    uid: str
    wake: str
    began: float = field(default_factory=time.monotonic)
    ready: bool = False  # HA answered the start request; audio may flow
    streaming: bool = True
    held: list[bytes] = field(default_factory=list)
    conversation_id: str = ""
    continue_conversation: bool = False
    stt: str = ""
    speech: str = ""
    error: str = ""
    tts_url: str = ""
    playing: asyncio.Task[None] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    frames: int = 0

    def mark(self, name: str) -> None:
        self.timings.setdefault(name, round((time.monotonic() - self.began) * 1000, 1))

    def summary(self) -> dict[str, Any]:
        return {"uid": self.uid, "wake": self.wake, "stt": self.stt, "speech": self.speech,
                "error": self.error, "frames": self.frames, "timings": dict(self.timings),
                "conversation_id": self.conversation_id,
                "began": self.began}  # fmt: skip


class Satellite:
    """The `VoiceHandler` of the ESPHome server, and the bus side of a satellite turn."""

    def __init__(self, settings: HomeAssistantSettings, bus: Any, words: list[str]) -> None:
        self.settings, self.bus = settings, bus
        self.words = words  # the wake words the board listens for (ids)
        self.active: list[str] = list(words)  # HA's choice of them
        self.server: ApiServer | None = None
        self.player: MediaPlayer | None = None
        self.conn: ApiConnection | None = None
        self.run: Run | None = None
        self.muted = False
        self.history: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.timers: dict[str, dict[str, Any]] = {}
        self.on_error: Any = None  # (code, message) -> None: the component's ctx.error
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: Any = None

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._error("satellite_task", f"homeassistant: {type(exc).__name__}: {exc}")

    def _error(self, code: str, message: str) -> None:
        self.count("errors")
        if self.on_error is not None:
            self.on_error(code, message)
        else:
            log.error("%s", message)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # -- the ESPHome side --------------------------------------------------------------------
    def connected(self, conn: ApiConnection) -> None:
        log.info("homeassistant: %s took the voice assistant", conn.client_info or conn.peer)
        self.conn = conn

    def disconnected(self, conn: ApiConnection) -> None:
        if self.conn is conn:
            self.conn = None
            if self.run is not None:
                self._spawn(self._finish(self.run, "HA disconnected"))

    async def on_message(self, conn: ApiConnection, msg: Any) -> None:
        kind = type(msg).__name__
        self.count("in." + kind)
        run = self.run
        if kind == "VoiceAssistantResponse":
            if run is not None and not run.ready:
                if msg.error:
                    await self._finish(run, "HA refused the pipeline start")
                    return
                run.ready = True
                run.mark("start_ack")
                self._send_audio(run, run.held)
                run.held = []
        elif kind == "VoiceAssistantEventResponse":
            data = {d.name: d.value for d in msg.data}
            await self._event(msg.event_type, data)
        elif kind == "VoiceAssistantAnnounceRequest":
            self._spawn(self._announce(msg.media_id, msg.preannounce_media_id,
                                       msg.start_conversation))  # fmt: skip
        elif kind == "VoiceAssistantTimerEventResponse":
            self._timer(msg)
        elif kind == "VoiceAssistantConfigurationRequest":
            pb = api_pb()

            words = [
                pb.VoiceAssistantWakeWord(
                    id=w, wake_word=WakeDetected(w, 0).phrase, trained_languages=["en"]
                )
                for w in self.words
            ]
            conn.send(
                pb.VoiceAssistantConfigurationResponse(
                    available_wake_words=words,
                    active_wake_words=self.active,
                    max_active_wake_words=max(1, len(self.words)),
                )
            )
        elif kind == "VoiceAssistantSetConfiguration":
            self.active = [w for w in msg.active_wake_words if w in self.words]
            log.info("homeassistant: active wake words %s", self.active)

    async def _event(self, kind: int, data: dict[str, str]) -> None:
        run = self.run
        if run is None:
            return
        self.count(f"event.{kind}")
        if kind == RUN_START:
            run.mark("run_start")
        elif kind == STT_VAD_START:
            run.mark("vad_start")
        elif kind in (STT_VAD_END, STT_END):
            run.mark("vad_end" if kind == STT_VAD_END else "stt_end")
            if kind == STT_END:
                run.stt = data.get("text", "")
            await self._release(run, "end_of_speech")
        elif kind == INTENT_END:
            run.mark("intent_end")
            run.conversation_id = data.get("conversation_id", run.conversation_id)
            run.continue_conversation = data.get("continue_conversation") == "1"
            run.speech = data.get("speech", "")
        elif kind == TTS_START:
            run.mark("tts_start")
        elif kind == TTS_END:
            run.mark("tts_end")
            run.tts_url = data.get("url", "")
            if run.tts_url and run.playing is None:
                run.playing = asyncio.get_running_loop().create_task(self._speak(run))
        elif kind == ERROR:
            run.error = f"{data.get('code', '?')}: {data.get('message', '')}"
            self._error("pipeline_error", f"homeassistant: pipeline error {run.error}")
            await self._release(run, "error: " + run.error)
        elif kind == RUN_END:
            run.mark("run_end")
            await self._release(run, "run_end")
            if run.playing is None:
                await self._finish(run, run.error)

    # -- a turn ------------------------------------------------------------------------------
    def claim(self, det: WakeDetected) -> WakeClaim:
        """Who takes this wake word's turn (answered on `voice.wake`)."""
        if det.site != self.settings.site:
            return WakeClaim(WakeAction.LOCAL, "homeassistant")
        if self.muted:  # HA's mute switch mutes the board, whoever would take the turn
            self.count("wakes_dropped")
            return WakeClaim(WakeAction.DROP, "homeassistant")
        if self.settings.mode_of(det.word) == "local":
            return WakeClaim(WakeAction.LOCAL, "homeassistant")
        if det.word in self.words and det.word not in self.active:  # HA switched it off
            self.count("wakes_dropped")
            return WakeClaim(WakeAction.DROP, "homeassistant")
        if self.conn is None:  # HA is away: the board answers by itself
            self.count("wakes_local_ha_away")
            return WakeClaim(WakeAction.LOCAL, "homeassistant")
        self.start(det.utterance_id or uuid.uuid4().hex[:12], det.word, det.phrase)
        return WakeClaim(WakeAction.STREAM, "homeassistant")

    def start(self, uid: str, word: str, phrase: str, conversation_id: str = "") -> None:
        pb = api_pb()

        assert self.conn is not None
        if self.run is not None:  # a new wake word cuts the old turn (barge-in)
            self._spawn(self._finish(self.run, "interrupted"))
        self.run = Run(uid, word, conversation_id=conversation_id)
        self.count("runs")
        self.conn.send(pb.VoiceAssistantRequest(
            start=True, conversation_id=conversation_id, flags=1,  # HA's VAD ends the speech
            audio_settings=pb.VoiceAssistantAudioSettings(volume_multiplier=1.0),
            wake_word_phrase=phrase))  # fmt: skip

    def frame(self, pcm: bytes) -> None:
        """A microphone frame from `audio.frames.<site>`."""
        run = self.run
        if run is None or not run.streaming:
            return
        run.frames += 1
        if run.frames * 0.02 > self.settings.max_stream_s:
            self._spawn(self._stream_too_long(run))
            return
        if run.ready:
            self._send_audio(run, [pcm])
        else:
            run.held.append(pcm)

    async def _stream_too_long(self, run: Run) -> None:
        """No end of speech from HA in time: stop HA's run (as an ESPHome device does) and
        give the microphone back; HA ends the run with its own error event."""
        if not run.streaming:
            return
        run.error = f"no end of speech within {self.settings.max_stream_s:g} s"
        await self._release(run, run.error)
        if self.conn is not None and self.run is run:
            self.conn.send(api_pb().VoiceAssistantRequest(start=False))

    def _send_audio(self, run: Run, chunks: list[bytes]) -> None:
        pb = api_pb()

        if self.conn is not None and chunks:
            self.conn.send(*(pb.VoiceAssistantAudio(data=c) for c in chunks))

    async def _release(self, run: Run, reason: str) -> None:
        if run.streaming:
            run.streaming = False
            rel = VoiceRelease(self.settings.site, run.uid, reason)
            await self.bus.publish(Topic.VOICE_RELEASE, rel.to_payload(), qos="realtime")

    async def _finish(self, run: Run, error: str) -> None:
        pb = api_pb()

        if error and not run.error:
            run.error = error
        await self._release(run, error or "done")
        if self.run is run:
            self.run = None
            if run.error and self.conn is not None:
                self.conn.send(pb.VoiceAssistantRequest(start=False))
        self.history.append(run.summary())
        del self.history[:-20]

    async def _speak(self, run: Run) -> None:
        """Fetch HA's answer and play it; then tell HA, and listen again if it asked back."""
        pb = api_pb()

        try:
            pcm = await self.fetch(run.tts_url)
            run.mark("tts_fetched")
            await self._play(
                pcm, run.uid, announcement=False, on_start=lambda: run.mark("first_audio")
            )
            run.mark("spoken")
        except (LoomdError, OSError, TimeoutError) as exc:
            self._error("tts_playback", f"homeassistant: TTS {run.tts_url}: {exc}")
            run.error = str(exc)
        if self.conn is not None:
            self.conn.send(pb.VoiceAssistantAnnounceFinished(success=not run.error))
        again = run.continue_conversation and not run.error and self.conn is not None
        await self._finish(run, run.error)
        if again:
            await self.listen_again(run.conversation_id)

    async def listen_again(self, conversation_id: str = "") -> None:
        """Open the microphone with no wake word (a question asked back, start_conversation)."""
        if self.conn is None:
            return
        uid = uuid.uuid4().hex[:12]
        self.start(uid, "", "", conversation_id)
        listen = VoiceListen(self.settings.site, uid)
        await self.bus.publish(Topic.VOICE_LISTEN, listen.to_payload(), qos="realtime")

    async def _announce(self, url: str, pre: str, start_conversation: bool) -> None:
        pb = api_pb()

        self.count("announcements")
        ok = True
        try:
            audio = b"".join([await self.fetch(u) for u in (pre, url) if u])
            if self.player is not None and self.server is not None:
                self.player.set_state(self.server, self.player.ANNOUNCING)
            await self._play(audio, "announce-" + uuid.uuid4().hex[:8], announcement=True)
        except (LoomdError, OSError, TimeoutError) as exc:
            ok = False
            self._error("announce", f"homeassistant: announcement {url}: {exc}")
        finally:
            if self.player is not None and self.server is not None:
                self.player.set_state(self.server, self.player.IDLE)
        if self.conn is not None:
            self.conn.send(pb.VoiceAssistantAnnounceFinished(success=ok))
        if ok and start_conversation:
            await self.listen_again()

    def play_media(self, url: str, announcement: bool) -> None:
        """The media player entity's play_media."""

        async def go() -> None:
            assert self.player is not None and self.server is not None
            self.player.set_state(self.server, self.player.ANNOUNCING if announcement
                                  else self.player.PLAYING)  # fmt: skip
            try:
                await self._play(await self.fetch(url), "media", announcement=announcement)
            finally:
                self.player.set_state(self.server, self.player.IDLE)

        self._spawn(go())

    def stop_media(self) -> None:
        self._spawn(self.bus.publish(Topic.VOICE_STOP, {"site": self.settings.site,
                                                        "reason": "homeassistant"}))  # fmt: skip

    def _timer(self, msg: Any) -> None:
        info = {"id": msg.timer_id, "name": msg.name, "total_s": msg.total_seconds,
                "left_s": msg.seconds_left, "active": msg.is_active,
                "event": msg.event_type}  # fmt: skip
        self.count("timer_events")
        if msg.event_type == TIMER_FINISHED:
            self.timers.pop(msg.timer_id, None)
            text = f"Your {msg.name} timer is done." if msg.name else "Your timer is done."
            say = SayRequest(text, "announcement", self.settings.site)
            self._spawn(self.bus.publish(Topic.VOICE_SAY, say.to_payload()))
        elif msg.event_type == 2:  # cancelled
            self.timers.pop(msg.timer_id, None)
        else:
            self.timers[msg.timer_id] = info

    # -- audio in and out --------------------------------------------------------------------
    async def fetch(self, url: str) -> bytes:
        """HA's media (a TTS answer, an announcement through its ffmpeg proxy) as board PCM."""
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self.settings.media_timeout_s)
        try:
            async with self._http.get(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise LoomdError(f"HTTP {resp.status} for {url}")
                data = await resp.read()
        except aiohttp.ClientError as exc:
            raise LoomdError(f"{url}: {type(exc).__name__}: {exc}") from None
        pcm, rate, channels = wav_pcm(data)
        return await asyncio.to_thread(to_board, pcm, rate, channels)

    async def _play(
        self, pcm: bytes, uid: str, *, announcement: bool, on_start: Any = None
    ) -> PlayDone:
        req = PlayAudio(pcm, self.settings.site, uid, announcement)
        if on_start is not None:
            on_start()
        limit = len(pcm) / 32000 + self.settings.media_timeout_s
        ev = await self.bus.request(Topic.VOICE_PLAY, req.to_payload(), timeout=limit)
        done = PlayDone.from_payload(ev.payload)
        self.count("played" if done.played else "played_cut")
        return done
