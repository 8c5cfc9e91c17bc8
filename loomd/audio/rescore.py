"""Closed-set rescoring with whisper's own decoder: how well does each of a few given
sentences explain the audio? (issue 16: the 10 dB misses are whisper tiny.en hearing other
words entirely; the home only understands a closed set of sentences.)

pywhispercpp 1.5.1's low-level bindings cannot do this (probed, docs/design/assist.md):
`whisper_get_logits` returns one float (logits[0], and pybind11's default policy for a
returned pointer takes ownership of it), the logits-filter callback is handed logits[0] as
a Python float (it can neither read nor change the row), and `whisper_tokenize` writes its
tokens into a temporary. So this module calls whisper.cpp's C API directly (ctypes) on the
same shared library pywhispercpp loads: `whisper_full` encodes the clip (with the same
`audio_ctx` as the stage), then `whisper_decode` feeds each candidate's tokens after
`<|startoftranscript|><|notimestamps|>` and `whisper_get_logits` gives the next token's
row. A candidate's score is the mean log-probability of its tokens and the end of text;
candidates sharing a prefix share its decoding (the decoder's KV cache is rewound with
`n_past`), and a candidate that can no longer win stops early.

`whisper_full_params` is passed by value, so its layout is declared here (whisper.cpp
1.8.x) and checked at load against the library's own defaults: a library whose layout
differs is refused with a clear error, never called with a wrong struct."""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loomd.errors import LoomdError

__all__ = ["RescoreError", "Scored", "WhisperScorer", "whisper_style"]

_c = ctypes


class _VadParams(_c.Structure):
    _fields_ = (
        ("threshold", _c.c_float),
        ("min_speech_duration_ms", _c.c_int),
        ("min_silence_duration_ms", _c.c_int),
        ("max_speech_duration_s", _c.c_float),
        ("speech_pad_ms", _c.c_int),
        ("samples_overlap", _c.c_float),
    )


class _Greedy(_c.Structure):
    _fields_ = (("best_of", _c.c_int),)


class _Beam(_c.Structure):
    _fields_ = (("beam_size", _c.c_int), ("patience", _c.c_float))


_B, _I, _F, _P = _c.c_bool, _c.c_int, _c.c_float, _c.c_void_p


class _FullParams(_c.Structure):
    """`struct whisper_full_params` of whisper.cpp 1.8.x (include/whisper.h)."""

    _fields_ = (
        ("strategy", _I), ("n_threads", _I), ("n_max_text_ctx", _I), ("offset_ms", _I),
        ("duration_ms", _I), ("translate", _B), ("no_context", _B), ("no_timestamps", _B),
        ("single_segment", _B), ("print_special", _B), ("print_progress", _B),
        ("print_realtime", _B), ("print_timestamps", _B), ("token_timestamps", _B),
        ("thold_pt", _F), ("thold_ptsum", _F), ("max_len", _I), ("split_on_word", _B),
        ("max_tokens", _I), ("debug_mode", _B), ("audio_ctx", _I), ("tdrz_enable", _B),
        ("suppress_regex", _c.c_char_p), ("initial_prompt", _c.c_char_p),
        ("carry_initial_prompt", _B), ("prompt_tokens", _P), ("prompt_n_tokens", _I),
        ("language", _c.c_char_p), ("detect_language", _B), ("suppress_blank", _B),
        ("suppress_nst", _B), ("temperature", _F), ("max_initial_ts", _F),
        ("length_penalty", _F), ("temperature_inc", _F), ("entropy_thold", _F),
        ("logprob_thold", _F), ("no_speech_thold", _F), ("greedy", _Greedy),
        ("beam_search", _Beam), ("new_segment_callback", _P),
        ("new_segment_callback_user_data", _P), ("progress_callback", _P),
        ("progress_callback_user_data", _P), ("encoder_begin_callback", _P),
        ("encoder_begin_callback_user_data", _P), ("abort_callback", _P),
        ("abort_callback_user_data", _P), ("logits_filter_callback", _P),
        ("logits_filter_callback_user_data", _P), ("grammar_rules", _P),
        ("n_grammar_rules", _c.c_size_t), ("i_start_rule", _c.c_size_t),
        ("grammar_penalty", _F), ("vad", _B), ("vad_model_path", _c.c_char_p),
        ("vad_params", _VadParams),
    )  # fmt: skip


