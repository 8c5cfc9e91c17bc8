"""One agent's life: created -> running -> stopped | failed, with containment.

An exception in `on_event` is caught, counted and published as `loomd.agent.error`; the agent
keeps running. A crash in `start` (or of the runner) restarts the agent after a capped
backoff, and `crash_limit` crashes within `crash_window_s` mark it `failed`. Each step of a
handler is timed: one that holds the event loop longer than `slow_ms` is named in the log with
the time it held it (loop-lag attribution)."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

from loomd.agents.broker import ActionBroker, LocalProvider, Report
from loomd.agents.capability import specs_of
from loomd.agents.ctx import AgentCtx
from loomd.bus.envelope import Event, QoS
from loomd.bus.topics import validate_pattern
from loomd.errors import LoomdError, ProtocolError
from loomd.messages import ErrorCode

__all__ = ["AgentRunner", "Policy", "timed"]

log = logging.getLogger("loomd.agents.runtime")


@dataclass(frozen=True)
class Policy:
    crash_limit: int = 5
    crash_window_s: float = 60.0
    backoff_min_s: float = 0.2
    backoff_max_s: float = 30.0
    handler_timeout_s: float = 30.0
    slow_ms: float = 100.0


class CrashWindow:
    """A runner's crashes within `Policy.crash_window_s` and its capped backoff, for the
    in-process runner and the process runner alike."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.times: list[float] = []
        self.delay = policy.backoff_min_s

    def crashed(self) -> bool:
        """Count a crash now; True once `crash_limit` crashes fall within the window."""
        now = time.monotonic()
        self.times = [t for t in self.times if t > now - self.policy.crash_window_s]
        self.times.append(now)
        return len(self.times) >= self.policy.crash_limit

    async def backoff(self, began: float) -> None:
        """Wait before the next try (afresh if the last try ran longer than the window)."""
        if time.monotonic() - began > self.policy.crash_window_s:
            self.delay = self.policy.backoff_min_s
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.policy.backoff_max_s)


class _Timed:
    """Drive a coroutine step by step and time each step: a step is the time the coroutine
    held the loop, so a blocking handler is caught red-handed."""

    def __init__(self, coro: Coroutine[Any, Any, Any], report: Callable[[float], None]) -> None:
        self._coro = coro
        self._report = report

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        send: Any = None
        exc: BaseException | None = None
        while True:
            began = time.perf_counter()
            try:
                step = coro.throw(exc) if exc is not None else coro.send(send)
            except StopIteration as stop:
                self._report(time.perf_counter() - began)
                return stop.value
            except BaseException:
                self._report(time.perf_counter() - began)
                raise
            self._report(time.perf_counter() - began)
            try:
                send, exc = (yield step), None
            except BaseException as e:  # thrown in by the task (cancel): pass it on
                send, exc = None, e


def timed(coro: Coroutine[Any, Any, Any], report: Callable[[float], None]) -> Awaitable[Any]:
    return _Timed(coro, report)


