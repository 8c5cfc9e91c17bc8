"""Speech to text in a supervised worker process, never on the event loop, behind one
small interface (`Engine`, named by `[voice.stt] engine` in `ENGINES`): whisper.cpp through
pywhispercpp (the default), or Moonshine (loomd.audio.moonshine); docs/design/voice-stt.md.

whisper.cpp encodes a 30 s window unless told otherwise; `audio_ctx` is sized to the
utterance (50 encoder frames a second, at least 512: below ~300 it repeats words). The
initial prompt is built from a configured vocabulary so names are spelled the way the
house spells them. `[BLANK_AUDIO]`, `(music)` and other non-speech markers are dropped."""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loomd.audio.frames import RATE
from loomd.audio.models import HOW, ModelError, engine_files, model_path
from loomd.audio.worker import Worker

if TYPE_CHECKING:
    import numpy as np

    from loomd.audio.wakecheck import PhraseHeard

__all__ = [
    "ENGINES",
    "Engine",
    "Rescored",
    "SttResult",
    "SttWorker",
    "audio_ctx_for",
    "clean_text",
    "max_tokens_for",
    "padded",
    "stt_server",
]

log = logging.getLogger("loomd.voice.stt")

_MULTILINGUAL = 51865  # n_vocab of whisper's multilingual models (English-only: 51864)
_PAD = RATE // 4  # quiet wanted before and after an utterance, in samples
_WIN = RATE // 100  # 10 ms: the windows the quiet already at an edge is counted in
_QUIET = 100.0  # a window's RMS (s16) under this is quiet (-50 dBFS)
_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")


def clean_text(text: str) -> str:
    """Whisper's text without non-speech markers and stray whitespace."""
    return " ".join(_NON_SPEECH.sub(" ", text).split())


def max_tokens_for(seconds: float) -> int:
    """A bound on the decode: speech is ~4 tokens a second; without one, tiny.en caught in
    a repetition loop decodes to its limit and retries at higher temperatures (10-15 s
    for a 2 s command, measured with a 48-word prompt in docs/design/assist.md)."""
    return int(seconds * 6) + 12


