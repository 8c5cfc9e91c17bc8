"""Speech to text: pywhispercpp in a worker process, never on the event loop.

whisper.cpp encodes a 30 s window unless told otherwise; `audio_ctx` is sized to the
utterance (50 encoder frames a second, at least 512: below ~300 it repeats words). The
initial prompt is built from a configured vocabulary so names are spelled the way the
house spells them. `[BLANK_AUDIO]`, `(music)` and other non-speech markers are dropped."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from loomd.audio.frames import RATE
from loomd.audio.models import ModelError, model_path
from loomd.errors import LoomdError

__all__ = ["SttResult", "SttWorker", "audio_ctx_for", "clean_text", "max_tokens_for"]

log = logging.getLogger("loomd.voice.stt")

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
class SttResult:
    text: str  # cleaned; "" for no speech
    raw: str
    audio_ctx: int
    ms: float


def _serve(inbox: Any, conn: Any, path: str, threads: int) -> None:
    """The worker process: load the model once, then transcribe what the pipe brings."""
    import time

    import numpy as np
    from pywhispercpp.model import Model

    try:
        model = Model(path, n_threads=threads, print_progress=False, print_realtime=False,
                      redirect_whispercpp_logs_to=None)  # fmt: skip
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            pcm, prompt, ctx = inbox.recv()
        except EOFError:
            return
        began = time.perf_counter()
        audio = np.frombuffer(pcm, dtype=np.float32)
        kw: dict[str, Any] = {"audio_ctx": ctx, "single_segment": True, "no_context": True,
                              "max_tokens": max_tokens_for(len(audio) / RATE)}  # fmt: skip
        # pywhispercpp keeps parameters between calls: an empty prompt must be set, not left
        kw["initial_prompt"] = prompt
        try:
            text = " ".join(seg.text for seg in model.transcribe(audio, **kw)).strip()
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", (text, (time.perf_counter() - began) * 1000)))


class SttWorker:
    """One whisper model in a worker process, driven from one dedicated thread. If the
    process dies mid-utterance (a native crash, the OOM killer), that utterance fails with
    a clear error and a fresh process is started for the next one."""

    def __init__(
        self, models_dir: str, model: str, *, threads: int = 1, vocabulary: tuple[str, ...] = ()
    ) -> None:
        self.path = model_path(models_dir, model, "whisper")
        self.threads = threads
        self.prompt = ", ".join(vocabulary)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loomd-stt")
        self._proc: Any = None
        self._send: Any = None
        self._recv: Any = None
        self.calls = 0
        self.failures = 0
        self.restarts = -1  # the first start is not a restart
        self.busy = threading.Event()

    @property
    def pid(self) -> int | None:
        alive = self._proc is not None and self._proc.poll() is None
        return int(self._proc.pid) if alive else None

    def _check(self) -> None:
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if self.path.stat().st_size < 1_000_000 or magic not in (b"lmgg", b"ggml"):
            raise ModelError(
                f"whisper model {self.path} is not a ggml model (corrupt or truncated?): "
                "get ggml-tiny.en.bin from https://huggingface.co/ggerganov/whisper.cpp"
            )

    def _start(self) -> None:
        import os
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        self._check()
        # A plain subprocess (not multiprocessing's spawn, which re-imports the parent's
        # __main__): two pipes, framed by multiprocessing's Connection.
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "loomd.audio.stt", str(down_r), str(up_w), str(self.path),
             str(self.threads)],
            pass_fds=(down_r, up_w),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(down_r)
        os.close(up_w)
        send, recv = Connection(down_w, readable=False), Connection(up_r, writable=False)
        try:
            status, detail = recv.recv()
        except EOFError:
            status, detail = "error", f"the worker exited with code {proc.wait(5)}"
        if status != "ready":
            proc.kill()
            proc.wait(5)
            send.close()
            recv.close()
            raise ModelError(
                f"whisper model {self.path} did not load ({detail}): "
                "get ggml-tiny.en.bin from https://huggingface.co/ggerganov/whisper.cpp"
            )
        self._proc, self._send, self._recv = proc, send, recv
        self.restarts += 1

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._start)

    def _run(self, audio: Any, prompt: str) -> SttResult:
        if self._proc is None or self._proc.poll() is not None:
            self._stop_proc()
            self._start()
        seconds = len(audio) / RATE
        ctx = audio_ctx_for(seconds)
        self.busy.set()
        try:
            self._send.send((audio.tobytes(), prompt, ctx))
            status, detail = self._recv.recv()
        except (EOFError, OSError):
            code = self._proc.wait(5) if self._proc is not None else None
            self._stop_proc()
            raise LoomdError(f"the STT worker died (exit code {code}); restarting it") from None
        finally:
            self.busy.clear()
        if status != "ok":
            raise LoomdError(f"whisper failed: {detail}")
        raw, ms = detail
        return SttResult(clean_text(raw), raw, ctx, ms)

    def _stop_proc(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            self._proc = None
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = None

    async def transcribe(self, pcm: bytes, extra_prompt: str = "") -> SttResult:
        import numpy as np

        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        # Pad short clips: whisper drops words in clips that start or end abruptly.
        pad = np.zeros(RATE // 4, dtype=np.float32)
        audio = np.concatenate([pad, audio, pad])
        prompt = ", ".join(p for p in (self.prompt, extra_prompt) if p)
        self.calls += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._run, audio, prompt)
        except Exception:
            self.failures += 1
            raise

    def close(self) -> None:
        self._pool.submit(self._stop_proc)
        self._pool.shutdown(wait=True, cancel_futures=False)


if __name__ == "__main__":  # the worker: python -m loomd.audio.stt IN_FD OUT_FD MODEL THREADS
    import sys
    from multiprocessing.connection import Connection

    _serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
        sys.argv[3],
        int(sys.argv[4]),
    )
