"""The voice stages as Wyoming services (the `wyoming` package), on one TCP port: STT
(`Transcribe` + audio -> `Transcript`), TTS (`Synthesize` -> audio) and wake word (`Detect`
+ audio -> `Detection` / `NotDetected`), with `Describe` -> `Info`. So Home Assistant's
Assist (and `wyoming-bench`) can use the board's local models. Off by default."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loomd.messages import ErrorCode

if TYPE_CHECKING:
    from loomd.audio.stages import Stages, Wake

__all__ = ["WyomingServices", "serve"]

log = logging.getLogger("loomd.voice.wyoming")

_TTS_CHUNK = 2048  # bytes of audio per AudioChunk


@dataclass(frozen=True)
class WyomingServices:
    """What the server is given: the voice component's stages (it owns their threads and
    processes), the names it describes them by, and where errors go."""

    stages: Stages
    voice: str  # the Piper voice's file name
    language: str  # what the board hears and speaks ([voice] language)
    words: tuple[str, ...]  # the wake models' names
    threshold: float
    error: Callable[[ErrorCode, str], None]


async def serve(svc: WyomingServices, host: str, port: int) -> Any:
    """Start the server; returns it (call `await server.stop()`)."""
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
    from wyoming.event import Event
    from wyoming.info import (
        AsrModel,
        AsrProgram,
        Attribution,
        Describe,
        Info,
        TtsProgram,
        TtsVoice,
        WakeModel,
        WakeProgram,
    )
    from wyoming.server import AsyncEventHandler, AsyncTcpServer
    from wyoming.tts import Synthesize
    from wyoming.wake import Detect, Detection, NotDetected

    from loomd.audio.worker import WorkerError

    stages = svc.stages
    who = Attribution(name="loomd", url="https://github.com/loomd/loomd")

    def info() -> Info:
        return Info(
            asr=[AsrProgram(name=f"loomd-{stages.stt.engine}", attribution=who, installed=True,
                            description=f"{stages.stt.engine} in loomd", version=None,
                            models=[AsrModel(name=str(stages.stt.path.stem), attribution=who,
                                             installed=True, description=None, version=None,
                                             languages=[stages.stt.language])])],
            tts=[TtsProgram(name=f"loomd-{stages.tts_name}", attribution=who, installed=True,
                            description="Piper in loomd", version=None,
                            voices=[TtsVoice(name=svc.voice.rsplit("/", 1)[-1].removesuffix(
                                ".onnx"), attribution=who, installed=True, description=None,
                                version=None, languages=[svc.language])])],
            wake=[WakeProgram(name="loomd-openwakeword", attribution=who, installed=True,
                              description="openWakeWord in loomd", version=None,
                              models=[WakeModel(name=w, attribution=who, installed=True,
                                                description=None, version=None,
                                                languages=["en"], phrase=w.split("_v")[0]
                                                .replace("_", " "))
                                      for w in svc.words])],
        )  # fmt: skip

    class Handler(AsyncEventHandler):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.mode = ""
            self.audio = bytearray()
            self.convert = AudioChunkConverter(rate=16000, width=2, channels=1)
            self.detector: Wake | None = None
            self.detected = False
            self.t = 0.0

        async def handle_event(self, event: Event) -> bool:
            if Describe.is_type(event.type):
                await self.write_event(info().event())
            elif Transcribe.is_type(event.type):
                self.mode = "stt"
            elif Detect.is_type(event.type):
                self.mode, self.detected, self.t = "wake", False, 0.0
                if self.detector is None:
                    self.detector = await stages.wake(threshold=svc.threshold)
                else:
                    await self.detector.reset()
            elif AudioStart.is_type(event.type):
                self.audio.clear()
            elif AudioChunk.is_type(event.type):
                chunk = self.convert.convert(AudioChunk.from_event(event))
                if self.mode == "wake" and self.detector is not None and not self.detected:
                    self.t += len(chunk.audio) / 32000
                    try:
                        hit = await self.detector.process(chunk.audio, self.t)
                    except WorkerError as exc:  # it restarts; this stream hears no more
                        svc.error(ErrorCode.WAKE_FAILED, f"voice: wyoming wake word: {exc}")
                        self.mode = ""
                        await self.write_event(NotDetected().event())
                        return True
                    if hit is not None:
                        self.detected = True
                        await self.write_event(
                            Detection(name=hit.word, timestamp=int(hit.t * 1000)).event()
                        )
                else:
                    self.audio += chunk.audio
            elif AudioStop.is_type(event.type):
                if self.mode == "stt":
                    try:
                        text = (await stages.stt.transcribe(bytes(self.audio))).text
                    except Exception as exc:
                        svc.error(ErrorCode.WYOMING_STT, f"voice: wyoming STT failed: {exc}")
                        text = ""
                    await self.write_event(Transcript(text=text).event())
                elif self.mode == "wake" and not self.detected:
                    await self.write_event(NotDetected().event())
                self.audio.clear()
                self.mode = ""
            elif Synthesize.is_type(event.type):
                text = Synthesize.from_event(event).text
                try:
                    pcm = await stages.synthesize(text)
                except WorkerError as exc:  # it restarts; this answer is silence
                    svc.error(ErrorCode.TTS_FAILED, f"voice: wyoming TTS: {exc}")
                    pcm = b""
                await self.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                for i in range(0, len(pcm), _TTS_CHUNK):
                    await self.write_event(
                        AudioChunk(
                            rate=16000, width=2, channels=1, audio=pcm[i : i + _TTS_CHUNK]
                        ).event()
                    )
                await self.write_event(AudioStop().event())
            return True

    server = AsyncTcpServer(host, port)
    await server.start(Handler)
    log.info("wyoming services on %s:%d (stt, tts, wake)", host, port)
    return server
