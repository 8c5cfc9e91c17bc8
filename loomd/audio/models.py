"""Finding model files, with an error that names the file and how to get it."""

from __future__ import annotations

from pathlib import Path

from loomd.errors import LoomdError

__all__ = ["ModelError", "model_path"]

HOW = {
    "whisper": "a whisper.cpp ggml model, e.g. ggml-tiny.en.bin from "
    "https://huggingface.co/ggerganov/whisper.cpp",
    "piper": "a Piper voice (.onnx and .onnx.json) from https://huggingface.co/rhasspy/piper-voices",
    "openwakeword": "openWakeWord ONNX models (melspectrogram.onnx, embedding_model.onnx and "
    "the wake word) from the openwakeword 0.5.1 release",
}


class ModelError(LoomdError):
    pass


def model_path(models_dir: str, name: str, kind: str) -> Path:
    """`name` relative to `models_dir` (or absolute); raises ModelError if it is missing."""
    path = Path(name) if Path(name).is_absolute() else Path(models_dir) / name
    if not path.is_file():
        raise ModelError(f"{kind} model {path} is missing: put {HOW.get(kind, kind)} there")
    return path
