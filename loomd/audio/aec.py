"""Acoustic echo cancellation against what the board itself plays: libspeexdsp via ctypes.

Debian's `libspeexdsp1` is enough (no compiler, no -dev package): five functions are bound
here. The linear echo canceller plus speex's residual echo suppressor (the preprocessor
tied to the echo state) removed ~35 dB of echo once converged (~1 s) in the facts file's
measurement. Before it converges, the board's own "hey jarvis" still scores ~0.99 (measured:
Piper saying it at the start of playback, 60 ms echo at -6 dB), so the pipeline ignores the
wake word for the first `converge_ms` of each playback and raises its threshold for the rest
(gating); it gates the wake word off during playback if this library is missing."""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
from typing import Any

from loomd.audio.frames import FRAME_SAMPLES, RATE
from loomd.errors import LoomdError

__all__ = ["EchoCanceller", "Timeline"]

_SET_SAMPLING_RATE = 24  # SPEEX_ECHO_SET_SAMPLING_RATE
_SET_ECHO_STATE = 24  # SPEEX_PREPROCESS_SET_ECHO_STATE
_LIB: Any = None


def _lib() -> Any:
    global _LIB
    if _LIB is None:
        name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise LoomdError(
                "libspeexdsp is missing (echo cancellation): apt install libspeexdsp1"
            ) from None
        p = ctypes.c_void_p
        i16 = ctypes.POINTER(ctypes.c_int16)
        lib.speex_echo_state_init.restype = p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_cancellation.argtypes = [p, i16, i16, i16]
        lib.speex_echo_ctl.argtypes = [p, ctypes.c_int, p]
        lib.speex_echo_state_destroy.argtypes = [p]
        lib.speex_preprocess_state_init.restype = p
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_ctl.argtypes = [p, ctypes.c_int, p]
        lib.speex_preprocess_run.argtypes = [p, i16]
        lib.speex_preprocess_state_destroy.argtypes = [p]
        _LIB = lib
    return _LIB


