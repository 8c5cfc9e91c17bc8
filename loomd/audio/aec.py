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

from loomd.audio.frames import FRAME_BYTES, FRAME_SAMPLES, RATE
from loomd.errors import LoomdError

__all__ = ["EchoCanceller", "Reference"]

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


class Reference:
    """What the sink played, frame by frame, for the echo canceller: the sink appends each
    frame as it plays; the pipeline takes one per microphone frame (silence when nothing
    plays). The adaptive filter covers a reference that leads the echo by up to its tail."""

    SILENCE = b"\0" * FRAME_BYTES

    def __init__(self, max_lag: int = 2) -> None:
        self.max_lag = max_lag
        self.skipped = 0
        self._q: collections.deque[bytes] = collections.deque(maxlen=50)
        self.idle_frames = 10**9  # mic frames since the last played one
        self.playing_frames = 0  # mic frames since playback started after a quiet spell

    def played(self, frame: bytes) -> None:
        self._q.append(frame)

    def take(self) -> bytes:
        # Keep the reference no more than `max_lag` frames behind the speaker: each time the
        # mic side found it empty (jitter) it fell a frame further behind, and a reference
        # that trails the echo cannot cancel it (measured: the board woke itself 2.8 s into
        # playback without this). Skipping a frame of reference costs a moment of echo.
        while len(self._q) > self.max_lag:
            self._q.popleft()
            self.skipped += 1
        if self._q:
            if not self.active:
                self.playing_frames = 0  # playback starts after a quiet spell
            self.idle_frames = 0
            self.playing_frames += 1
            return self._q.popleft()
        self.idle_frames += 1
        self.playing_frames += 1
        return self.SILENCE

    @property
    def active(self) -> bool:
        """Audio played within the last second (so its echo may still be in the room)."""
        return bool(self._q) or self.idle_frames < 50
