"""The STT stage behind one interface: engines, the board's language, whisper's padding.

Real models where a model is involved (whisper tiny.en, Moonshine base-en from the
moonshine-cpp wheel) in their worker process; the padding and the settings are pure."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loomd.audio.io import read_wav
from loomd.audio.models import STT_FILES, ModelError, engine_files
from loomd.audio.settings import VoiceSettings
from loomd.audio.stt import ENGINES, SttWorker, padded
from loomd.audio.wer import wer
from loomd.config import build_section
from loomd.errors import ConfigError
from tests.audio.conftest import say_wav
from tests.testmodels import MODELS, require

MOONSHINE = MODELS / "moonshine" / "base-en"
COMMAND = "turn on the kitchen lights"


def voice(**table: object) -> VoiceSettings:
    got: VoiceSettings = build_section(VoiceSettings, table)
    return got


# -- padding (pure) ---------------------------------------------------------------------------
def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def test_padding_tops_up_the_quiet_at_each_edge() -> None:
    speech = tone(1.0)
    bare = padded(speech)  # no quiet at all: a quarter second each side
    assert len(bare) == 16000 + 2 * 4000
    assert not bare[:4000].any() and not bare[-4000:].any()
    quiet = np.concatenate([np.zeros(1600, np.int16), speech, np.zeros(8000, np.int16)])
    got = padded(quiet)  # 0.1 s before (0.15 s added), 0.5 s after (nothing added)
    assert len(got) == len(quiet) + 2400
    assert np.allclose(got[2400:], quiet / 32768.0)
    always = padded(quiet, fill=False)
    assert len(always) == len(quiet) + 8000


def test_padding_counts_noise_as_sound() -> None:
    noise = np.random.default_rng(1).normal(0, 1000, 16050).astype(np.int16)
    # a noisy edge is not quiet: the same audio as padding a quarter second each side
    assert np.array_equal(padded(noise), padded(noise, fill=False))


# -- settings (pure) --------------------------------------------------------------------------
def test_every_engine_names_its_files() -> None:
    assert set(ENGINES) == set(STT_FILES)


def test_language_picks_each_stage_model() -> None:
    en = voice()
    assert (en.language, en.stt_model, en.tts_voice) == (
        "en", "whisper/ggml-tiny.en.bin", "piper/en_US-joe-medium.onnx",
    )  # fmt: skip
    de = voice(language="de")
    assert de.stt_model == "whisper/ggml-base.bin"  # multilingual
    assert de.tts_voice == "piper/de_DE-thorsten-medium.onnx"  # the catalogue's, if fetched
    assert voice(language="fr").tts_voice == ""  # no Piper voice in the catalogue: espeak-ng
    moonshine = voice(stt={"engine": "moonshine"}, wake={"second_check": "off"})
    assert moonshine.stt_model == "moonshine/base-en"
    assert voice(language="de", stt={"model": "whisper/mine.bin"}).stt_model == "whisper/mine.bin"
    assert engine_files("moonshine", "moonshine/base-en") == [
        "moonshine/base-en/encoder_model.ort",
        "moonshine/base-en/decoder_model_merged.ort",
        "moonshine/base-en/tokenizer.bin",
    ]


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ({"language": "german"}, "voice.language", "one of"),
        ({"language": "de", "stt": {"engine": "moonshine"}}, "voice.stt.engine", "'de'"),
        ({"stt": {"engine": "vosk"}}, "voice.stt.engine", "moonshine"),
        ({"stt": {"engine": "moonshine"}}, "voice.wake.second_check", "needs whisper"),
    ],
)
def test_a_wrong_language_or_engine_is_a_config_error(
    table: dict[str, object], key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as e:
        voice(**table)
    assert e.value.key == key and says in str(e.value), str(e.value)


# -- the worker, real models ------------------------------------------------------------------
def transcribe(models: Path, model: str, pcm: bytes, **kw: str) -> str:
    async def run() -> str:
        w = SttWorker(str(models), model, **kw)  # type: ignore[arg-type]
        try:
            return (await w.transcribe(pcm)).text
        finally:
            w.close()

    return asyncio.run(run())


@pytest.mark.models
def test_moonshine_transcribes_in_the_stt_worker(speech_dir: Path) -> None:
    models = require(MOONSHINE / "tokenizer.bin")
    pcm = read_wav(say_wav(COMMAND, speech_dir / "moon.wav"))
    got = transcribe(models, "moonshine/base-en", pcm, engine="moonshine")
    assert wer([COMMAND], [got]) == 0.0, got


def test_a_missing_engine_file_is_named_with_how_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "moonshine/base-en").mkdir(parents=True)
    (tmp_path / "moonshine/base-en/encoder_model.ort").write_bytes(b"x")
    with pytest.raises(ModelError) as e:
        SttWorker(str(tmp_path), "moonshine/base-en", engine="moonshine")
    assert "decoder_model_merged.ort is missing" in str(e.value)
    assert "loomctl models fetch moonshine-base-en" in str(e.value)


@pytest.mark.models
def test_an_english_only_model_for_another_language_is_named(models: Path) -> None:
    w = SttWorker(str(models), "whisper/ggml-tiny.en.bin", language="de")
    try:
        with pytest.raises(ModelError) as e:
            asyncio.run(w.load())
    finally:
        w.close()
    assert "ggml-tiny.en.bin is English-only; language 'de'" in str(e.value)
    assert "multilingual" in str(e.value)


@pytest.mark.models
def test_the_language_reaches_whisper(models: Path, speech_dir: Path) -> None:
    """German speech (espeak-ng) through the STT stage with a multilingual whisper model:
    German words in German, other words when the stage is told English. The model is the
    catalogue's `whisper-base`, joined from two wheels by fetch-test-models."""
    require(models / "whisper" / "ggml-base.bin")
    pcm = read_wav(_german("Schalte bitte das Licht in der Küche ein", speech_dir / "de.wav"))
    german = transcribe(models, "whisper/ggml-base.bin", pcm, language="de").lower()
    english = transcribe(models, "whisper/ggml-base.bin", pcm, language="en").lower()
    assert "licht" in german and "küche" in german, german
    assert "küche" not in english, english


