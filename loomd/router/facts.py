"""Measured facts about the board: temperature, CPU pressure, memory, and what a model needs.

Everything here reads files the hardened unit may read (`/sys/class/thermal`,
`/proc/pressure`, `/proc/meminfo`, the cgroup's own files); `/proc/loadavg` is hidden by
`ProcSubset=pid`, so it is not used.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from loomd.errors import LoomdError

__all__ = [
    "Ema",
    "ModelShape",
    "cpu_pressure",
    "cpu_temp_c",
    "fit_problem",
    "mem_available_mb",
    "read_gguf_shape",
]


class Ema:
    """An exponential moving average; `value` is 0 until the first sample."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.value = 0.0
        self.count = 0

    def add(self, sample: float) -> None:
        self.value = sample if self.count == 0 else self.value + self.alpha * (sample - self.value)
        self.count += 1


def cpu_temp_c(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The hottest thermal zone in °C, or None where the board exposes none."""
    hottest = None
    for zone in root.glob("thermal_zone*/temp"):
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        hottest = value if hottest is None else max(hottest, value)
    return hottest


def _cgroup_dir() -> Path | None:
    try:
        line = Path("/proc/self/cgroup").read_text().strip().splitlines()[-1]
    except (OSError, IndexError):
        return None
    rel = line.split(":", 2)[-1].lstrip("/")
    path = Path("/sys/fs/cgroup") / rel
    return path if path.is_dir() else None


def cpu_pressure() -> float:
    """% of the last 10 s some runnable task waited for a CPU (PSI `some avg10`), from the
    system's file or, where that is hidden, this cgroup's `cpu.pressure`; 0 if neither."""
    candidates = [Path("/proc/pressure/cpu")]
    cg = _cgroup_dir()
    if cg is not None:
        candidates.append(cg / "cpu.pressure")
    for path in candidates:
        try:
            first = path.read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        for field in first.split():
            if field.startswith("avg10="):
                return float(field[6:])
    return 0.0


def mem_available_mb() -> float:
    """MemAvailable, capped by this cgroup's headroom (memory.max - memory.current)."""
    avail = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    cg = _cgroup_dir()
    while cg is not None and cg != Path("/sys/fs/cgroup"):
        try:
            limit = (cg / "memory.max").read_text().strip()
            if limit != "max":
                used = int((cg / "memory.current").read_text().strip())
                avail = min(avail, (int(limit) - used) / 2**20)
        except (OSError, ValueError):
            pass
        cg = cg.parent
    return avail if avail != float("inf") else 0.0


@dataclass(frozen=True)
class ModelShape:
    arch: str
    layers: int
    embd: int
    heads: int
    heads_kv: int

    def kv_bytes(self, context: int) -> int:
        """The f16 KV cache for `context` tokens: keys and values, every layer."""
        per_head = self.embd // max(self.heads, 1)
        return 2 * self.layers * context * self.heads_kv * per_head * 2


_GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


def read_gguf_shape(path: Path) -> ModelShape:
    """Read the few header fields that size a model, without loading it. Raises LoomdError
    naming the file when it is missing or not a GGUF file."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise LoomdError(f"model {path}: {exc.strerror or exc}") from None
    with f:
        try:
            return _parse_gguf(f)
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise LoomdError(f"model {path} is not a valid GGUF file ({exc})") from None


def _parse_gguf(f: object) -> ModelShape:
    import io

    assert isinstance(f, io.BufferedReader)

    def take(fmt: str) -> object:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, f.read(size))[0]

    def text() -> str:
        n = int(take("Q"))  # type: ignore[call-overload]
        if n > 1 << 20:
            raise ValueError("string too long")
        return f.read(n).decode()

    def value(kind: int) -> object:
        if kind in _GGUF_SCALARS:
            return take(_GGUF_SCALARS[kind])
        if kind == 8:
            return text()
        if kind == 9:
            inner, n = int(take("I")), int(take("Q"))  # type: ignore[call-overload]
            if inner in _GGUF_SCALARS:
                f.seek(n * struct.calcsize(_GGUF_SCALARS[inner]), os.SEEK_CUR)
            else:
                for _ in range(n):
                    value(inner)
            return None
        raise ValueError(f"unknown value type {kind}")

    if f.read(4) != b"GGUF":
        raise ValueError("no GGUF magic")
    take("I")  # version
    take("Q")  # tensors
    n_kv = int(take("Q"))  # type: ignore[call-overload]
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = text()
        meta[key] = value(int(take("I")))  # type: ignore[call-overload]
    arch = str(meta.get("general.architecture", ""))

    def num(name: str, default: int = 0) -> int:
        v = meta.get(f"{arch}.{name}", default)
        return int(v) if isinstance(v, int | float) else default

    heads = num("attention.head_count", 1)
    return ModelShape(
        arch=arch,
        layers=num("block_count"),
        embd=num("embedding_length"),
        heads=heads,
        heads_kv=num("attention.head_count_kv", heads),
    )


def fit_problem(path: Path, context: int, available_mb: float) -> tuple[str, float]:
    """Why `path` with `context` tokens cannot fit in `available_mb` ("" if it can), and
    the estimate in MB (weights are mapped, so the file size counts in full)."""
    shape = read_gguf_shape(path)
    need_mb = (path.stat().st_size + shape.kv_bytes(context)) / 2**20 + 32.0  # + compute
    if available_mb and need_mb > available_mb:
        return (
            f"model {path.name} needs about {need_mb:.0f} MB with a {context}-token context, "
            f"only {available_mb:.0f} MB available (MemAvailable and the cgroup limit); "
            "choose a smaller model or [llm] context",
            need_mb,
        )
    return "", need_mb
