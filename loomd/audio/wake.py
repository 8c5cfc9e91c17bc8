"""Wake word: openWakeWord with the ONNX runtime and explicit model paths.

Fed 20 ms frames; scores every 80 ms (1280 samples, what openWakeWord wants). A detection
needs a score at or above the threshold, then nothing fires again for the refractory
period (in stream time, so replays and live audio behave the same)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomd.audio.models import ModelError, lean_session, model_path

__all__ = [
    "CHUNK_SAMPLES",
    "Detection",
    "WakeDetector",
    "hot_spans",
    "openwakeword_model",
    "reset_model",
    "wake_server",
]

CHUNK_SAMPLES = 1280


@dataclass(frozen=True)
class Detection:
    word: str
    score: float
    t: float  # stream time at the end of the chunk that fired


_VERIFIER = "openwakeword.custom_verifier_model"


def openwakeword_model() -> Any:
    """openWakeWord's `Model` without its training helpers. The package's `__init__`
    imports `custom_verifier_model` (scipy and scikit-learn: ~100 MB of PSS in each process
    that imports it), which only trains verifier models; the ONNX inference path never
    uses it. A stand-in that loads the real module on first use takes its place, unless
    openwakeword or that module is loaded already."""
    import importlib
    import sys
    import types

    if "openwakeword" not in sys.modules and _VERIFIER not in sys.modules:
        stub = types.ModuleType(_VERIFIER)

        def train_custom_verifier(*args: Any, **kw: Any) -> Any:
            del sys.modules[_VERIFIER]
            return importlib.import_module(_VERIFIER).train_custom_verifier(*args, **kw)

        stub.train_custom_verifier = train_custom_verifier  # type: ignore[attr-defined]
        sys.modules[_VERIFIER] = stub
    from openwakeword.model import Model  # type: ignore[import-untyped]

    return Model


def share_sessions(model: Any, mel: str, emb: str, words: list[str]) -> None:
    """Point an openWakeWord `Model` at this process's lean sessions (`lean_session`): every
    detector in the wake worker (the live one, the self-wake guard's, the stop word's,
    each Wyoming client's) made its own three sessions, ~32 MB each; shared, the next
    detector costs its feature buffers only. Tied to openwakeword 0.6's attribute names
    (pinned); a model without them keeps its own sessions."""
    import functools

    pre = getattr(model, "preprocessor", None)
    if pre is None or not hasattr(pre, "melspec_model"):
        return
    pre.melspec_model = lean_session(mel)
    pre.embedding_model = lean_session(emb)
    for name, path in zip(list(model.models), words, strict=True):
        shared = lean_session(path)
        model.models[name] = shared
        predict = model.model_prediction_function[name]
        model.model_prediction_function[name] = functools.partial(predict.func, shared)


_FILLERS: dict[int, Any] = {}  # id(embedding session) -> the feature buffer after a reset


def reset_model(model: Any) -> None:
    """`model.reset()` without its cost: openWakeWord refills the feature buffer with the
    embeddings of 4 s of fresh random noise at every reset (~90 ms of CPU; the profile of a
    voice turn found ~9 a turn: each wake, each clip the self-wake guard scans). Filler
    noise is filler noise: it is computed once per embedding model and process and copied
    after. A model without openwakeword 0.6's attributes resets its own way."""
    pre = getattr(model, "preprocessor", None)
    key = id(getattr(pre, "embedding_model", None))
    filler = _FILLERS.get(key)
    if pre is None or filler is None or not hasattr(pre, "_get_embeddings"):
        model.reset()
        if pre is not None and hasattr(pre, "feature_buffer"):
            _FILLERS[key] = pre.feature_buffer.copy()
        return
    pre._get_embeddings = lambda *args, **kw: filler.copy()  # for this reset only
    try:
        model.reset()
    finally:
        del pre._get_embeddings  # the class's own again


class WakeDetector:
    def __init__(
        self,
        models_dir: str,
        words: tuple[str, ...],
        *,
        threshold: float = 0.5,
        refractory_s: float = 2.0,
    ) -> None:
        import numpy as np

        Model = openwakeword_model()
        self._np = np
        paths = [model_path(models_dir, w, "openwakeword") for w in words]
        # The feature models sit beside the first model (a custom wake/ folder may hold
        # only wake words: then the ones in the models dir's openwakeword/ are used)
        folder = paths[0].parent
        if not (folder / "melspectrogram.onnx").is_file():
            folder = Path(models_dir) / "openwakeword"
        mel = model_path(str(folder), "melspectrogram.onnx", "openwakeword")
        emb = model_path(str(folder), "embedding_model.onnx", "openwakeword")
        try:
            self._model: Any = Model(
                wakeword_models=[str(p) for p in paths],
                inference_framework="onnx",
                melspec_model_path=str(mel),
                embedding_model_path=str(emb),
            )
            share_sessions(self._model, str(mel), str(emb), [str(p) for p in paths])
        except Exception as exc:  # onnxruntime's errors for a truncated or foreign file
            raise ModelError(
                f"openwakeword models in {folder} did not load ({type(exc).__name__}: {exc}); "
                "replace them with the files of the openwakeword 0.5.1 release"
            ) from None
        self.words = tuple(Path(p).stem for p in paths)
        self.threshold = threshold
        self.refractory_s = refractory_s
        self._pending = b""
        self._quiet_until = -1e9
        self.chunks = 0
        self.peak = 0.0
        self.last = 0.0  # the highest score of the last process() call

    def reset(self, *, clock: bool = True) -> None:
        """Forget the audio heard so far; with `clock`, also the refractory period (a new
        stream whose clock starts again at 0)."""
        self._pending = b""
        reset_model(self._model)
        if clock:
            self._quiet_until = -1e9

    def process(
        self, pcm: bytes, t_end: float, threshold: float | Mapping[str, float] | None = None
    ) -> Detection | None:
        """Feed s16le audio that ends at stream time `t_end`; returns a detection or None.
        `threshold`: one for all words, or per word (file stem; "*" for the others).
        Blocking (ONNX): run it off the event loop."""
        self._pending += pcm
        hit: Detection | None = None
        if threshold is None or isinstance(threshold, int | float):
            flat = self.threshold if threshold is None else float(threshold)
            limits: Mapping[str, float] = {"*": flat}
        else:
            limits = threshold
        self.last = 0.0
        step = CHUNK_SAMPLES * 2
        while len(self._pending) >= step:
            chunk, self._pending = self._pending[:step], self._pending[step:]
            audio = self._np.frombuffer(chunk, dtype=self._np.int16)
            scores: dict[str, float] = self._model.predict(audio)
            self.chunks += 1
            t = t_end - len(self._pending) / 2 / 16000
            for word, score in scores.items():
                self.peak = max(self.peak, float(score))
                self.last = max(self.last, float(score))
                limit = limits.get(word, limits.get("*", self.threshold))
                if score >= limit and t >= self._quiet_until and hit is None:
                    hit = Detection(word, float(score), t)
                    self._quiet_until = t + self.refractory_s
        return hit


def hot_spans(scores: Sequence[float], guard_score: float) -> list[tuple[float, float]]:
    """Where the wake word is said in audio whose 80 ms chunks scored `scores` (the wake
    model on it from the start, then a second of silence): (start, end) in seconds. The
    model scores at the end of a word; a span covers the second before it."""
    spans: list[tuple[float, float]] = []
    step_s = CHUNK_SAMPLES / 16000
    for k, score in enumerate(scores):
        if score >= guard_score:
            end = (k + 1) * step_s
            if spans and spans[-1][1] >= end - 1.0:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((end - 1.0, end))
    return spans


def wake_server(models_dir: str, words: list[str]) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """In the worker process (loomd.audio.worker): detectors by id, made on first use with
    the models, threshold and refractory period the request carries (`cfg`). Requests:
    `("process", id, cfg, pcm, t_end, limit)` -> (hit or None, last, peak);
    `("reset", id, cfg, clock)`; `("scores", id, cfg, pcm)` -> the highest score of each
    80 ms chunk (the self-wake guard's scan)."""
    first = WakeDetector(models_dir, tuple(words))  # loads the models: errors at start
    dets: dict[str, WakeDetector] = {}

    def det(key: str, cfg: Any) -> WakeDetector:
        if key not in dets:
            models, threshold, refractory_s = cfg
            dets[key] = WakeDetector(
                models_dir, tuple(models), threshold=threshold, refractory_s=refractory_s
            )
        return dets[key]

    def handle(req: Any) -> Any:
        op, key, cfg = req[0], req[1], req[2]
        if op == "process":
            d = det(key, cfg)
            hit = d.process(req[3], req[4], req[5])
            return (None if hit is None else (hit.word, hit.score, hit.t)), d.last, d.peak
        if op == "reset":
            det(key, cfg).reset(clock=req[3])
            return None
        if op == "scores":
            d = det(key, cfg)
            out = []
            step = CHUNK_SAMPLES * 2
            for i in range(0, len(req[3]), step):
                d.process(req[3][i : i + step], 0.0)
                out.append(d.last)
            return out
        raise ValueError(f"unknown wake request {op!r}")

    return handle, {"words": list(first.words)}