class EchoCanceller:
    """One 20 ms frame at a time: `process(mic, played)` -> mic with the echo removed."""

    def __init__(self, tail_ms: int = 200) -> None:
        lib = self._lib = _lib()
        self._echo = lib.speex_echo_state_init(FRAME_SAMPLES, RATE * tail_ms // 1000)
        rate = ctypes.c_int(RATE)
        lib.speex_echo_ctl(self._echo, _SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre = lib.speex_preprocess_state_init(FRAME_SAMPLES, RATE)
        lib.speex_preprocess_ctl(self._pre, _SET_ECHO_STATE, self._echo)
        self._out = (ctypes.c_int16 * FRAME_SAMPLES)()

    def process(self, mic: bytes, played: bytes) -> bytes:
        i16 = ctypes.POINTER(ctypes.c_int16)
        rec = (ctypes.c_int16 * FRAME_SAMPLES).from_buffer_copy(mic)
        ref = (ctypes.c_int16 * FRAME_SAMPLES).from_buffer_copy(played)
        self._lib.speex_echo_cancellation(
            self._echo, ctypes.cast(rec, i16), ctypes.cast(ref, i16), self._out
        )
        self._lib.speex_preprocess_run(self._pre, self._out)
        return bytes(self._out)

    def close(self) -> None:
        if self._echo:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = self._pre = None

    def __del__(self) -> None:
        self.close()


class Timeline:
    """What the board played, sample by sample, on the microphone's sample clock: the echo
    canceller's reference. Sinks stamp every chunk with its play position (`played(chunk,
    clip_t0, offset)`: the clip's first sample reaches the DAC at monotonic `clip_t0`; this
    chunk starts `offset` samples into the clip); the pipeline tells the timeline each
    microphone frame it hears (`heard`) and reads what played over exactly that frame's
    samples (`read`). A clip is anchored once, at its first sample; every later sample
    follows by count, so no sentence re-anchors against the microphone's 20 ms tick (the
    FIFO this replaces did, 3-5 times a reply, and the canceller lost the echo each time).

    The monotonic -> microphone sample mapping is the smallest delivery delay seen over a
    window of frames (`at` minus the end of the frame's samples): the frames that arrived
    fastest tell where the sample clock is; a late frame does not move it."""

    def __init__(self, seconds: float = 4.0, window_frames: int = 1500) -> None:
        import numpy as np

        self._np = np
        self._n = int(seconds * RATE)
        self._buf = np.zeros(self._n, dtype=np.int16)
        self._hi = 0  # samples below this were written (or are silence)
        self._window = window_frames
        self._delays: collections.deque[tuple[int, float]] = collections.deque()
        self._frame = 0
        self._last_t = -1e9
        self._clip_t0: float | None = None
        self._clip_at = 0
        self.clips = 0  # clips anchored (one anchor per clip: the count a reply re-anchors)
        self.unplaced = 0  # chunks played before any microphone frame gave the clock
        self._run_start = 0  # first sample of the current stretch of playback
        self._last_end = -(10**12)  # end of the last sample played

    # -- the microphone side ------------------------------------------------------------------
    def heard(self, t: float, at: float) -> None:
        """A microphone frame whose first sample is at stream time `t` (seconds on the
        microphone's sample clock) reached the pipeline at monotonic `at`."""
        if not self._last_t <= t <= self._last_t + 2.0:  # a new stream: forget the old one
            self._delays.clear()
            self._buf[:] = 0
            self._hi, self._clip_t0, self._last_end = 0, None, -(10**12)
        self._last_t = t
        delay = at - (t + FRAME_SAMPLES / RATE)
        q = self._delays
        while q and q[-1][1] >= delay:
            q.pop()
        q.append((self._frame, delay))
        while q[0][0] <= self._frame - self._window:
            q.popleft()
        self._frame += 1

    def sample_at(self, monotonic: float) -> int | None:
        """The microphone sample that is captured at `monotonic` (None before any frame)."""
        if not self._delays:
            return None
        return round((monotonic - self._delays[0][1]) * RATE)

    # -- the speaker side ---------------------------------------------------------------------
    def played(self, chunk: bytes, clip_t0: float, offset: int) -> None:
        """A sink listener: `chunk` plays `offset` samples after the clip's first sample,
        which reaches the DAC at monotonic `clip_t0`."""
        if clip_t0 != self._clip_t0:
            at = self.sample_at(clip_t0)
            if at is None:
                self.unplaced += 1
                return
            self._clip_t0, self._clip_at = clip_t0, at
            self.clips += 1
        start = self._clip_at + offset
        x = self._np.frombuffer(chunk, dtype=self._np.int16)
        end = start + len(x)
        if start > self._last_end + RATE:  # playback after a quiet spell
            self._run_start = start
        self._last_end = max(self._last_end, end)
        if end <= self._hi - self._n:
            return  # too old to be read
        if end > self._hi:  # clear what wrapped since the last write (silence, not old audio)
            lo = max(self._hi, end - self._n)
            self._put(lo, self._np.zeros(end - lo, dtype=self._np.int16))
            self._hi = end
        self._put(start, x)

    def _put(self, start: int, x: Any) -> None:
        skip = max(0, self._hi - self._n - start)
        x, start = x[skip:], start + skip
        i = start % self._n
        first = min(len(x), self._n - i)
        self._buf[i : i + first] = x[:first]
        self._buf[: len(x) - first] = x[first:]

    # -- reading ------------------------------------------------------------------------------
    def read(self, t: float, n: int = FRAME_SAMPLES) -> bytes:
        """What played over the `n` samples from stream time `t` (silence where nothing did)."""
        s = round(t * RATE)
        out = self._np.zeros(n, dtype=self._np.int16)
        lo, hi = max(s, self._hi - self._n), min(s + n, self._hi)
        if hi > lo:
            idx = self._np.arange(lo, hi) % self._n
            out[lo - s : hi - s] = self._buf[idx]
        return bytes(out.tobytes())

    def active(self, t: float) -> bool:
        """Audio played within the second before stream time `t` (its echo may still be in
        the room), or plays now."""
        return round(t * RATE) < self._last_end + RATE

    def playing_ms(self, t: float) -> float:
        """How long the current stretch of playback has been playing at stream time `t`."""
        return max(0.0, (round(t * RATE) - self._run_start) * 1000 / RATE)
