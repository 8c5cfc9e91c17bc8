"""Supervised worker processes for the model stages (speech to text, wake word, text to
speech): a native crash in whisper.cpp, ONNX Runtime or Piper kills the worker, not the
daemon.

A worker process is a plain subprocess (`python -m loomd.audio.worker SPECS_JSON`, not
multiprocessing's spawn, which re-imports the parent's `__main__`) serving one or more
kinds (`Host`), each with two pipes framed by multiprocessing's `Connection` and a thread
of its own. It loads each kind's model once (the kind's factory, named in `KINDS`), says
`ready` on that kind's pipe, then answers one request at a time per kind. The parent drives
each kind from one dedicated thread (`Worker`); if the process dies mid-call, that call
raises `WorkerDied` and a fresh process is started at once, before any call queued behind
it; the other kinds in it find it dead at their next call."""

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

__all__ = ["KINDS", "Host", "Worker", "WorkerDied", "WorkerError"]

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


class Host:
    """One worker process serving one or more kinds (the wake word and TTS share one: one
    Python, NumPy and ONNX Runtime instead of two, ~40 MB of PSS), each kind on its own
    pipe pair and its own thread in the process, so a long synthesis never holds up a wake
    call. The kinds are fixed at the first start; a restart starts them all again. `gen`
    counts the processes started: a `Worker` holding pipes of an older one knows its
    process died, even when another kind's worker already restarted it."""

    def __init__(self) -> None:
        self.specs: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.gen = 0
        self._conns: dict[str, tuple[Any, Any]] = {}
        self._ready: dict[str, tuple[str, Any]] = {}
        self._codes: dict[int, int | None] = {}

    def add(self, kind: str, args: tuple[Any, ...]) -> None:
        if self.proc is not None:
            raise LoomdError(f"worker kinds are fixed once it runs; {kind!r} came late")
        self.specs[kind] = args

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return int(proc.pid) if proc is not None and proc.poll() is None else None

    def alive(self, gen: int) -> bool:
        proc = self.proc
        return gen == self.gen and proc is not None and proc.poll() is None

    def exit_code(self, gen: int) -> int | None:
        """The exit code of process `gen` (it died: its pipe closed, or it was seen dead)."""
        with self._lock:
            if gen == self.gen and self.proc is not None:
                try:
                    return self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    return None
            return self._codes.get(gen)

    def connect(self, kind: str) -> tuple[int, Any, Any, str, Any]:
        """The running process's pipes for `kind` (started if none runs) and what it said
        when it loaded that kind: (gen, send, recv, "ready" | "error", detail)."""
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                self._stop()
                self._spawn()
            send, recv = self._conns[kind]
            status, detail = self._ready[kind]
            return self.gen, send, recv, status, detail

    def restart(self, dead: int) -> None:
        """Start a fresh process if process `dead` is still the current one."""
        with self._lock:
            if dead == self.gen:
                self._stop()
                self._spawn()

    def kill(self) -> None:
        with self._lock:
            self._stop()

    def _spawn(self) -> None:
        from multiprocessing.connection import Connection

        specs, child_fds = [], []
        conns: dict[str, tuple[Any, Any]] = {}
        for kind, args in self.specs.items():
            down_r, down_w = os.pipe()
            up_r, up_w = os.pipe()
            specs.append([kind, down_r, up_w, list(args)])
            child_fds += [down_r, up_w]
            conns[kind] = (Connection(down_w, readable=False), Connection(up_r, writable=False))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "loomd.audio.worker", json.dumps(specs)],
                pass_fds=child_fds, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            for fd in child_fds:
                os.close(fd)
        ready: dict[str, tuple[str, Any]] = {}
        for kind, (_, recv) in conns.items():
            try:
                ready[kind] = tuple(recv.recv())
            except (EOFError, OSError):
                ready[kind] = ("error", f"the worker exited with code {proc.wait(5)}")
        self.gen += 1
        self.proc, self._conns, self._ready = proc, conns, ready
        if all(status != "ready" for status, _ in ready.values()):
            self._stop()

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self._codes[self.gen] = self.proc.wait(5)
            self.proc = None
        for send, recv in self._conns.values():
            send.close()
            recv.close()
        self._conns = {}


