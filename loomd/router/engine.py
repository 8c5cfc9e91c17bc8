"""The local engine: llama-cpp-python in one worker thread per model.

Everything that touches the model (load, generate, unload) runs on the engine's single
worker thread, so generations never overlap and the event loop never blocks. Requests
wait in a bounded priority queue (voice before interactive before background); tokens
cross back to the loop with `call_soon_threadsafe`; a cancelled job stops at the next
token. llama_cpp is imported on the worker, never at module import.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import heapq
import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loomd.errors import LoomdError
from loomd.router.facts import Ema, fit_problem, mem_available_mb
from loomd.router.settings import LlmSettings

__all__ = ["Engine", "GenResult", "Job", "QueueFull", "ThreadChooser"]

log = logging.getLogger(__name__)

PRIORITIES = {"voice": 0, "interactive": 1, "background": 2}


class QueueFull(LoomdError):
    pass


@dataclass
class GenResult:
    text: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    ttft_ms: float = 0.0
    tps: float = 0.0
    mean_logprob: float | None = None
    threads: int = 0
    cancelled: bool = False
    finish: str = ""

    @property
    def confidence(self) -> float:
        return math.exp(self.mean_logprob) if self.mean_logprob is not None else 0.0


@dataclass
class Job:
    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 0.7
    json_schema: dict[str, Any] | None = None
    priority: str = "background"
    # A tool turn: the output is constrained by a grammar llama-cpp-python builds from this
    # schema (loomd/router/tools.py grammar_schema); tokens stream as raw JSON.
    grammar_schema: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Ends the generation at the next token as if it reached max_tokens (not an error).
    enough: threading.Event = field(default_factory=threading.Event)
    # ("token", str) ... then ("done", GenResult) or ("error", str); filled from the worker.
    out: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)

    async def stream(self) -> AsyncIterator[str]:
        """Yield token texts; returns with the result in `self.result` (raises on error)."""
        while True:
            kind, value = await self.out.get()
            if kind == "token":
                yield value
            elif kind == "done":
                self.result: GenResult = value
                return
            else:
                raise LoomdError(str(value))


class ThreadChooser:
    """Chooses the decode thread count from measured tokens/s per count, under the load
    that is there: each count is tried once, then the best is used, and every `explore`
    generations another count is retried so a change in load (speech-to-text starting on
    the same cores) is noticed."""

    def __init__(self, fixed: int = 0, cores: int | None = None, explore: int = 8) -> None:
        self.fixed = fixed
        self.cores = cores or len(os.sched_getaffinity(0))
        self.explore = explore
        self.tps: dict[int, Ema] = {n: Ema(0.5) for n in range(1, self.cores + 1)}
        self.turn = 0

    def choose(self) -> int:
        if self.fixed:
            return self.fixed
        self.turn += 1
        for n in sorted(self.tps, reverse=True):
            if self.tps[n].count == 0:
                return n
        best = max(self.tps, key=lambda n: self.tps[n].value)
        if self.turn % self.explore == 0 and len(self.tps) > 1:
            others = [n for n in self.tps if n != best]
            return others[(self.turn // self.explore) % len(others)]
        return best

    def record(self, threads: int, tps: float) -> None:
        if threads in self.tps and tps > 0:
            self.tps[threads].add(tps)

    def view(self) -> dict[str, float]:
        return {str(n): round(e.value, 1) for n, e in self.tps.items() if e.count}


class Engine:
    """One model. `generate(job)` queues it; `serve()` (a component task) runs the queue."""

    def __init__(self, path: Path, settings: LlmSettings) -> None:
        self.path = path
        self.settings = settings  # the running `[llm]` (a reload sets it: queue_max applies)
        self.chooser = ThreadChooser(settings.threads)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loomd-llm")
        self._llm: Any = None
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._load_lock = asyncio.Lock()
        self.busy: Job | None = None
        self.tps, self.ttft_ms, self.confidence = Ema(), Ema(), Ema()
        self.load_ms = 0.0
        self.need_mb = 0.0
        self.last_used = time.monotonic()
        self.counts = {"generations": 0, "cancelled": 0, "errors": 0, "refused": 0, "loads": 0}
        self.gpu = False
        self.gpu_layers_used = 0  # layers llama.cpp was asked to offload at the last load
        self.unloaded = asyncio.Event()  # set while no model is in memory
        self.unloaded.set()
        self._grammars: collections.OrderedDict[str, Any] = collections.OrderedDict()

    # -- model lifecycle ---------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def check_fit(self) -> None:
        """Raise LoomdError with a clear message when the model cannot fit (or is not GGUF)."""
        problem, self.need_mb = fit_problem(self.path, self.settings.context, mem_available_mb())
        if problem:
            raise LoomdError(problem)

    async def load(self) -> None:
        async with self._load_lock:
            if self._llm is not None:
                return
            await asyncio.get_running_loop().run_in_executor(self._pool, self._load)
            self.unloaded.clear()

    def _load(self) -> None:
        self.check_fit()
        import llama_cpp

        began = time.perf_counter()
        gpu_layers = self.settings.gpu_layers
        if gpu_layers and not llama_cpp.llama_supports_gpu_offload():
            log.warning(
                "llm: gpu_layers = %d but this llama-cpp-python has no GPU offload; "
                "running on the CPU", gpu_layers
            )  # fmt: skip
            gpu_layers = 0
        self.gpu = gpu_layers > 0
        self.gpu_layers_used = gpu_layers
        try:
            self._llm = llama_cpp.Llama(
                str(self.path),
                n_ctx=self.settings.context,
                n_threads=self.chooser.fixed or self.chooser.cores,
                n_gpu_layers=gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise LoomdError(f"model {self.path} did not load: {exc}") from None
        self.load_ms = (time.perf_counter() - began) * 1000
        self.counts["loads"] += 1
        self.last_used = time.monotonic()
        log.info("llm: loaded %s in %.0f ms", self.path.name, self.load_ms)

    async def unload(self) -> None:
        async with self._load_lock:
            if self._llm is not None:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._unload)
                self.unloaded.set()

    def _unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
            log.info("llm: unloaded %s", self.path.name)

    async def close(self) -> None:
        for _, _, job in self._heap:
            job.cancel.set()
            job.out.put_nowait(("error", "the router is stopping"))
        self._heap.clear()
        if self.busy is not None:
            self.busy.cancel.set()
        await self.unload()  # runs on the worker after the current generation stops
        self._pool.shutdown(wait=False)  # the worker is idle now: never block the loop

    # -- the queue ---------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if len(self._heap) >= self.settings.queue_max:
            self.counts["refused"] += 1
            raise QueueFull(f"the local model's queue is full ({self.settings.queue_max} waiting)")
        prio = PRIORITIES.get(job.priority, PRIORITIES["background"])
        heapq.heappush(self._heap, (prio, next(self._seq), job))
        self._wake.set()

    def depth(self) -> int:
        return len(self._heap) + (1 if self.busy is not None else 0)

    async def serve(self) -> None:
        """Run queued jobs one at a time, highest priority first."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._heap:
                self._wake.clear()
                await self._wake.wait()
            _, _, job = heapq.heappop(self._heap)
            if job.cancel.is_set():
                job.out.put_nowait(("done", GenResult(cancelled=True, finish="cancelled")))
                self.counts["cancelled"] += 1
                continue
            self.busy = job
            try:
                await self.load()
                result = await loop.run_in_executor(self._pool, self._generate, job, loop)
            except LoomdError as exc:
                self.counts["errors"] += 1
                job.out.put_nowait(("error", str(exc)))
            except Exception as exc:  # a bug or a llama.cpp failure: report, keep serving
                self.counts["errors"] += 1
                log.exception("llm: generation failed")
                job.out.put_nowait(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            else:
                self._account(result)
                job.out.put_nowait(("done", result))
            finally:
                self.busy = None
                self.last_used = time.monotonic()

    def _account(self, r: GenResult) -> None:
        self.counts["generations"] += 1
        if r.cancelled:
            self.counts["cancelled"] += 1
        if r.tokens >= 4:  # a one-token answer says nothing about decode speed
            self.tps.add(r.tps)
            self.chooser.record(r.threads, r.tps)
        if r.tokens:
            self.ttft_ms.add(r.ttft_ms)
        if r.mean_logprob is not None:
            self.confidence.add(r.confidence)

    # -- on the worker thread ----------------------------------------------------------------
    def _generate(self, job: Job, loop: asyncio.AbstractEventLoop) -> GenResult:
        import llama_cpp
        import numpy as np

        llm = self._llm
        threads = self.chooser.choose()
        llm._ctx.set_n_threads(threads, threads)
        logprobs: list[float] = []
        prev: list[Any] = [None]

        # The probability the model gave each token it produced, read before sampling
        # (the next call sees the token chosen last time as input_ids[-1]).
        def confidence(input_ids: Any, logits: Any) -> Any:
            if prev[0] is not None:
                logprobs.append(float(prev[0][int(input_ids[-1])]))
            top = float(logits.max())
            prev[0] = logits - (top + math.log(float(np.exp(logits - top).sum())))
            return logits

        kwargs: dict[str, Any] = {}
        if job.json_schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": job.json_schema}
        if job.grammar_schema is not None:
            kwargs["grammar"] = self._grammar(job.grammar_schema)
        out = GenResult(threads=threads)
        pieces: list[str] = []
        began = time.perf_counter()
        first = 0.0
        try:
            stream = llm.create_chat_completion(
                job.messages,
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                stream=True,
                logits_processor=llama_cpp.LogitsProcessorList([confidence]),
                **kwargs,
            )
            for chunk in stream:
                if job.cancel.is_set():
                    out.cancelled, out.finish = True, "cancelled"
                    break
                if job.enough.is_set():
                    out.finish = "length"
                    break
                choice = chunk["choices"][0]
                text = choice["delta"].get("content") or ""
                if choice.get("finish_reason"):
                    out.finish = choice["finish_reason"]
                if not text:
                    continue
                if not pieces:
                    first = time.perf_counter()
                pieces.append(text)
                loop.call_soon_threadsafe(job.out.put_nowait, ("token", text))
        except (ValueError, RuntimeError) as exc:
            if "context window" in str(exc):  # "Requested tokens (N) exceed context window"
                raise LoomdError(f"prompt does not fit the model: {exc}") from None
            raise LoomdError(f"the model refused the request: {exc}") from None
        end = time.perf_counter()
        if hasattr(stream, "close"):
            stream.close()
        out.text = "".join(pieces)
        out.tokens = len(logprobs) + (1 if prev[0] is not None else 0)
        if pieces:
            out.ttft_ms = (first - began) * 1000
            if out.tokens > 1 and end > first:
                out.tps = (out.tokens - 1) / (end - first)
        if logprobs:
            out.mean_logprob = sum(logprobs) / len(logprobs)
        return out

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """llama-cpp-python's grammar for a JSON schema (its own json-schema-to-grammar
        converter); the last few are kept, since a turn's tools rarely change."""
        from llama_cpp.llama_grammar import LlamaGrammar

        key = json.dumps(schema)  # key order matters: it is the order of the keys generated
        grammar = self._grammars.pop(key, None)
        if grammar is None:
            try:
                grammar = LlamaGrammar.from_json_schema(key, verbose=False)
            except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
                # its converter asserts on schemas it does not know
                raise LoomdError(f"no grammar for these tools' schemas: {exc!r:.200}") from None
        self._grammars[key] = grammar
        while len(self._grammars) > 8:
            self._grammars.popitem(last=False)
        return grammar

    def stats(self) -> dict[str, Any]:
        return {
            "model": self.path.name,
            "loaded": self.loaded,
            "gpu": self.gpu,
            "gpu_layers": self.gpu_layers_used if self.loaded else 0,
            "tps": round(self.tps.value, 1),
            "ttft_ms": round(self.ttft_ms.value, 1),
            "confidence": round(self.confidence.value, 3),
            "load_ms": round(self.load_ms, 1),
            "queue": len(self._heap),
            "busy": self.busy is not None,
            "threads": self.chooser.view(),
            **self.counts,
        }
