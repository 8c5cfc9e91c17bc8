"""The voice workers' memory cuts keep the models' behaviour: openWakeWord without scipy
and scikit-learn, detectors sharing lean ONNX sessions, a reset that reuses its filler,
Piper resampled through soxr (docs/design/voice-memory.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loomd.audio.io import read_wav
from tests.audio.conftest import say_wav

pytestmark = pytest.mark.models

HEY = ("openwakeword/hey_jarvis_v0.1.onnx",)


def peak(det: object, pcm: bytes) -> float:
    best = 0.0
    for i in range(0, len(pcm) - 2560, 2560):
        det.process(pcm[i : i + 2560], i / 32000)  # type: ignore[attr-defined]
        best = max(best, det.last)  # type: ignore[attr-defined]
    return best


def test_openwakeword_loads_without_scipy_or_sklearn(models: Path) -> None:
    code = (
        "import sys\n"
        "from loomd.audio.wake import WakeDetector\n"
        f"WakeDetector({str(models)!r}, {HEY!r})\n"
        "print(sorted(m for m in ('scipy', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


def test_detectors_share_sessions_and_still_wake(models: Path, speech_dir: Path) -> None:
    from loomd.audio.wake import WakeDetector

    pcm = read_wav(say_wav("hey jarvis", speech_dir / "lean-hey.wav"))
    a = WakeDetector(str(models), HEY)
    b = WakeDetector(str(models), HEY)
    pa, pb = a._model.preprocessor, b._model.preprocessor
    assert pa.melspec_model is pb.melspec_model and pa.embedding_model is pb.embedding_model
    assert a._model.models["hey_jarvis_v0.1"] is b._model.models["hey_jarvis_v0.1"]
    assert peak(a, pcm) >= 0.9
    # A reset forgets the word (it does not fire on what it heard before) ...
    a.reset()
    filler = pa.feature_buffer.copy()
    assert peak(a, b"\0" * 32000) < 0.1
    # ... reuses the same filler the next time (no fresh noise to embed) ...
    a.reset()
    assert np.array_equal(pa.feature_buffer, filler)
    assert "_get_embeddings" not in vars(pa)  # the class's own method again
    # ... and hears the word again after it, as a fresh detector does.
    assert abs(peak(a, pcm) - peak(b, pcm)) < 0.05


def test_piper_resampled_to_16k(models: Path) -> None:
    from loomd.audio.tts import PiperTts, resample

    pcm = PiperTts(str(models), "piper/en_US-joe-medium.onnx").synthesize("The lights are on.")
    assert 0.5 < len(pcm) / 32000 < 3.0
    tone = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 8000).astype(np.int16)
    out = np.frombuffer(resample(tone.tobytes(), 22050), np.int16)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert int(np.argmax(spectrum)) == 440  # 1 Hz bins over one second