class AgentRunner:
    def __init__(
        self,
        agent: Any,
        ctx: AgentCtx,
        broker: ActionBroker,
        *,
        source: str,
        policy: Policy,
        report: Report,
    ) -> None:
        self.agent = agent
        self.id: str = ctx.id
        self.ctx = ctx
        self.broker = broker
        self.source = source
        self.policy = policy
        self._report = report  # (code, message, details) -> loomd.error / loomd.agent.error
        self.state = "created"
        self.restarts = 0
        self.errors = 0
        self.events = 0
        self.last_error = ""
        self.slow_steps = 0
        self.max_step_ms = 0.0
        self.reload_error = ""
        self.provider = LocalProvider(self.id)
        self.task: asyncio.Task[None] | None = None
        self._crashes = CrashWindow(policy)
        self._stopping = False

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(getattr(self.agent, "topics", ()) or ())

    def capability_names(self) -> list[str]:
        return sorted(self.provider.fns)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "state": self.state,
            "topics": list(self.topics),
            "capabilities": self.capability_names(),
            "restarts": self.restarts,
            "errors": self.errors,
            "events": self.events,
            "last_error": self.reload_error or self.last_error,
            "max_step_ms": round(self.max_step_ms, 1),
        }

    # -- timing -----------------------------------------------------------------------------
    def _step(self, what: str) -> Callable[[float], None]:
        def report(dt: float) -> None:
            ms = dt * 1000
            if ms > self.max_step_ms:
                self.max_step_ms = ms
            if ms >= self.policy.slow_ms:
                self.slow_steps += 1
                log.warning(
                    "agent %s held the event loop for %.0f ms in %s "
                    "(use ctx.run_blocking for blocking work)",
                    self.id, ms, what,
                )  # fmt: skip

        return report

    # -- the life ---------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            began = time.monotonic()
            try:
                await self._once()
                self.state = "stopped"
                return
            except asyncio.CancelledError:
                self.state = "stopped" if self.state != "failed" else "failed"
                raise
            except _Fatal as exc:
                self._fail(str(exc))
                return
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                self.last_error = why
                self._report(
                    ErrorCode.AGENT_CRASHED,
                    f"agent {self.id} crashed: {why}",
                    {"agent": self.id, "traceback": _tb(exc)},
                )
                if self._crashes.crashed():
                    self._fail(
                        f"crashed {len(self._crashes.times)} times in "
                        f"{self.policy.crash_window_s:g} s; last: {why}"
                    )
                    return
                self.state = "backoff"
                self.restarts += 1
                await self._crashes.backoff(began)

    def _fail(self, why: str) -> None:
        self.state = "failed"
        self.last_error = why
        self._report(ErrorCode.AGENT_FAILED, f"agent {self.id} failed: {why}", {"agent": self.id})

    def _register_capabilities(self) -> None:
        self.provider.fns.clear()
        found = (
            self.agent.capabilities()
            if hasattr(self.agent, "capabilities") and callable(self.agent.capabilities)
            else specs_of(self.agent)
        )
        for spec, fn in found:
            try:
                self.broker.register(spec, self.provider)
            except LoomdError as exc:
                self._report(ErrorCode.CAPABILITY_DUPLICATE, str(exc), {"agent": self.id})
                continue
            self.provider.add(spec, fn)

    async def _once(self) -> None:
        self.state = "starting"
        patterns = [*self.topics, self.ctx.inbox]
        for p in patterns:
            try:
                validate_pattern(p)
            except ProtocolError as exc:
                raise _Fatal(f"invalid topic pattern {p!r}: {exc.detail or exc.reason}") from None
        start = getattr(self.agent, "start", None)
        if start is not None:
            await timed(start(self.ctx), self._step("start"))
        self._register_capabilities()
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=256)
        subs = [self.ctx.bus.subscribe(p, QoS.RELIABLE) for p in patterns]
        try:
            async with asyncio.TaskGroup() as tg:
                for sub in subs:
                    tg.create_task(_pump(sub, queue))
                for sub in subs:
                    await sub.ready()
                self.state = "running"
                await self.ctx.bus.publish(
                    "loomd.agent.up", {"agent": self.id}, qos=QoS.REALTIME, wait=False
                )
                while True:
                    ev = await queue.get()
                    await self._handle(ev)
        finally:
            self.broker.unregister_provider(self.provider)
            for sub in subs:
                await sub.close()
            if self.state == "running":
                self.state = "stopping"

    async def _handle(self, ev: Event) -> None:
        self.events += 1
        try:
            async with asyncio.timeout(self.policy.handler_timeout_s):
                await timed(self.agent.on_event(self.ctx, ev), self._step(f"on_event({ev.topic})"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors += 1
            if isinstance(exc, TimeoutError):
                why = f"on_event did not return within {self.policy.handler_timeout_s:g} s"
            else:
                why = f"{type(exc).__name__}: {exc}"
            self.last_error = why
            details = {
                "agent": self.id,
                "event_id": ev.id.hex(),
                "topic": ev.topic,
                "error": why,
                "traceback": _tb(exc),
            }
            log.warning("agent %s: on_event(%s) failed: %s", self.id, ev.topic, why)
            self._report(ErrorCode.AGENT_ERROR, f"agent {self.id}: {why}", details)

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel the event loop of the agent, then call its `stop`."""
        self._stopping = True
        task = self.task
        was_running = self.state in ("running", "starting", "stopping")
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        stop = getattr(self.agent, "stop", None)
        if was_running and stop is not None:
            try:
                async with asyncio.timeout(timeout):
                    await stop(self.ctx)
            except Exception as exc:
                self._report(
                    ErrorCode.AGENT_STOP_FAILED,
                    f"agent {self.id}: stop raised {exc!r}",
                    {"agent": self.id},
                )
        if self.state != "failed":
            self.state = "stopped"
        try:
            await self.ctx.bus.publish(
                "loomd.agent.down", {"agent": self.id}, qos=QoS.REALTIME, wait=False
            )
        except LoomdError:
            pass


class _Fatal(Exception):
    """A mistake a restart cannot fix (an invalid pattern): fail at once."""


async def _pump(sub: Any, queue: asyncio.Queue[Event]) -> None:
    async for ev in sub:
        await queue.put(ev)


def _tb(exc: BaseException) -> str:
    lines = traceback.format_exception(exc)
    return "".join(lines[-6:])[-2000:]