class Worker:
    """One model in a worker process. `stage` names it in errors ("STT"), `engine` in its
    model's own failures ("whisper failed: ..."); `load_hint` tells how to fix a model
    that does not load; `check` runs before each start (a cheap file check). `host`: a
    process shared with other kinds (`Host`); by default the worker has its own."""

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
        host: Host | None = None,
    ) -> None:
        if kind not in KINDS:
            raise LoomdError(f"no worker kind {kind!r}; known: {', '.join(KINDS)}")
        self.kind, self.args, self.stage, self.engine = kind, args, stage, engine
        self.load_hint, self._check = load_hint, check
        self.host = host if host is not None else Host()
        self.host.add(kind, args)
        # A worker found dead at the start of a call: restart it and make the call (STT,
        # TTS: the utterance or reply is not lost), or fail the call too (the wake word,
        # called every 80 ms: a crash almost always lands between calls, and must still
        # be reported and fail the turn it happened in).
        self.fail_found_dead = fail_found_dead
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"loomd-{kind}")
        self._gen = 0
        self._send: Any = None
        self._recv: Any = None
        self.info: Any = None  # what the worker said when it was ready
        self.calls = 0
        self.failures = 0
        self.restarts = -1  # the first start is not a restart
        self.busy = threading.Event()

    @property
    def pid(self) -> int | None:
        """The process that serves this kind (the next call adopts a restarted one)."""
        return self.host.pid if self._send is not None else None

    # -- in the worker thread -----------------------------------------------------------------
    def _start(self) -> None:
        if self._check is not None:
            self._check()
        gen, send, recv, status, detail = self.host.connect(self.kind)
        if status != "ready":
            raise ModelError(self.load_hint.replace("{detail}", str(detail)))
        self._gen, self._send, self._recv, self.info = gen, send, recv, detail
        self.restarts += 1

    def _drop(self) -> None:
        self._send = self._recv = None  # the host closes them with their process

    def _restart(self, dead: int) -> None:
        try:
            self.host.restart(dead)
            self._start()
        except LoomdError as exc:  # the next call tries again and says why
            log.warning("voice: the %s worker did not restart: %s", self.stage, exc)

    def _died(self, code: int | None) -> WorkerDied:
        dead = self._gen
        self._drop()
        log.error("voice: the %s worker died (exit code %s); restarting it", self.stage, code)
        try:
            self._pool.submit(self._restart, dead)  # runs before any call queued behind this
        except RuntimeError:
            pass  # closing: no restart
        return WorkerDied(self.stage, code)

    def _call(self, request: tuple[Any, ...]) -> Any:
        if self._send is not None and not self.host.alive(self._gen):
            code = self.host.exit_code(self._gen)  # it died between calls
            if self.fail_found_dead:
                raise self._died(code)
            log.warning("voice: the %s worker had died (exit code %s); restarting it",
                        self.stage, code)  # fmt: skip
            dead = self._gen
            self._drop()
            self.host.restart(dead)
        if self._send is None:
            self._start()
        self.busy.set()
        try:
            self._send.send(request)
            status, detail = self._recv.recv()
        except (EOFError, OSError):
            raise self._died(self.host.exit_code(self._gen)) from None
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
        """Stop the process (blocking: call it off the loop). A shared process stops with
        the first of its workers to close."""
        try:
            self._pool.submit(self.host.kill)
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


def _load(kind: str, args: list[Any], out: Any) -> Any:
    """Load one kind's model; say `ready` (or why not) on its pipe. Its handler, or None."""
    module, name = KINDS[kind].split(":")
    try:
        handle, info = getattr(importlib.import_module(module), name)(*args)
    except Exception as exc:
        out.send(("error", f"{type(exc).__name__}: {exc}"))
        return None
    out.send(("ready", info))
    return handle


def _answer(handle: Any, inbox: Any, out: Any, trim: Callable[[], object]) -> None:
    """Answer what one kind's pipe brings, one request at a time, until it closes."""
    import time

    while True:
        try:
            request = inbox.recv()
        except (EOFError, OSError):
            return
        began = time.monotonic()
        try:
            reply = ("ok", handle(request))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        out.send(reply)
        if time.monotonic() - began >= _TRIM_AFTER_S:
            trim()  # after the reply: the caller does not wait for it


def _serve(specs: list[list[Any]]) -> None:
    """The worker process: load each kind's model once, then answer each kind's pipe on a
    thread of its own."""
    from multiprocessing.connection import Connection

    trim = _trim_heap()
    threads = []
    for kind, in_fd, out_fd, args in specs:
        inbox, out = Connection(in_fd, writable=False), Connection(out_fd, readable=False)
        handle = _load(kind, args, out)
        if handle is not None:
            threads.append(threading.Thread(target=_answer, args=(handle, inbox, out, trim),
                                            name=f"serve-{kind}", daemon=True))  # fmt: skip
    trim()
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":  # python -m loomd.audio.worker '[[KIND, IN_FD, OUT_FD, ARGS], ...]'
    _serve(json.loads(sys.argv[1]))
