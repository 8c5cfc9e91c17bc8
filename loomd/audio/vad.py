"""Voice activity: a pure segmenter that takes the clock and the speech flag as input.

`Segmenter.push(pcm, t, speech)` never looks at a clock or a model: `t` is the frame's
stream time and `speech` what a classifier (webrtcvad by default, `WebRtcVad`) said about
it. So the rules (pre-roll, hangover, minimum speech, maximum length, no speech at all)
are tested exactly, frame by frame, without audio."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from loomd.audio.frames import FRAME_MS, RATE

__all__ = ["Segment", "Segmenter", "WebRtcVad"]

_EPS = 1e-6  # stream times are sums of 0.02 s steps: compare with float slack


@dataclass(frozen=True)
class Segment:
    pcm: bytes  # pre-roll + speech + up to the hangover, s16le mono 16 kHz
    speech_start: float  # stream time of the first voiced frame
    speech_end: float  # stream time of the end of the last voiced frame
    end: float  # stream time when the segmenter decided
    reason: str  # "hangover" | "max_length" | "no_speech"

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / RATE


class Segmenter:
    """One utterance at a time: `open(t)` starts listening (after the wake word, say);
    `push()` returns a `Segment` once the utterance is over, else None."""

    def __init__(
        self,
        *,
        preroll_ms: int = 300,
        hangover_ms: int = 500,
        min_speech_ms: int = 200,
        max_utterance_s: float = 15.0,
        no_speech_s: float = 5.0,
        frame_ms: int = FRAME_MS,
    ) -> None:
        self.frame_s = frame_ms / 1000
        self.hangover_s = hangover_ms / 1000
        self.min_speech_s = min_speech_ms / 1000
        self.max_utterance_s = max_utterance_s
        self.no_speech_s = no_speech_s
        self._preroll: collections.deque[bytes] = collections.deque(
            maxlen=max(0, preroll_ms // frame_ms)
        )
        self._opened: float | None = None
        self._no_speech_s = no_speech_s
        self._buf: list[bytes] = []
        self._start: float | None = None
        self._last: float = 0.0
        self._voiced = 0.0

    @property
    def in_speech(self) -> bool:
        return self._start is not None

    def open(
        self, t: float, preroll: list[bytes] | None = None, *, no_speech_s: float | None = None
    ) -> None:
        """Start waiting for speech at stream time `t`, with audio heard just before; give up
        after `no_speech_s` (default: the constructor's) without speech."""
        self._opened = t
        self._no_speech_s = self.no_speech_s if no_speech_s is None else no_speech_s
        self._preroll.clear()
        for pcm in preroll or ():
            self._preroll.append(pcm)
        self._buf, self._start, self._voiced = [], None, 0.0

    def push(self, pcm: bytes, t: float, speech: bool) -> Segment | None:
        if self._opened is None:
            self.open(t)
        assert self._opened is not None
        if self._start is None:
            if not speech:
                self._preroll.append(pcm)
                if t + self.frame_s - self._opened >= self._no_speech_s - _EPS:
                    return self._finish(t, "no_speech")
                return None
            self._start = t
            self._buf = [*self._preroll, pcm]
            self._last = t + self.frame_s
            self._voiced = self.frame_s
            return None
        self._buf.append(pcm)
        if speech:
            self._last = t + self.frame_s
            self._voiced += self.frame_s
        end = t + self.frame_s
        if end - self._start >= self.max_utterance_s - _EPS:
            return self._finish(end, "max_length")
        if end - self._last >= self.hangover_s - _EPS:
            if self._voiced < self.min_speech_s - _EPS:  # a click or a cough: keep waiting
                self._preroll.clear()
                self._preroll.extend(self._buf[-(self._preroll.maxlen or 1) :])
                self._buf, self._start, self._voiced = [], None, 0.0
                return None
            return self._finish(end, "hangover")
        return None

    def _finish(self, end: float, reason: str) -> Segment:
        start = self._start if self._start is not None else end
        seg = Segment(b"".join(self._buf), start, self._last if self._start else end, end, reason)
        self._opened, self._buf, self._start, self._voiced = None, [], None, 0.0
        self._preroll.clear()
        return seg


class WebRtcVad:
    """The default classifier: webrtcvad (the `webrtcvad-wheels` distribution)."""

    def __init__(self, mode: int = 2) -> None:
        import webrtcvad  # type: ignore[import-untyped]

        self._vad = webrtcvad.Vad(mode)

    def __call__(self, pcm: bytes) -> bool:
        return bool(self._vad.is_speech(pcm, RATE))
