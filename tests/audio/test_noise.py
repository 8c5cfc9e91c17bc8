"""End of speech in TV noise, on real audio: espeak-ng commands mixed into TV-like noise
(other voices and music-like chords, bench/tvnoise.py) end on the hangover with the default
rule and each VAD, where the VAD alone runs to the cap; and on the real daemon."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import pytest

from bench.tvnoise import espeak_pcm, mix
from loomd.audio.frames import FRAME_BYTES
from loomd.audio.settings import VadSettings
from loomd.audio.vad import VADS, Segment, Segmenter, make_vad
from loomd.errors import LoomdError
from tests.audio.conftest import voice_toml
from tests.conftest import LoomdProcess, loomctl

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox make the test speech",
)
CAP_S = 8.0


def cut(pcm: bytes, engine: str, level_drop_db: float) -> Segment | None:
    v = VadSettings()
    try:
        vad = make_vad(engine, mode=v.mode, threshold=v.threshold)
    except LoomdError as exc:
        pytest.skip(str(exc))
    seg = Segmenter(preroll_ms=v.preroll_ms, hangover_ms=v.hangover_ms,
                    min_speech_ms=v.min_speech_ms, max_utterance_s=CAP_S, no_speech_s=CAP_S,
                    level_drop_db=level_drop_db)  # fmt: skip
    seg.open(0.0)
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        frame = pcm[i : i + FRAME_BYTES]
        out = seg.push(frame, i / 2 / 16000, vad(frame))
        if out is not None:
            return out
    return None


@pytest.fixture(scope="module")
def in_tv() -> tuple[bytes, float]:
    pcm, _start, end = mix(espeak_pcm("turn on the kitchen lights"), 10.0, seed=3)
    return pcm, end


@pytest.mark.parametrize("engine", VADS)
def test_a_command_in_tv_noise_ends_on_the_hangover(
    engine: str, in_tv: tuple[bytes, float]
) -> None:
    pcm, end = in_tv
    got = cut(pcm, engine, VadSettings().level_drop_db)
    assert got is not None and got.reason == "hangover", got and got.reason
    # Not before the command is over, and within a second and a half of its end
    assert end <= got.end <= end + 1.5, (got.end, end)


def test_without_the_near_field_rule_the_tv_keeps_it_listening(
    in_tv: tuple[bytes, float],
) -> None:
    """The control: webrtcvad alone flags the TV's voices as speech and runs to the cap."""
    pcm, _end = in_tv
    got = cut(pcm, "webrtc", 0.0)
    assert got is None or got.reason == "max_length", got.reason


def test_a_missing_vad_library_is_named() -> None:
    with pytest.raises(ValueError, match="unknown VAD"):
        make_vad("nope")


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return path


@pytest.mark.models
def test_the_daemon_ends_a_turn_in_tv_noise(
    loomd_proc: LoomdProcess, models: Path, tmp_path: Path
) -> None:
    """ "hey jarvis, turn on the kitchen lights" over TV at 10 dB, 6 s of TV after it: the
    turn ends on the hangover (not the 8 s cap) and whisper hears the command."""
    said = espeak_pcm("hey jarvis") + b"\0" * 9600 + espeak_pcm("turn on the kitchen lights")
    pcm, _start, _end = mix(said, 10.0, seed=5)
    clip = write_wav(tmp_path / "tv.wav", pcm)
    loomd_proc.write_config(
        voice_toml(models, agent='"none"') + "[voice.vad]\nmax_utterance_s = 8.0\n"
    )
    loomd_proc.start(timeout=60)
    p = loomctl(loomd_proc, "voice", "test", str(clip), "--json", timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    turn = out["turns"][0]
    assert turn["end_reason"] == "hangover", turn
    assert "kitchen" in turn["transcript"].lower(), turn