# whisper.cpp's defaults for the greedy strategy, far apart in the struct: if these read
# back right, the fields between them are where this module thinks they are.
_DEFAULTS = {
    "n_max_text_ctx": 16384, "thold_pt": 0.01, "max_initial_ts": 1.0, "temperature_inc": 0.2,
    "entropy_thold": 2.4, "no_speech_thold": 0.6, "grammar_penalty": 100.0,
}  # fmt: skip
_VAD_DEFAULTS = {"threshold": 0.5, "min_speech_duration_ms": 250, "speech_pad_ms": 30}


class RescoreError(LoomdError):
    pass


@dataclass(frozen=True)
class Scored:
    text: str
    score: float  # mean log-probability per token (with the end of text): 0 is certain
    tokens: int
    pruned: bool = False  # decoding stopped early: `score` is an upper bound


def whisper_style(sentence: str) -> str:
    """A sentence the way whisper writes it: a leading space, a capital, a full stop (the
    tokens it would emit, so a candidate is not penalised for its spelling)."""
    s = " ".join(sentence.split()).strip(" .,!?")
    if not s:
        return ""
    return " " + s[0].upper() + s[1:] + ("?" if sentence.rstrip().endswith("?") else ".")


def _library() -> Path:
    """The libwhisper pywhispercpp loads (one copy in the process), else its twin."""
    spec = importlib.util.find_spec("_pywhispercpp")
    if spec is None or spec.origin is None:
        raise RescoreError("rescoring needs pywhispercpp (the voice extra)")
    site = Path(spec.origin).parent
    found = sorted(glob.glob(str(site / "pywhispercpp.libs" / "libwhisper*.so*")))
    found += [str(p) for p in (site / "libwhisper.so",) if p.exists()]
    if not found:
        raise RescoreError(f"no libwhisper shared library beside {spec.origin}")
    return Path(found[0])


_LOG = _c.CFUNCTYPE(None, _c.c_int, _c.c_char_p, _c.c_void_p)


def _silent(level: int, text: bytes, user: Any) -> None:  # whisper.cpp's log: not on stderr
    return None


_quiet = _LOG(_silent)


