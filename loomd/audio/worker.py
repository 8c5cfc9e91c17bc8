"""Supervised worker processes for the model stages (speech to text, wake word, text to
speech): a native crash in whisper.cpp, ONNX Runtime or Piper kills the worker, not the
daemon.

A worker is a plain subprocess (`python -m loomd.audio.worker KIND IN_FD OUT_FD ARGS`, not
multiprocessing's spawn, which re-imports the parent's `__main__`) with two pipes framed by
multiprocessing's `Connection`. It loads its model once (the kind's factory, named in
`KINDS`), says `ready`, then answers one request at a time. The parent drives it from one
dedicated thread; if the process dies mid-call, that call raises `WorkerDied` and a fresh
process is started at once, before any call queued behind it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from loomd.audio.models import ModelError
from loomd.errors import LoomdError

__all__ = ["KINDS", "Worker", "WorkerDied", "WorkerError"]

log = logging.getLogger("loomd.voice.worker")

# kind -> "module:factory"; factory(*args) -> (handle(request) -> reply, info)
KINDS = {
    "stt": "loomd.audio.stt:stt_server",
    "wake": "loomd.audio.wake:wake_server",
    "tts": "loomd.audio.tts:tts_server",
}


class WorkerError(LoomdError):
    """A stage's worker could not answer: its model raised (this class) or it died."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class WorkerDied(WorkerError):
    def __init__(self, stage: str, exit_code: int | None) -> None:
        super().__init__(stage, f"the {stage} worker died (exit code {exit_code}); restarting it")
        self.exit_code = exit_code


class Worker:
    """One model in a worker process. `stage` names it in errors ("STT"), `engine` in its
    model's own failures ("whisper failed: ..."); `load_hint` tells how to fix a model
    that does not load; `check` runs before each start (a cheap file check)."""

    def __init__(
        self,
        kind: str,
        args: tuple[Any, ...],
        *,
        stage: str,
        engine: str,
        load_hint: str,
        check: Callable[[], None] | None = None,
        fail_found_dead: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise LoomdError(f"no worker kind {kind!r}; known: {', '.join(KINDS)}")
        self.kind, self.args, self.stage, self.engine = kind, args, stage, engine
        self.load_hint, self._check = load_hint, check
        # A worker found dead at the start of a call: restart it and make the call (STT,
        # TTS: the utterance or reply is not lost), or fail the call too (the wake word,
        # called every 80 ms: a crash almost always lands between calls, and must still
        # be reported and fail the turn it happened in).
        self.fail_found_dead = fail_found_dead
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"loomd-{kind}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._send: Any = None
        self._recv: Any = None
        self.info: Any = None  # what the worker said when it was ready
        self.calls = 0
        self.failures = 0
        self.restarts = -1  # the first start is not a restart
        self.busy = threading.Event()

    @property
    def pid(self) -> int | None:
        alive = self._proc is not None and self._proc.poll() is None
        return int(self._proc.pid) if alive and self._proc is not None else None

    # -- in the worker thread -----------------------------------------------------------------
    def _start(self) -> None:
        from multiprocessing.connection import Connection

        if self._check is not None:
            self._check()
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "loomd.audio.worker", self.kind, str(down_r), str(up_w),
             json.dumps(list(self.args))],
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
            raise ModelError(self.load_hint.replace("{detail}", str(detail)))
        self._proc, self._send, self._recv, self.info = proc, send, recv, detail
        self.restarts += 1

    def _stop_proc(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            self._proc = None
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = None

    def _restart(self) -> None:
        try:
            self._start()
        except LoomdError as exc:  # the next call tries again and says why
            log.warning("voice: the %s worker did not restart: %s", self.stage, exc)

    def _died(self, code: int | None) -> WorkerDied:
        self._stop_proc()
        log.error("voice: the %s worker died (exit code %s); restarting it", self.stage, code)
        try:
            self._pool.submit(self._restart)  # runs before any call queued behind this one
        except RuntimeError:
            pass  # closing: no restart
        return WorkerDied(self.stage, code)

    def _call(self, request: tuple[Any, ...]) -> Any:
        code = self._proc.poll() if self._proc is not None else None
        if self._proc is not None and code is not None and self.fail_found_dead:
            raise self._died(code)
        if self._proc is None or code is not None:
            if code is not None:
                log.warning("voice: the %s worker had died (exit code %s); restarting it",
                            self.stage, code)  # fmt: skip
            self._stop_proc()
            self._start()
        self.busy.set()
        try:
            self._send.send(request)
            status, detail = self._recv.recv()
        except (EOFError, OSError):
            raise self._died(self._proc.wait(5) if self._proc is not None else None) from None
        finally:
            self.busy.clear()
        if status != "ok":
            raise WorkerError(self.stage, f"{self.engine} failed: {detail}")
        return detail

    # -- from the event loop ------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._start)

    async def call(self, *request: Any) -> Any:
        self.calls += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._call, request)
        except Exception:
            self.failures += 1
            raise

    def close(self) -> None:
        """Stop the process (blocking: call it off the loop)."""
        try:
            self._pool.submit(self._stop_proc)
        except RuntimeError:  # already shut down
            return
        self._pool.shutdown(wait=True, cancel_futures=False)


# A request that ran this long (a synthesis, a transcription) gives its freed heap back.
_TRIM_AFTER_S = 0.1


def _trim_heap() -> Callable[[], object]:
    """glibc's malloc_trim(0): freed heap goes back to the system. Loading a model and one
    long synthesis leave tens of MB free but fragmented in the worker's heap, counted in
    its PSS for good (measured in bench/voice_memory.py). A no-op off glibc."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def _serve(kind: str, inbox: Any, out: Any, args: list[Any]) -> None:
    """The worker process: load the model once, then answer what the pipe brings."""
    import time

    module, name = KINDS[kind].split(":")
    trim = _trim_heap()
    try:
        handle, info = getattr(importlib.import_module(module), name)(*args)
    except Exception as exc:
        out.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    trim()
    out.send(("ready", info))
    while True:
        try:
            request = inbox.recv()
        except EOFError:
            return
        began = time.monotonic()
        try:
            reply = ("ok", handle(request))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        out.send(reply)
        if time.monotonic() - began >= _TRIM_AFTER_S:
            trim()  # after the reply: the caller does not wait for it


if __name__ == "__main__":  # python -m loomd.audio.worker KIND IN_FD OUT_FD ARGS_JSON
    from multiprocessing.connection import Connection

    _serve(
        sys.argv[1],
        Connection(int(sys.argv[2]), writable=False),
        Connection(int(sys.argv[3]), readable=False),
        json.loads(sys.argv[4]),
    )
