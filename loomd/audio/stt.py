"""Speech to text: pywhispercpp in a supervised worker process, never on the event loop.

whisper.cpp encodes a 30 s window unless told otherwise; `audio_ctx` is sized to the
utterance (50 encoder frames a second, at least 512: below ~300 it repeats words). The
initial prompt is built from a configured vocabulary so names are spelled the way the
house spells them. `[BLANK_AUDIO]`, `(music)` and other non-speech markers are dropped."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loomd.audio.frames import RATE
from loomd.audio.models import ModelError, model_path
from loomd.audio.worker import Worker

if TYPE_CHECKING:
    from loomd.audio.wakecheck import PhraseHeard

__all__ = [
    "Rescored",
    "SttResult",
    "SttWorker",
    "audio_ctx_for",
    "clean_text",
    "max_tokens_for",
    "stt_server",
]

log = logging.getLogger("loomd.voice.stt")

_GET = "get ggml-tiny.en.bin from https://huggingface.co/ggerganov/whisper.cpp"
_PAD = RATE // 4  # silence added before and after an utterance, in samples
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


def stt_server(
    path: str, threads: int, rescore: bool = False
) -> tuple[Callable[[Any], Any], dict[str, str]]:
    """In the worker process (loomd.audio.worker): the model, and what answers a request
    `(s16le pcm bytes, prompt, audio_ctx)` with `(text, ms)` (the conversion to float and
    the padding happen here: half the bytes through the pipe, none of it on the daemon's
    event loop), and `("rescore", transcript, sentences, margin)` about the last transcribed
    clip with `(transcript's score, [scores], ms)` from a second whisper.cpp context
    (loomd.audio.rescore), loaded now with `rescore`, else at the first rescoring."""
    import time

    import numpy as np
    from pywhispercpp.model import Model

    info = {"rescore": "off"}
    # Rescoring needs the clip's encoding in a whisper.cpp context loomd drives itself
    # (loomd.audio.rescore): once it is loaded (at start with `rescore`, else at the first
    # rescoring, which encodes that clip again) it transcribes too, with the same library,
    # model and parameters as pywhispercpp (the same text), and pywhispercpp's model goes.
    engine: dict[str, Any] = {}

    def load_scorer() -> Any:
        from loomd.audio.rescore import WhisperScorer

        if "scorer" not in engine:
            engine["scorer"] = WhisperScorer(path, threads)
            engine.pop("model", None)
        return engine["scorer"]

    if rescore:
        from loomd.audio.rescore import RescoreError

        try:
            load_scorer()
            info["rescore"] = "ok"
        except RescoreError as exc:  # a library it cannot drive: transcription as before
            info["rescore"] = str(exc)
    if "scorer" not in engine:
        engine["model"] = Model(path, n_threads=threads, print_progress=False,
                                print_realtime=False, redirect_whispercpp_logs_to=None)  # fmt: skip
    last: list[Any] = [None, 0, False]  # the last clip (float32), its audio_ctx, encoded?

    def handle(request: Any) -> Any:
        if request[0] == "wake":  # the wake check (loomd.audio.wakecheck) on a wake segment
            from loomd.audio.wakecheck import hear_phrase, segment_audio

            audio = segment_audio(request[1])
            last[2] = False  # the scorer's encoding is this segment's now, not the clip's
            h = hear_phrase(load_scorer(), audio, audio_ctx_for(len(audio) / RATE), request[2])
            return h.text, h.free, h.phrase, h.ms
        if request[0] == "rescore":
            _, transcript, sentences, margin = request
            if last[0] is None:
                raise RuntimeError("no clip to rescore: nothing was transcribed")
            began = time.perf_counter()
            sc = load_scorer()
            if not last[2]:
                sc.encode(last[0], last[1])
                last[2] = True
            got = sc.score([transcript, *sentences], margin)
            ms = (time.perf_counter() - began) * 1000
            return got[0].score, [g.score for g in got[1:]], ms
        pcm, prompt, ctx = request
        began = time.perf_counter()
        # Pad short clips: whisper drops words in clips that start or end abruptly.
        audio = np.zeros(len(pcm) // 2 + 2 * _PAD, dtype=np.float32)
        audio[_PAD:-_PAD] = np.frombuffer(pcm, dtype=np.int16)
        audio /= 32768.0
        last[:] = [audio, ctx, False]
        n = max_tokens_for(len(audio) / RATE)
        if "scorer" in engine:
            text = engine["scorer"].transcribe(audio, prompt, ctx, n)
            last[2] = True
        else:
            kw: dict[str, Any] = {"audio_ctx": ctx, "single_segment": True, "no_context": True,
                                  "max_tokens": n}  # fmt: skip
            # pywhispercpp keeps parameters between calls: an empty prompt must be set
            kw["initial_prompt"] = prompt
            text = " ".join(seg.text for seg in engine["model"].transcribe(audio, **kw)).strip()
        return text, (time.perf_counter() - began) * 1000

    return handle, info


class SttWorker:
    """One whisper model in a supervised worker process (loomd.audio.worker). If the
    process dies mid-utterance (a native crash, the OOM killer), that utterance fails with
    a clear error and a fresh process is started for the next one."""

    def __init__(
        self,
        models_dir: str,
        model: str,
        *,
        threads: int = 1,
        vocabulary: tuple[str, ...] = (),
        rescore: bool = False,
    ) -> None:
        self.path = model_path(models_dir, model, "whisper")
        self.threads = threads
        self.prompt = ", ".join(vocabulary)
        self.last_tag = ""  # the tag of the clip the worker holds
        self.worker = Worker(
            "stt", (str(self.path), threads, rescore), stage="STT", engine="whisper",
            check=self._check,
            load_hint=f"whisper model {self.path} did not load ({{detail}}): {_GET}",
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
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if self.path.stat().st_size < 1_000_000 or magic not in (b"lmgg", b"ggml"):
            raise ModelError(
                f"whisper model {self.path} is not a ggml model (corrupt or truncated?): {_GET}"
            )

    async def load(self) -> None:
        await self.worker.start()

    async def transcribe(self, pcm: bytes, extra_prompt: str = "", tag: str = "") -> SttResult:
        """The text of `pcm` (16 kHz s16le, padded in the worker); `tag` names the clip for
        `rescore()` (the worker keeps the last clip)."""
        prompt = ", ".join(p for p in (self.prompt, extra_prompt) if p)
        ctx = audio_ctx_for((len(pcm) // 2 + 2 * _PAD) / RATE)
        self.last_tag = ""
        raw, ms = await self.worker.call(pcm, prompt, ctx)
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

        text, free, forced, ms = await self.worker.call("wake", pcm, phrase)
        return PhraseHeard(str(text), float(free), float(forced), float(ms))

    def close(self) -> None:
        self.worker.close()
