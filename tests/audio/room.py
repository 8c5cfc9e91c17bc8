"""A fake room for the real daemon: what the board plays (`audio.out.<site>`) comes back to
its microphone (`audio.in.<site>`) after a delay, attenuated, over a noise floor, at real-time
pace; a "person" can speak into it too. Only the hardware edge is fake."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import numpy as np

from loomd.audio.ducking import Volume
from loomd.audio.frames import FRAME_BYTES


class FakeRoom:
    def __init__(
        self, bus: Any, *, site: str = "local", delay_ms: int = 60, gain_db: float = -6.0
    ) -> None:
        self.bus, self.site = bus, site
        self.delay_s = delay_ms / 1000
        self.gain = 10 ** (gain_db / 20)
        self._played: collections.deque[tuple[float, bytes]] = collections.deque()
        self._voice = collections.deque[bytes]()
        self._rng = np.random.default_rng(1)
        self.frames_out = 0
        self.echo_frames = 0
        self.tap: list[tuple[float, bytes]] | None = None  # (time, frame) sent to the mic
        self.last_played = 0.0  # when the board's last frame reached the room

    def speak(self, pcm: bytes) -> None:
        """A person in the room says `pcm` (16 kHz s16), starting now."""
        for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            self._voice.append(pcm[i : i + FRAME_BYTES])

    async def _listen(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(f"audio.out.{self.site}", "realtime") as sub:
            await sub.ready()
            ready.set()
            async for ev in sub:
                self.last_played = time.monotonic()
                self._played.append((self.last_played, ev.payload))

    async def run(self, stop: asyncio.Event) -> None:
        ready = asyncio.Event()
        listener = asyncio.create_task(self._listen(ready))
        await ready.wait()
        began = time.monotonic()
        n = 0
        try:
            while not stop.is_set():
                n += 1
                await asyncio.sleep(max(0.0, began + n * 0.02 - time.monotonic()))
                mic = self._rng.normal(0, 30, FRAME_BYTES // 2)
                due = time.monotonic() - self.delay_s
                if self._played and self._played[0][0] <= due:
                    echo = np.frombuffer(self._played.popleft()[1], np.int16)
                    mic += echo.astype(np.float64) * self.gain
                    self.echo_frames += 1
                if self._voice:
                    mic += np.frombuffer(self._voice.popleft(), np.int16).astype(np.float64)
                frame = np.clip(mic, -32768, 32767).astype(np.int16).tobytes()
                await self.bus.publish(f"audio.in.{self.site}", frame, qos="realtime")
                if self.tap is not None:
                    self.tap.append((time.monotonic(), frame))
                self.frames_out += 1
        finally:
            listener.cancel()


class SampleRoom:
    """A sample-accurate fake room, offline: the speaker (`speaker`, a `Sink` into the room)
    and the microphone (`mic`, a `Source` fed from the room) share one sample clock, which
    the microphone advances as its frames are read (as fast as the reader reads).

    Each clip reaches the room `latency` after `play()` is called, a new random latency per
    clip at sample resolution (a sink's buffer fill differs each time it starts), and the
    speaker stamps every chunk with that play position (what PortAudio's DAC time gives on a
    board). The echo comes back `delay_ms` later, `gain_db` down; with `skew_ppm` the echo
    path also drifts against the clock by that much (a DAC and an ADC on separate crystals),
    which no stamp tells. Frames reach the reader `jitter_ms` late at most (random), as a
    device or the bus delivers them. `speak(pcm, at_s)` puts a person's voice in the room."""

    def __init__(
        self,
        seconds: float,
        *,
        delay_ms: float = 60.0,
        gain_db: float = -6.0,
        noise: float = 30.0,
        latency_ms: tuple[float, float] = (5.0, 45.0),
        skew_ppm: float = 0.0,
        jitter_ms: float = 8.0,
        seed: int = 0,
    ) -> None:
        self.rate = 16000
        self.n = int(seconds * self.rate)
        self.now = 0  # samples the microphone has captured
        self._rng = np.random.default_rng(seed)
        self.latency = (latency_ms[0] * 16, latency_ms[1] * 16)
        self.delay, self.gain = delay_ms * 16, 10 ** (gain_db / 20)
        self.skew, self.jitter_s = skew_ppm * 1e-6, jitter_ms / 1000
        self.out = np.zeros(self.n, np.float64)  # what the speaker put into the room
        self.voice = np.zeros(self.n, np.float64)
        self.noise = self._rng.normal(0, noise, self.n)
        self.starts: list[int] = []  # sample where each clip reached the room
        self.mic = _RoomMic(self)
        self.speaker = _RoomSpeaker(self)

    def seconds(self, sample: float) -> float:
        """The clock's time of `sample` (a stand-in for time.monotonic on this clock)."""
        return 1000.0 + sample / self.rate

    def speak(self, pcm: bytes, at_s: float) -> None:
        x = np.frombuffer(pcm, np.int16).astype(np.float64)
        a = int(at_s * self.rate)
        self.voice[a : a + len(x)] += x[: max(0, self.n - a)]

    def capture(self, start: int, n: int) -> bytes:
        """The microphone's samples [start, start + n): noise, the person, the echo."""
        idx = np.arange(start, start + n)
        src = np.round(idx - self.delay - idx * self.skew).astype(np.int64)
        ok = (src >= 0) & (src < self.n)
        echo = np.zeros(n)
        echo[ok] = self.out[src[ok]] * self.gain
        x = self.noise[start : start + n] + self.voice[start : start + n] + echo
        return bytes(np.clip(x, -32768, 32767).astype(np.int16).tobytes())

    def advance(self, n: int) -> None:
        self.now += n
        self.speaker.tick()


class _RoomMic:
    def __init__(self, room: SampleRoom) -> None:
        self.room = room

    async def frames(self) -> Any:
        from loomd.audio.frames import FRAME_SAMPLES, Frame

        room = self.room
        while room.now + FRAME_SAMPLES <= room.n:
            start = room.now
            room.advance(FRAME_SAMPLES)  # the speaker writes what plays up to here first
            pcm = room.capture(start, FRAME_SAMPLES)
            at = room.seconds(room.now) + float(room._rng.uniform(0, room.jitter_s))
            yield Frame(pcm, start / room.rate, at)
            await asyncio.sleep(0)  # the speaker's side runs between frames


class _RoomSpeaker:
    """A `Sink` into the room: chunk i of a clip is written (and stamped) once the clock is
    within a chunk of its play position, as a device's buffer takes it."""

    def __init__(self, room: SampleRoom) -> None:
        self.room = room
        self.listeners: list[Any] = []
        self.clips: list[bytes] = []
        self.volume = Volume()
        self._clip: dict[str, Any] | None = None

    async def play(self, pcm: bytes) -> bool:
        from loomd.audio.io import split_frames

        room = self.room
        start = room.now + int(room._rng.uniform(*room.latency))
        room.starts.append(start)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._clip = {"chunks": split_frames(pcm), "start": start, "next": 0, "done": done}
        self.tick()
        return await done

    def tick(self) -> None:
        clip, room = self._clip, self.room
        if clip is None:
            return
        chunks, start = clip["chunks"], clip["start"]
        while clip["next"] < len(chunks) and start + clip["next"] * 320 < room.now + 320:
            i = clip["next"]
            chunk = chunks[i] = self.volume.apply(chunks[i])
            a = start + i * 320
            x = np.frombuffer(chunk, np.int16)[: max(0, room.n - a)]
            room.out[a : a + len(x)] += x
            for listen in self.listeners:
                listen(chunk, room.seconds(start), i * 320)
            clip["next"] += 1
        if clip["next"] == len(chunks) and room.now >= start + len(chunks) * 320:
            self._finish(True)

    def _finish(self, whole: bool) -> None:
        clip, self._clip = self._clip, None
        if clip is not None and not clip["done"].done():
            played = clip["chunks"][: clip["next"]]
            self.clips.append(b"".join(played))
            clip["done"].set_result(whole)

    def stop(self) -> None:
        """Cut playback: what was queued past the device's buffer (a chunk) never plays."""
        clip = self._clip
        if clip is None:
            return
        room, cut = self.room, self.room.now + 320
        end = clip["start"] + clip["next"] * 320
        if end > cut:
            room.out[cut:end] = 0
        self._finish(False)


class FifoReference:
    """The reference this timeline replaced, kept as the control: the sink appends each
    chunk as it plays, the pipeline takes one per microphone frame (silence when empty),
    never more than `max_lag` chunks behind. Each clip meets the microphone's 20 ms tick
    at a new phase, so the echo's lag behind it changes with every sentence."""

    def __init__(self, max_lag: int = 2) -> None:
        self.max_lag = max_lag
        self._q: collections.deque[bytes] = collections.deque(maxlen=50)
        self._idle = 10**9

    def played(self, chunk: bytes, clip_t0: float, offset: int) -> None:
        self._q.append(chunk)

    def heard(self, t: float, at: float) -> None:
        while len(self._q) > self.max_lag:
            self._q.popleft()

    def active(self, t: float) -> bool:
        return bool(self._q) or self._idle < 50

    def read(self, t: float) -> bytes:
        if self._q:
            self._idle = 0
            return self._q.popleft()
        self._idle += 1
        return b"\0" * FRAME_BYTES


async def wake_over_reply(
    room: SampleRoom,
    clips: list[bytes],
    wake: Any,
    *,
    fifo: bool = False,
    power: list[tuple[float, float]] | None = None,
    lead_s: float = 1.0,
    tap: list[bytes] | None = None,
    on_hop: Any = None,
) -> list[tuple[float, float]]:
    """The board says `clips` one after another (a reply, sentence by sentence) into the
    room while the pipeline's echo path runs on the microphone as loomd's pipeline runs it:
    the reference (the `Timeline`, or the FIFO control) read for each frame,
    from `lead_s` on (the room's noise before the board speaks), libspeexdsp's
    canceller while the board's audio may echo, the wake word (a `WakeDetector`) on 80 ms
    hops. Returns (stream time, peak score) per hop; `power` gets (microphone, after the
    canceller) mean square per frame, for the echo reduction; `tap` every frame after the
    canceller; `on_hop(t_end, score)` is called after each hop (it may duck or stop the
    room's speaker: the board stops speaking once a clip is stopped)."""
    from loomd.audio.aec import EchoCanceller, Timeline

    ref: Any = FifoReference() if fifo else Timeline()
    room.speaker.listeners.append(ref.played)
    aec = EchoCanceller(200)
    wake.reset()

    async def speak() -> None:
        for clip in clips:
            if not await room.speaker.play(clip):
                return

    board: asyncio.Task[None] | None = None
    out: list[tuple[float, float]] = []
    buf: list[bytes] = []
    try:
        async for frame in room.mic.frames():
            if board is None and frame.t >= lead_s:
                board = asyncio.create_task(speak())
            ref.heard(frame.t, frame.at)
            echo, played = ref.active(frame.t), ref.read(frame.t)
            pcm = aec.process(frame.pcm, played) if echo else frame.pcm
            if power is not None:
                power.append((_ms(frame.pcm), _ms(pcm)))
            if tap is not None:
                tap.append(pcm)
            buf.append(pcm)
            if len(buf) == 4:
                t_end = frame.t + 0.02
                wake.process(b"".join(buf), t_end, threshold=1.01)
                out.append((t_end, float(wake.last)))
                buf = []
                if on_hop is not None:
                    on_hop(t_end, float(wake.last))
    finally:
        if board is not None:
            board.cancel()
        aec.close()
        room.speaker.listeners.remove(ref.played)
    return out


def _ms(pcm: bytes) -> float:
    return float(np.mean(np.frombuffer(pcm, np.int16).astype(np.float64) ** 2))
