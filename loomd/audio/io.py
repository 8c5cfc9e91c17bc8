"""Sources and sinks: the hardware edges and their stand-ins, behind two narrow interfaces.

A `Source` yields 20 ms frames (`Frame`); a `Sink` plays 16 kHz s16 audio and can be cut off
(`stop()`, for barge-in). The microphone and speaker (PyAudio) are used on boards; tests and
`loomctl voice test` use the WAV file, the fake mic (a WAV fed at real-time pace) and the
buffer sink, through the same interfaces."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from loomd.audio.ducking import Volume
from loomd.audio.frames import FRAME_BYTES, FRAME_MS, FRAME_SAMPLES, RATE, Frame
from loomd.errors import LoomdError

__all__ = [
    "BufferSink",
    "BusSink",
    "BusSource",
    "PlayListener",
    "PyAudioMic",
    "PyAudioSpeaker",
    "Sink",
    "Source",
    "WavSink",
    "WavSource",
    "read_wav",
    "write_wav",
]


class Source(Protocol):
    def frames(self) -> AsyncIterator[Frame]: ...


# A sink calls each listener with every 20 ms chunk it plays, stamped with its play
# position: `listen(chunk, clip_t0, offset)`, the clip's first sample reaching the DAC at
# monotonic `clip_t0` and this chunk `offset` samples after it (the echo reference).
PlayListener = Callable[[bytes, float, int], None]


class Sink(Protocol):
    listeners: list[PlayListener]
    volume: Volume  # each chunk is scaled by it as it plays (ducking a barge-in candidate)

    async def play(self, pcm: bytes) -> bool:
        """Play 16 kHz s16 audio; True if it played to the end, False if stopped."""
        ...

    def stop(self) -> None: ...


def read_wav(path: str | Path) -> bytes:
    """A WAV file as 16 kHz mono s16le (mixed down and resampled if it is not)."""
    import numpy as np

    from loomd.audio.tts import resample

    try:
        with wave.open(str(path)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise LoomdError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise LoomdError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is read")
    if channels > 1:
        x = np.frombuffer(data, dtype=np.int16).reshape(-1, channels).mean(axis=1)
        data = x.astype(np.int16).tobytes()
    return resample(data, rate)


def write_wav(path: str | Path, pcm: bytes, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def split_frames(pcm: bytes) -> list[bytes]:
    """20 ms frames; the last one padded with silence."""
    if len(pcm) % FRAME_BYTES:
        pcm += b"\0" * (FRAME_BYTES - len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


class WavSource:
    """Frames from a WAV file; `realtime=True` paces them like a microphone (the fake mic)."""

    def __init__(self, path: str | Path, *, realtime: bool = False, tail_s: float = 1.0) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.tail_s = tail_s  # silence after the file, so an utterance at the end closes

    async def frames(self) -> AsyncIterator[Frame]:
        pcm = await asyncio.to_thread(read_wav, self.path)
        pcm += b"\0" * (int(self.tail_s * RATE) * 2)
        began = time.monotonic()
        for i, chunk in enumerate(split_frames(pcm)):
            t = i * FRAME_MS / 1000
            if self.realtime:
                delay = began + t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 50 == 0:
                await asyncio.sleep(0)  # let the rest of the loop run
            yield Frame(chunk, t, time.monotonic())


class BusSource:
    """Frames published on `audio.in.<site>` (raw s16le bytes, any multiple of 2) by a
    satellite or a peer; realtime QoS, so a slow reader gets fresh audio."""

    def __init__(self, bus: Any, site: str) -> None:
        self.bus, self.site = bus, site

    async def frames(self) -> AsyncIterator[Frame]:
        pending = b""
        samples = 0
        async with self.bus.subscribe(f"audio.in.{self.site}", "realtime") as sub:
            async for ev in sub:
                if not isinstance(ev.payload, bytes):
                    continue
                pending += ev.payload
                while len(pending) >= FRAME_BYTES:
                    chunk, pending = pending[:FRAME_BYTES], pending[FRAME_BYTES:]
                    yield Frame(chunk, samples / RATE, time.monotonic())
                    samples += FRAME_SAMPLES


_COUNT_DEVICES = """
import sys
import pyaudio
pa = pyaudio.PyAudio()
ins = outs = 0
for i in range(pa.get_device_count()):
    info = pa.get_device_info_by_index(i)
    if sys.argv[1].lower() in str(info.get("name", "")).lower():
        ins += info.get("maxInputChannels", 0) > 0
        outs += info.get("maxOutputChannels", 0) > 0
pa.terminate()
print(ins, outs)
"""


def count_devices(name: str = "") -> tuple[int, int]:
    """Input and output devices PortAudio sees (name: a substring to match), (0, 0) without
    PyAudio: what `source = "auto"` and `sink = "auto"` choose by. Asked in a child
    process: PortAudio's probe of ALSA and JACK prints dozens of lines on stderr (kept out
    of the journal), and a broken sound stack cannot take the daemon down with it."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _COUNT_DEVICES, name],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0, 0