@pytest.mark.models
def test_a_german_board_checks_the_english_wake_word_and_rescores_in_german(
    models: Path, speech_dir: Path
) -> None:
    """On a multilingual model the decoder's prompt names a language: the wake check asks
    for English (the wake phrases are), the rescoring for the board's language. Asked with
    no language token, whisper base heard "Jar Jar Jar ..." for "hey jarvis" and refused
    every wake of a German board."""
    require(models / "whisper" / "ggml-base.bin")
    wake = read_wav(say_wav("hey jarvis", speech_dir / "wake-de.wav", pad=(0.3, 0.3)))
    command = read_wav(_german("Schalte das Licht in der Küche ein", speech_dir / "cmd-de.wav"))
    from loomd.audio.settings import WakeSettings

    rules = WakeSettings().check
    assert rules is not None

    async def run() -> tuple[Any, str, Any]:
        w = SttWorker(str(models), "whisper/ggml-base.bin", language="de")
        try:
            heard = await w.hear_phrase(wake, "hey jarvis")
            text = (await w.transcribe(command)).text
            right, wrong = "Schalte das Licht in der Küche ein", "Schalte das Licht im Bad aus"
            return heard, text, await w.rescore(text, [right, wrong])
        finally:
            w.close()

    heard, text, scored = asyncio.run(run())
    assert heard.accepts(rules.margin, rules.floor), heard
    assert "licht" in text.lower(), text
    right, wrong = scored.scores
    assert right > wrong + 1.0, (text, scored)
    assert right > scored.transcript - 1.0, (text, scored)  # within the assist's margin


def _german(text: str, out: Path) -> Path:
    """German speech (espeak-ng, then sox) as 16 kHz mono s16 WAV."""
    import subprocess

    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to make German speech")
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "de", "-s", "140", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out), "pad",
                    "0.3", "0.3"], check=True)  # fmt: skip
    return out
