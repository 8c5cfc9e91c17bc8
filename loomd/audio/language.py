"""The board's language (`[voice] language`): what it picks for each stage when the stage's
own setting is left empty (docs/design/voice-stt.md)."""

from __future__ import annotations

from pathlib import PurePosixPath

__all__ = ["LANGUAGES", "espeak_voice", "piper_model_id", "piper_voice", "stt_model"]

# whisper's language codes (its tokenizer's), the set STT can be asked for
LANGUAGES = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv",
    "it", "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no",
    "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr",
    "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw",
    "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu",
    "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl",
    "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue",
)  # fmt: skip

# The models `loomctl models fetch` installs for a language (loomd/models/catalogue.toml)
_STT = {("whisper", "en"): "whisper/ggml-tiny.en.bin", ("moonshine", "en"): "moonshine/base-en"}
_STT_MULTILINGUAL = {"whisper": "whisper/ggml-base.bin"}
# the catalogue's id of each is "piper-" + the file's stem (tests/audio/test_stt.py checks)
_PIPER = {"en": "piper/en_US-joe-medium.onnx", "de": "piper/de_DE-thorsten-medium.onnx"}
_ESPEAK = {"en": "en-us", "pt": "pt-br", "zh": "cmn", "no": "nb", "jw": "jv"}


def stt_model(engine: str, language: str) -> str:
    """The model file (or folder) `engine` uses for `language`; "" if it has none."""
    return _STT.get((engine, language)) or _STT_MULTILINGUAL.get(engine, "")


def piper_voice(language: str) -> str:
    """The Piper voice for `language` (installed or not); "" if the catalogue has none."""
    return _PIPER.get(language, "")


def piper_model_id(voice: str) -> str:
    """The catalogue model that installs the Piper voice file `voice`; "" if none does."""
    return f"piper-{PurePosixPath(voice).stem}" if voice in _PIPER.values() else ""


def espeak_voice(language: str) -> str:
    """espeak-ng's voice for `language` (its names are mostly the same codes)."""
    return _ESPEAK.get(language, language)