class WhisperScorer:
    """A whisper.cpp context of its own: `encode()` a clip once, then `score()` any
    number of sentences against it. Not thread-safe (one per worker process)."""

    def __init__(self, model: str, threads: int = 1, language: str = "en") -> None:
        importlib.import_module("_pywhispercpp")  # loads the library and its ggml with it

        lib = _c.CDLL(str(_library()))
        self.lib = lib
        lib.whisper_log_set.argtypes = [_LOG, _P]
        lib.whisper_log_set(_quiet, None)
        lib.whisper_init_from_file.restype = _P
        lib.whisper_init_from_file.argtypes = [_c.c_char_p]
        lib.whisper_full_default_params_by_ref.restype = _c.POINTER(_FullParams)
        lib.whisper_full_default_params_by_ref.argtypes = [_I]
        lib.whisper_free_params.argtypes = [_P]
        lib.whisper_full.argtypes = [_P, _FullParams, _c.POINTER(_F), _I]
        lib.whisper_decode.argtypes = [_P, _c.POINTER(_I), _I, _I, _I]
        lib.whisper_get_logits.restype = _c.POINTER(_F)
        lib.whisper_get_logits.argtypes = [_P]
        lib.whisper_tokenize.argtypes = [_P, _c.c_char_p, _c.POINTER(_I), _I]
        lib.whisper_token_to_str.restype = _c.c_char_p
        lib.whisper_token_to_str.argtypes = [_P, _I]
        lib.whisper_free.argtypes = [_P]
        for name in ("n_vocab", "token_sot", "token_eot", "token_not", "full_n_segments",
                     "is_multilingual", "token_transcribe"):  # fmt: skip
            getattr(lib, "whisper_" + name).argtypes = [_P]
        lib.whisper_lang_id.argtypes = [_c.c_char_p]
        lib.whisper_token_lang.argtypes = [_P, _I]
        lib.whisper_full_get_segment_text.restype = _c.c_char_p
        lib.whisper_full_get_segment_text.argtypes = [_P, _I]
        ref = lib.whisper_full_default_params_by_ref(0)  # greedy
        self.defaults = _FullParams.from_buffer_copy(ref.contents)
        lib.whisper_free_params(_c.cast(ref, _P))
        self._check_layout()
        ctx = lib.whisper_init_from_file(model.encode())
        if not ctx:
            raise RescoreError(f"whisper.cpp could not load {model}")
        self.ctx = ctx
        self.threads = threads
        self.n_vocab = int(lib.whisper_n_vocab(ctx))
        self.sot = int(lib.whisper_token_sot(ctx))
        self.eot = int(lib.whisper_token_eot(ctx))
        self.notimestamps = int(lib.whisper_token_not(ctx))
        d = self.defaults  # what pywhispercpp's Model(n_threads=..., print_*=False) passes
        d.n_threads, d.print_progress, d.print_realtime = threads, False, False
        self._prompt = b""  # kept alive while whisper_full reads it
        self._language = language.encode()  # the same
        self.multilingual = bool(lib.whisper_is_multilingual(ctx))
        self.language = language

    def prefix(self, language: str | None = None) -> list[int]:
        """The decoder's prompt before the text, as whisper_full builds it: start of
        transcript, then for a multilingual model the language and the task, then no
        timestamps. `language` (default: the scorer's) matters only to a multilingual model."""
        if not self.multilingual:
            return [self.sot, self.notimestamps]
        lang = int(self.lib.whisper_lang_id((language or self.language).encode()))
        if lang < 0:
            raise RescoreError(f"whisper knows no language {language!r}")
        lang_token = int(self.lib.whisper_token_lang(self.ctx, lang))
        return [self.sot, lang_token, int(self.lib.whisper_token_transcribe(self.ctx)),
                self.notimestamps]  # fmt: skip

    def _check_layout(self) -> None:
        p = self.defaults
        got = {k: getattr(p, k) for k in _DEFAULTS}
        got.update({f"vad_params.{k}": getattr(p.vad_params, k) for k in _VAD_DEFAULTS})
        want = {**_DEFAULTS, **{f"vad_params.{k}": v for k, v in _VAD_DEFAULTS.items()}}
        bad = {k: v for k, v in got.items() if not math.isclose(v, want[k], rel_tol=1e-6)}
        if bad or p.strategy != 0:
            raise RescoreError(
                "this libwhisper's whisper_full_params does not have the layout of whisper.cpp "
                f"1.8.x (read {bad}); rescoring is off"
            )

    def tokens(self, text: str) -> list[int]:
        buf = (_I * 256)()
        n = int(self.lib.whisper_tokenize(self.ctx, text.encode(), buf, 256))
        if n < 0:
            raise RescoreError(f"cannot tokenize {text!r}")
        return list(buf[:n])

    def transcribe(
        self, audio: np.ndarray, prompt: str, audio_ctx: int, max_tokens: int, retry: bool = True
    ) -> str:
        """whisper_full on `audio` (float32 mono 16 kHz) with the parameters loomd's STT
        stage gives pywhispercpp (the same library, model and parameters: the same text);
        the clip's encoding stays in the context for `score()`. Without `retry`, one greedy
        decode (no retries at higher temperatures when it looks like garbage)."""
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        p = _FullParams.from_buffer_copy(self.defaults)
        p.audio_ctx, p.max_tokens, p.single_segment, p.no_context = audio_ctx, max_tokens, 1, 1
        if not retry:
            p.temperature_inc = 0.0
        self._prompt = prompt.encode()
        p.initial_prompt = self._prompt
        p.language = self._language
        ptr = samples.ctypes.data_as(_c.POINTER(_F))
        if self.lib.whisper_full(self.ctx, p, ptr, len(samples)) != 0:
            raise RescoreError("whisper_full failed")
        n = int(self.lib.whisper_full_n_segments(self.ctx))
        return " ".join(
            (self.lib.whisper_full_get_segment_text(self.ctx, i) or b"")
            .decode("utf-8", errors="replace")
            .strip()
            for i in range(n)
        ).strip()

    def encode(self, audio: np.ndarray, audio_ctx: int) -> None:
        """Encode a clip for `score()` (whisper_full decoding one token only)."""
        self.transcribe(audio, "", audio_ctx, 1, retry=False)

    def greedy(self, max_tokens: int, language: str | None = None) -> Scored:
        """The most likely text of the last encoded clip, token by token (each step's best
        text token or the end of text), scored as `score()` scores a sentence: whisper's
        best guess, as a reference that needs no spelling of its own."""
        toks: list[int] = []
        total = 0.0
        n_past = 0
        for seq_token in self.prefix(language):  # the prompt: its rows are not scored
            row = self._logprobs(seq_token, n_past)
            n_past += 1
        while True:
            token = int(np.argmax(row))
            total += float(row[token])
            if token == self.eot or len(toks) >= max_tokens:
                break
            toks.append(token)
            row = self._logprobs(token, n_past)
            n_past += 1
        text = b"".join(self.lib.whisper_token_to_str(self.ctx, t) or b"" for t in toks)
        return Scored(text.decode("utf-8", errors="replace").strip(), total / (len(toks) + 1),
                      len(toks) + 1)  # fmt: skip

    def _logprobs(self, token: int, n_past: int) -> np.ndarray:
        one = (_I * 1)(token)
        if self.lib.whisper_decode(self.ctx, one, 1, n_past, self.threads) != 0:
            raise RescoreError("whisper_decode failed")
        row = np.ctypeslib.as_array(self.lib.whisper_get_logits(self.ctx), shape=(self.n_vocab,))
        row = row.astype(np.float64)
        row[self.eot + 1 :] = -np.inf  # special and timestamp tokens: never text
        top = row.max()
        return np.asarray(row - (top + math.log(float(np.exp(row - top).sum()))))

    def score(
        self,
        sentences: list[str],
        margin: float | None = None,
        language: str | None = None,
        *,
        end: bool = True,
    ) -> list[Scored]:
        """Each sentence's mean token log-probability given the last encoded clip, in the
        order given, written the way whisper writes them. Without `end`, each is scored as the
        opening of what was said: its tokens exactly as given (" Hey Jarvis,"), with no full
        stop and no end of text after them. With `margin`, the first sentence
        is the reference (whisper's own transcript) and another one's decoding stops as soon
        as it can no longer reach the reference's score minus `margin` nor the best so far
        (each token's log-probability is <= 0): its score is then an upper bound, `pruned`.
        Which sentence is best, and whether it is within the margin, is the same."""
        prefix = self.prefix(language)
        fed = len(prefix) - 1  # fed before the first scored distribution: the prompt but its last
        seqs = []
        for s in sentences:
            styled = whisper_style(s) if end else s
            toks = self.tokens(styled) if styled else []
            seqs.append([*prefix, *toks, self.eot] if end else [*prefix, *toks])
        first = [0] if margin is not None and seqs else []
        rest = sorted(range(len(first), len(seqs)), key=lambda i: seqs[i])
        out: dict[int, Scored] = {}
        prev: list[int] = []
        dists: list[np.ndarray] = []  # dists[j - fed - 1]: the distribution of seq[j]
        floor = best = -math.inf
        for i in first + rest:
            seq = seqs[i]
            keep = 0  # shared prefix with the last decoded tokens (their KV is valid)
            while keep < min(len(seq), len(prev)) and seq[keep] == prev[keep]:
                keep += 1
            # the distributions of positions <= keep are reusable (all of them for a sequence
            # that is the start of the last one: openings without an end of text)
            start = max(fed, min(keep, len(seq) - 1))
            if keep == 0:
                for j in range(fed):  # <|startoftranscript|> (language, task)
                    self._logprobs(seq[j], j)
            del dists[max(0, start - fed) :]
            n = len(seq) - fed - 1  # scored: the text's tokens (and the end of text)
            total = sum(float(dists[j - fed - 1][seq[j]]) for j in range(fed + 1, start + 1))
            bound = -math.inf if margin is None or i in first else max(floor, best)
            pruned = False
            for j in range(start, len(seq) - 1):
                if total < bound * n:
                    pruned = True
                    break
                dists.append(self._logprobs(seq[j], j))
                total += float(dists[-1][seq[j + 1]])
            out[i] = Scored(sentences[i], total / n, n, pruned)
            prev = seq[: len(dists) + fed]
            if i in first and margin is not None:
                floor = total / n - margin
            elif not pruned:
                best = max(best, total / n)
        return [out[i] for i in range(len(seqs))]

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.whisper_free(self.ctx)
            self.ctx = None


def timed_score(scorer: WhisperScorer, sentences: list[str]) -> tuple[list[Scored], float]:
    began = time.perf_counter()
    got = scorer.score(sentences)
    return got, (time.perf_counter() - began) * 1000
