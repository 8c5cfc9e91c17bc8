"""The noise front end: webrtc-noise-gain (WebRTC's noise suppressor and automatic gain) on
each microphone frame, after echo cancellation and before the wake word and the VAD; the
utterance for STT takes its output only with `[voice.frontend] stt = true` (whisper heard
the suppressed audio worse in bench/assist.py).

The library works on 10 ms (160 samples); a pipeline frame is 20 ms, so each goes through as
two halves, in order (the suppressor keeps its noise estimate across calls). Why the default
is what it is: docs/design/voice.md, "Noise front end"."""

from __future__ import annotations

from typing import Any

from loomd.audio.frames import FRAME_BYTES
from loomd.errors import LoomdError

__all__ = ["FrontEnd"]

_HALF = FRAME_BYTES // 2  # 10 ms: what webrtc-noise-gain takes per call


class FrontEnd:
    """`process(pcm)` -> the 20 ms frame with noise suppressed (level 1-4) and, with
    `auto_gain_dbfs` > 0, its level brought towards that target (dB below full scale)."""

    def __init__(self, noise_suppression: int, auto_gain_dbfs: int = 0) -> None:
        if not 0 <= noise_suppression <= 4:
            raise ValueError(f"noise_suppression must be 0 to 4, not {noise_suppression}")
        if not 0 <= auto_gain_dbfs <= 31:
            raise ValueError(f"auto_gain_dbfs must be 0 to 31, not {auto_gain_dbfs}")
        try:
            from webrtc_noise_gain import AudioProcessor  # type: ignore[import-untyped]
        except ImportError:
            raise LoomdError(
                "webrtc-noise-gain is missing (the noise front end): "
                "pip install 'loomd[voice]' or pip install webrtc-noise-gain"
            ) from None
        self.noise_suppression = noise_suppression
        self.auto_gain_dbfs = auto_gain_dbfs
        self._apm: Any = AudioProcessor(auto_gain_dbfs, noise_suppression)

    def process(self, pcm: bytes) -> bytes:
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"a frame is {FRAME_BYTES} bytes, not {len(pcm)}")
        first = self._apm.Process10ms(pcm[:_HALF]).audio
        return bytes(first) + bytes(self._apm.Process10ms(pcm[_HALF:]).audio)