def audio_ctx_for(seconds: float) -> int:
    """Encoder context for an utterance: 50 frames/s, doubled for margin, in [512, 1500]."""
    return max(512, min(1500, int(seconds * 100) // 64 * 64 + 64))


def padded(samples: np.ndarray, fill: bool = True) -> np.ndarray:
    """s16 samples as float32 with silence at each edge: whisper drops words in clips that
    start or end abruptly. With `fill`, only what tops up the quiet already there to a
    quarter second (a VAD cut keeps 0.3 s of pre-roll, a file often has its own); else a
    quarter second each side whatever is there (docs/design/voice-stt.md)."""
    import numpy as np

    lead = trail = _PAD
    if fill:
        n = len(samples) // _WIN
        win = samples[: n * _WIN].astype(np.float32).reshape(n, _WIN)
        loud = np.flatnonzero(np.sqrt(np.mean(win * win, axis=1)) >= _QUIET)
        if loud.size:
            lead = max(0, _PAD - int(loud[0]) * _WIN)
            # whole quiet windows only: the last partial one is not known to be quiet
            trail = max(0, _PAD - (n - 1 - int(loud[-1])) * _WIN)
    audio = np.zeros(len(samples) + lead + trail, dtype=np.float32)
    audio[lead : lead + len(samples)] = samples
    audio /= 32768.0
    return audio


@dataclass(frozen=True)
class Rescored:
    transcript: float  # the free transcript's score
    scores: tuple[float, ...]  # each sentence's, in the order asked
    ms: float


@dataclass(frozen=True)
class SttResult:
    text: str  # cleaned; "" for no speech
    raw: str
    audio_ctx: int
    ms: float


class Engine(Protocol):
    """One speech-to-text model, loaded in the STT worker process (`stt_server`):
    `Engine(path, threads, language)`, then `transcribe` float32 mono 16 kHz audio.
    `prompt` and `audio_ctx` are whisper's; an engine without them ignores them."""

    def transcribe(self, audio: Any, prompt: str, audio_ctx: int, max_tokens: int) -> str: ...


# engine -> "module:class", imported in the worker only (its files: models.STT_FILES)
ENGINES = {
    "whisper": "loomd.audio.stt:WhisperEngine",
    "moonshine": "loomd.audio.moonshine:MoonshineEngine",
}


class WhisperEngine:
    """whisper.cpp through pywhispercpp. Rescoring needs the clip's encoding in a
    whisper.cpp context loomd drives itself (loomd.audio.rescore): once that is loaded (at
    start with `rescore`, else at the first rescoring, which encodes that clip again) it
    transcribes too, with the same library, model and parameters (the same text), and
    pywhispercpp's model goes."""

    def __init__(self, path: str, threads: int, language: str, rescore: bool = False) -> None:
        self.path, self.threads, self.language = path, threads, language
        self.rescoring = "off"
        self.scorer: Any = None
        self.model: Any = None
        self.last: tuple[Any, int, bool] | None = None  # clip, its audio_ctx, encoded here?
        if rescore:
            from loomd.audio.rescore import RescoreError

            try:
                self.load_scorer()
                self.rescoring = "ok"
            except RescoreError as exc:  # a library it cannot drive: transcription as before
                self.rescoring = str(exc)
        if self.scorer is None:
            from pywhispercpp.model import Model

            self.model = Model(path, n_threads=threads, print_progress=False,
                               print_realtime=False, redirect_whispercpp_logs_to=None)  # fmt: skip

    def load_scorer(self) -> Any:
        from loomd.audio.rescore import WhisperScorer

        if self.scorer is None:
            self.scorer = WhisperScorer(self.path, self.threads, self.language)
            self.model = None
        return self.scorer

    def transcribe(self, audio: Any, prompt: str, audio_ctx: int, max_tokens: int) -> str:
        if self.scorer is not None:
            text: str = self.scorer.transcribe(audio, prompt, audio_ctx, max_tokens)
        else:
            # pywhispercpp keeps parameters between calls: an empty prompt must be set
            segs = self.model.transcribe(audio, audio_ctx=audio_ctx, single_segment=True,
                                         no_context=True, max_tokens=max_tokens,
                                         initial_prompt=prompt, language=self.language)  # fmt: skip
            text = " ".join(seg.text for seg in segs).strip()
        self.last = (audio, audio_ctx, self.scorer is not None)
        return text

    def score(self, sentences: list[str], margin: float | None) -> list[float]:
        """Each sentence's score against the last transcribed clip (loomd.audio.rescore)."""
        if self.last is None:
            raise RuntimeError("no clip to rescore: nothing was transcribed")
        audio, ctx, encoded = self.last
        sc = self.load_scorer()
        if not encoded:
            sc.encode(audio, ctx)
            self.last = (audio, ctx, True)
        return [g.score for g in sc.score(sentences, margin)]


def load_engine(engine: str, path: str, threads: int, language: str) -> Engine:
    module, name = ENGINES[engine].split(":")
    cls: Callable[..., Engine] = getattr(importlib.import_module(module), name)
    return cls(path, threads, language)


def stt_server(
    path: str, threads: int, rescore: bool = False, engine: str = "whisper", language: str = "en"
) -> tuple[Callable[[Any], Any], dict[str, str]]:
    """In the worker process (loomd.audio.worker): the engine's model, and what answers a
    request `(s16le pcm bytes, prompt, audio_ctx)` with `(text, ms)` (the conversion to
    float and the padding happen here: half the bytes through the pipe, none of it on the
    daemon's event loop), and `("rescore", transcript, sentences, margin)` about the last
    transcribed clip with `(transcript's score, [scores], ms)` (whisper only: a second
    whisper.cpp context, loomd.audio.rescore, loaded now with `rescore`, else at the first
    rescoring)."""
    import time

    import numpy as np

    model: Engine
    if engine == "whisper":
        model = WhisperEngine(path, threads, language, rescore)
        info = {"rescore": model.rescoring, "engine": engine}
    else:
        model = load_engine(engine, path, threads, language)
        info = {"rescore": f"the {engine} engine cannot rescore" if rescore else "off",
                "engine": engine}  # fmt: skip

    def handle(request: Any) -> Any:
        if request[0] == "wake":  # the wake check (loomd.audio.wakecheck) on a wake segment
            from loomd.audio.wakecheck import hear_phrase, segment_audio

            if not isinstance(model, WhisperEngine):
                raise RuntimeError(f"the {engine} engine cannot check a wake")
            audio = segment_audio(request[1])
            if model.last is not None:  # the scorer's encoding is this segment's now
                model.last = (*model.last[:2], False)
            sc = model.load_scorer()
            h = hear_phrase(sc, audio, audio_ctx_for(len(audio) / RATE), request[2])
            return h.text, h.free, h.phrase, h.ms, h.opening
        if request[0] == "rescore":
            _, transcript, sentences, margin = request
            if not isinstance(model, WhisperEngine):
                raise RuntimeError(f"the {engine} engine cannot rescore")
            began = time.perf_counter()
            got = model.score([transcript, *sentences], margin)
            return got[0], got[1:], (time.perf_counter() - began) * 1000
        pcm, prompt = request
        began = time.perf_counter()
        audio = padded(np.frombuffer(pcm, dtype=np.int16))
        ctx = audio_ctx_for(len(audio) / RATE)
        text = model.transcribe(audio, prompt, ctx, max_tokens_for(len(audio) / RATE))
        return text, (time.perf_counter() - began) * 1000, ctx

    return handle, info


class SttWorker:
    """One speech-to-text model (`engine`, one of `ENGINES`) in a supervised worker process
    (loomd.audio.worker). If the process dies mid-utterance (a native crash, the OOM
    killer), that utterance fails with a clear error and a fresh process is started for the
    next one."""

    def __init__(
        self,
        models_dir: str,
        model: str,
        *,
        threads: int = 1,
        vocabulary: tuple[str, ...] = (),
        rescore: bool = False,
        engine: str = "whisper",
        language: str = "en",
    ) -> None:
        if engine not in ENGINES:
            raise ModelError(f"no STT engine {engine!r}; known: {', '.join(ENGINES)}")
        for name in engine_files(engine, model):  # a missing file is named here
            model_path(models_dir, name, engine)
        self.path = Path(model) if Path(model).is_absolute() else Path(models_dir) / model
        self.engine = engine
        self.language = language
        self.threads = threads
        self.prompt = ", ".join(vocabulary)
        self.last_tag = ""  # the tag of the clip the worker holds
        self.worker = Worker(
            "stt", (str(self.path), threads, rescore, engine, language), stage="STT",
            engine=engine, check=self._check,
            load_hint=f"{engine} model {self.path} did not load ({{detail}}): {HOW[engine]}",
        )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    @property
    def restarts(self) -> int:
        return self.worker.restarts

    @property
    def failures(self) -> int:
        return self.worker.failures

    @property
    def calls(self) -> int:
        return self.worker.calls

    def _check(self) -> None:
        if self.engine != "whisper":
            return
        with open(self.path, "rb") as f:
            head = f.read(8)
        if self.path.stat().st_size < 1_000_000 or head[:4] not in (b"lmgg", b"ggml"):
            raise ModelError(
                f"whisper model {self.path} is not a ggml model (corrupt or truncated?): "
                f"{HOW['whisper']}"
            )
        # English-only models have one token less (no language tokens past <|en|>)
        if self.language != "en" and int.from_bytes(head[4:8], "little") < _MULTILINGUAL:
            raise ModelError(
                f"whisper model {self.path} is English-only; language {self.language!r} "
                f"needs a multilingual one: {HOW['whisper-multilingual']}"
            )

    async def load(self) -> None:
        await self.worker.start()

    async def transcribe(self, pcm: bytes, extra_prompt: str = "", tag: str = "") -> SttResult:
        """The text of `pcm` (16 kHz s16le, padded in the worker); `tag` names the clip for
        `rescore()` (the worker keeps the last clip)."""
        prompt = ", ".join(p for p in (self.prompt, extra_prompt) if p)
        self.last_tag = ""
        raw, ms, ctx = await self.worker.call(pcm, prompt)
        self.last_tag = tag
        return SttResult(clean_text(raw), raw, ctx, ms)

    @property
    def rescoring(self) -> str:
        """ "ok" when the worker can rescore, "off", or why it cannot."""
        info = self.worker.info
        return str(info.get("rescore", "off")) if isinstance(info, dict) else "off"

    async def rescore(
        self, transcript: str, sentences: list[str], margin: float | None = None
    ) -> Rescored:
        """How well `transcript` and each of `sentences` explain the last transcribed clip
        (mean token log-probability under whisper's decoder; loomd.audio.rescore). With
        `margin`, a sentence that cannot come within it of the transcript, nor beat the
        best, stops early (its score is then an upper bound)."""
        own, scores, ms = await self.worker.call("rescore", transcript, list(sentences), margin)
        return Rescored(float(own), tuple(float(x) for x in scores), float(ms))

    async def hear_phrase(self, pcm: bytes, phrase: str) -> PhraseHeard:
        """The wake check on a wake segment (loomd.audio.wakecheck)."""
        from loomd.audio.wakecheck import PhraseHeard

        text, free, forced, ms, opening = await self.worker.call("wake", pcm, phrase)
        return PhraseHeard(str(text), float(free), float(forced), float(ms), float(opening))

    def close(self) -> None:
        self.worker.close()