class PyAudioMic:
    """The board's microphone (PyAudio), chosen by a device-name substring; 16 kHz mono s16.
    Tested on a board by hw-tests/mic.py: there is no sound device in CI."""

    def __init__(self, device: str = "") -> None:
        self.device = device

    def _open(self) -> tuple[Any, Any]:
        import pyaudio  # type: ignore[import-untyped]

        pa = pyaudio.PyAudio()
        index = None
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if (
                info.get("maxInputChannels", 0) > 0
                and self.device.lower() in str(info.get("name", "")).lower()
            ):
                index = i
                break
        if index is None:
            pa.terminate()
            want = f" matching {self.device!r}" if self.device else ""
            raise LoomdError(f"no audio input device{want} (PyAudio found none)")
        stream = pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=RATE,
            input=True,
            input_device_index=index,
            frames_per_buffer=FRAME_SAMPLES,
        )
        return pa, stream

    async def frames(self) -> AsyncIterator[Frame]:
        pa, stream = await asyncio.to_thread(self._open)
        samples = 0  # the stream clock counts samples, as for every source
        try:
            while True:
                chunk = await asyncio.to_thread(stream.read, FRAME_SAMPLES, False)
                yield Frame(chunk, samples / RATE, time.monotonic())
                samples += FRAME_SAMPLES
        finally:
            stream.close()
            pa.terminate()


class BufferSink:
    """Audio kept in memory (`audio`); `realtime=True` takes as long as a speaker would, so
    barge-in and echo can be tested. `listeners` get each frame as it "plays" (a fake room)."""

    def __init__(self, *, realtime: bool = False) -> None:
        self.realtime = realtime
        self.audio = bytearray()
        self.clips: list[bytes] = []
        self._stop = asyncio.Event()
        self.listeners: list[PlayListener] = []
        self.volume = Volume()

    async def play(self, pcm: bytes) -> bool:
        self._stop.clear()
        played = bytearray()
        began = time.monotonic()  # chunk i plays at began + i * 20 ms: its schedule
        for i, chunk in enumerate(split_frames(pcm)):
            if self._stop.is_set():
                break
            if self.realtime:
                delay = began + i * FRAME_MS / 1000 - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                    if self._stop.is_set():
                        break
            chunk = self.volume.apply(chunk)
            played += chunk
            for listen in self.listeners:
                listen(chunk, began, i * FRAME_SAMPLES)
        self.audio += played
        self.clips.append(bytes(played))
        return not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


class WavSink(BufferSink):
    """Each utterance spoken goes to `<dir>/say-<n>.wav`."""

    def __init__(self, directory: str | Path) -> None:
        super().__init__()
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    async def play(self, pcm: bytes) -> bool:
        done = await super().play(pcm)
        self.count += 1
        await asyncio.to_thread(write_wav, self.dir / f"say-{self.count}.wav", self.clips[-1])
        self.audio.clear()
        return done


class BusSink(BufferSink):
    """Audio published on `audio.out.<site>` as 20 ms realtime frames, paced like a speaker
    (a satellite plays them)."""

    def __init__(self, bus: Any, site: str) -> None:
        super().__init__(realtime=True)
        self.bus, self.topic = bus, f"audio.out.{site}"
        self.listeners.append(self._send)

    def _send(self, chunk: bytes, clip_t0: float, offset: int) -> None:
        asyncio.get_running_loop().create_task(self.bus.publish(self.topic, chunk, qos="realtime"))

    async def play(self, pcm: bytes) -> bool:
        done = await super().play(pcm)
        self.audio.clear()
        return done


class PyAudioSpeaker:
    """The board's speaker (PyAudio). Tested on a board by hw-tests/speaker.py."""

    def __init__(self, device: str = "") -> None:
        self.device = device
        self._stop = False
        self.listeners: list[PlayListener] = []  # each frame as it is written (the echo reference)
        self.volume = Volume()

    async def play(self, pcm: bytes) -> bool:
        import pyaudio

        def run() -> bool:
            pa = pyaudio.PyAudio()
            try:
                stream = pa.open(format=pyaudio.paInt16, channels=1, rate=RATE, output=True)
            except OSError as exc:
                pa.terminate()
                raise LoomdError(f"no audio output device ({exc})") from None
            try:
                # The clip's first sample reaches the DAC one output latency after the
                # first write; every later sample follows by count (one anchor per clip).
                began = time.monotonic() + float(stream.get_output_latency())
                for i, chunk in enumerate(split_frames(pcm)):
                    if self._stop:
                        return False
                    chunk = self.volume.apply(chunk)
                    stream.write(chunk)
                    for listen in self.listeners:
                        listen(chunk, began, i * FRAME_SAMPLES)
                return True
            finally:
                stream.close()
                pa.terminate()

        self._stop = False
        return await asyncio.to_thread(run)

    def stop(self) -> None:
        self._stop = True
