"""The component contract: how every part of loomd (the bus and state included) plugs in.

A component is an async context manager with a `name` (its TOML section, its metric prefix
`loomd_<name>_` and its control namespace `<name>.<op>`), a frozen `Settings` section, and:

- `start()` / `stop()`: what entering and leaving it do; background work goes through
  `spawn()`, which runs it in the component's one `asyncio.TaskGroup`. A task that raises
  is reported as a `loomd.error` event and marks the component unhealthy, or is restarted
  with capped backoff when the component (or the spawn call) says so;
- `status()`: a typed block (`StatusBlock`) for `loomctl status`;
- `metrics()`: its Prometheus families;
- `healthy()`: ANDed into the systemd watchdog ping;
- `commands()`: control operations, served as `<name>.<op>` (`loomctl <name> <op>`);
- `reload(new)`: apply new settings, return the keys that still need a restart;
- `stop_intake()` / `pending()`: the first two phases of a graceful stop.

It receives a `Context` (its settings, the `Bus` API, state, paths, an error reporter) and
never reaches back into the daemon. See docs/design/components.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, Self, TypeVar

from loomd.config import ResolvedPaths, Section
from loomd.errors import LoomdError
from loomd.messages import ControlOp, ErrorCode
from loomd.messages.base import _Payload

if TYPE_CHECKING:
    from loomd.bus.api import Bus, BusSubscription
    from loomd.bus.broker import Broker
    from loomd.bus.envelope import Event, QoS
    from loomd.bus.server import ControlHandler
    from loomd.metrics import Family
    from loomd.state import State

__all__ = [
    "Command",
    "Component",
    "Context",
    "Delivery",
    "Inbox",
    "Services",
    "StatusBlock",
    "command",
]

S = TypeVar("S", bound=Section)
P = TypeVar("P", bound=_Payload)


class StatusBlock:
    """Base of the typed status blocks (`@dataclass(frozen=True)` subclasses).

    `to_dict()` is what `loomctl status --json` shows; `lines()` is the text rendering,
    one `label: value` line per field unless a block renders itself."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _plain(dataclasses.asdict(self))  # type: ignore[call-overload]
        return data

    def lines(self) -> list[str]:
        out = []
        for key, value in self.to_dict().items():
            if isinstance(value, dict | list):
                value = (
                    ", ".join(
                        f"{k}={v}"
                        for k, v in (value.items() if isinstance(value, dict) else enumerate(value))
                    )
                    or "-"
                )
            out.append(f"{key.replace('_', ' ')}: {value}")
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Path):
        return str(value)
    return value


Handler = Callable[..., Awaitable[Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Command:
    """A control operation. `params` names the arguments in order, so `loomctl <name> <op>
    A B` can pass them positionally; keyword arguments (a JSON object or `key=value`) are
    matched by name. The handler returns a map (sent back as the reply)."""

    handler: Handler
    help: str = ""
    params: tuple[str, ...] = ()

    async def call(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
        if len(args) > len(self.params):
            raise LoomdError(
                f"too many arguments: takes {len(self.params)} ({', '.join(self.params) or 'none'})"
            )
        merged = dict(zip(self.params, args, strict=False))
        for key, value in kwargs.items():
            if key in merged:
                raise LoomdError(f"argument {key!r} given twice")
            merged[key] = value
        try:
            inspect.signature(self.handler).bind(**merged)
        except TypeError as exc:
            raise LoomdError(f"bad arguments: {exc}") from None
        return await self.handler(**merged)

    def describe(self) -> dict[str, Any]:
        return {"help": self.help, "params": list(self.params)}


def command(help: str = "", params: Sequence[str] = ()) -> Callable[[Handler], Command]:
    """Decorator form: `@command("get one key", params=["key"])` on an async function."""

    def wrap(fn: Handler) -> Command:
        return Command(fn, help or (fn.__doc__ or "").strip().split("\n")[0], tuple(params))

    return wrap


class Services:
    """What the core components provide to the others: the broker and the state store.
    Filled in as the core components start; a component started before them sees None."""

    def __init__(self, bus_socket: Path, control: ControlHandler | None = None) -> None:
        self.bus_socket = bus_socket  # where the bus listens (and clients connect)
        self.control = control  # serves `<name>.<op>` requests that arrive on the socket
        self.collect: Callable[[], Iterable[Family]] = tuple  # every component's metrics
        self.broker: Broker | None = None
        self.state: State | None = None

    async def call(self, op: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run a control operation (`status`, `voice.last`, ...) in process, as `loomctl`
        does over the socket: the same handler, with no socket session."""
        if self.control is None:
            raise LoomdError("the control plane is not running")
        return await self.control(None, ControlOp(op, args, kwargs).to_payload())


@dataclasses.dataclass(eq=False)
class Context(Generic[S]):
    """What a component gets: settings, the Bus API, state, paths, and a way to report."""

    name: str
    settings: S
    _: dataclasses.KW_ONLY
    services: Services
    state_dir: Path
    runtime_dir: Path
    cache_dir: Path
    device_id: str
    models_dir: Path
    config_path: Path | None = None  # the file the settings came from (None: built in code)
    log: logging.Logger = dataclasses.field(init=False)
    _bus: Bus | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        self.log = logging.getLogger(f"loomd.{self.name}")

    @property
    def bus(self) -> Bus:
        """This component's handle on the bus (sender = its name)."""
        if self._bus is None:
            if self.services.broker is None:
                raise LoomdError(f"{self.name}: the bus is not running yet")
            from loomd.bus.local import LocalBus

            self._bus = LocalBus(self.services.broker, self.name)
        return self._bus

    @property
    def state(self) -> State:
        if self.services.state is None:
            raise LoomdError(f"{self.name}: the state store is not open yet")
        return self.services.state

    def error(self, code: ErrorCode, message: str, **details: Any) -> None:
        """Log and publish a `loomd.error` event (rate limited by the broker)."""
        self.log.error("%s", message)
        if self.services.broker is not None:
            self.services.broker.error(code, message, component=self.name, **details)

    def receive(
        self,
        cls: type[P],
        pattern: str = "",
        *,
        code: ErrorCode = ErrorCode.BAD_PAYLOAD,
        answer: Callable[[LoomdError, Event], _Payload] | None = None,
        on_bad: Callable[[Event, LoomdError], object] | None = None,
        qos: QoS | str | None = None,
    ) -> Inbox[P]:
        """The messages of `cls` on its topic (or `pattern`), decoded: `async for msg, ev
        in ctx.receive(SayRequest)`. A malformed payload is reported once (`code`, naming
        the topic and the sender), answered with `answer(error, event)` if it was a request,
        passed to `on_bad` (a counter, say), and skipped: the next good one still comes."""

        def report(ev: Event, exc: LoomdError) -> None:
            self.error(code, f"{self.name}: bad {ev.topic} payload from {ev.sender or '?'}: "
                       f"{exc}", topic=ev.topic, sender=ev.sender)  # fmt: skip
            if on_bad is not None:
                on_bad(ev, exc)

        return Inbox(self.bus, cls, report, pattern=pattern, qos=qos, answer=answer)


class Delivery(NamedTuple, Generic[P]):
    """One message an `Inbox` decoded, with the event it came in (for `reply_to`, `sender`)."""

    msg: P
    event: Event


class Inbox(Generic[P]):
    """A subscription typed by its payload class: the one loop "subscribe, decode, report
    the malformed, keep going". Iterate it (`async for msg, ev in inbox`; it subscribes
    then and unsubscribes when the loop ends), or open it first (`async with inbox:` then
    `await inbox.ready()`) when events must not be missed between subscribing and looping.

    `report(ev, error)` is told of each malformed payload (`Context.receive` logs it and
    publishes a `loomd.error`); a request among them is answered with `answer(error,
    event)` (dropped if its requester is gone)."""

    def __init__(
        self,
        bus: Bus,
        cls: type[P],
        report: Callable[[Event, LoomdError], object],
        *,
        pattern: str = "",
        qos: QoS | str | None = None,
        answer: Callable[[LoomdError, Event], _Payload] | None = None,
    ) -> None:
        self.pattern = pattern or cls.TOPIC
        if not self.pattern:
            raise LoomdError(f"{cls.__name__} has no topic of its own: name a pattern")
        self.bus, self.cls, self.qos = bus, cls, qos
        self.report, self.answer = report, answer
        self.rejected = 0  # malformed payloads seen
        self._sub: BusSubscription | None = None

    def _open(self) -> BusSubscription:
        if self._sub is None:
            self._sub = self.bus.subscribe(self.pattern, self.qos)
        return self._sub

    def open(self) -> Self:
        """Subscribe now (events from now on are kept for the loop that comes later)."""
        self._open()
        return self

    async def ready(self) -> Self:
        await self._open().ready()
        return self

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.close()

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[Delivery[P]]:
        opened_here = self._sub is None
        sub = self._open()
        try:
            async for ev in sub:
                try:
                    msg = self.cls.from_payload(ev.payload)
                except LoomdError as exc:
                    await self._reject(ev, exc)
                    continue
                yield Delivery(msg, ev)
        finally:
            if opened_here:
                await self.close()

    async def _reject(self, ev: Event, exc: LoomdError) -> None:
        self.rejected += 1
        self.report(ev, exc)
        if self.answer is not None and ev.reply_to:
            with contextlib.suppress(LoomdError):
                await self.answer(exc, ev).respond(self.bus, ev)


@dataclasses.dataclass
class TaskCrash:
    task: str
    error: str
    at: float  # time.time()


class Component(Generic[S]):
    """Base class of every component. Subclasses set the class attributes and override
    what they need; everything has a sensible default. `Settings` is the class named in
    `Component[LampSettings]` and `name` its section (`LampSettings.SECTION`), so neither
    is written twice."""

    name: ClassVar[str]
    Settings: ClassVar[type[Section]]
    # What a missing optional dependency is called and how a user gets it.
    requires: ClassVar[tuple[str, ...]] = ()  # modules imported lazily, in start()
    extra: ClassVar[str] = ""  # pip install 'loomd[<extra>]'
    apt: ClassVar[str] = ""  # apt install <apt>
    restart_on_crash: ClassVar[bool] = False
    # A restartable task that crashes `crash_limit` times within the window is given up on.
    crash_limit: ClassVar[int] = 5
    crash_window_s: ClassVar[float] = 60.0
    backoff_s: ClassVar[tuple[float, float]] = (0.2, 30.0)  # first and longest wait
    summary: ClassVar[str] = ""  # one line for `loomd --check`
    # Friendly `loomctl` commands are not an attribute: the registry names them
    # (`loomd.components.BUILTIN_CLI`), so `loomctl` builds its parser without importing
    # the component.

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for base in cls.__dict__.get("__orig_bases__", ()):
            args = typing.get_args(base) if typing.get_origin(base) is Component else ()
            if args and isinstance(args[0], type) and issubclass(args[0], Section):
                if "Settings" not in cls.__dict__:
                    cls.Settings = args[0]
                if "name" not in cls.__dict__:
                    cls.name = cls.Settings.SECTION

    @classmethod
    def check(cls, settings: Any, paths: ResolvedPaths) -> list[str]:
        """Problems found without starting (a missing or corrupt model file, say), for
        `loomd --check` and for `enabled = "auto"` (no problem: the component starts).
        Must be cheap and import nothing heavy."""
        return []

    def __init__(self, ctx: Context[S]) -> None:
        self.ctx = ctx
        self.log = ctx.log
        self.crashes: list[TaskCrash] = []
        self._failed: str | None = None  # why the component is unhealthy
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def settings(self) -> S:
        return self.ctx.settings

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open resources and spawn background work. Raising here fails the component."""

    async def stop_intake(self) -> None:
        """Shutdown phase 1: take no new work (stop listening, unsubscribe inputs)."""

    def pending(self) -> int:
        """Shutdown phase 2: work items still in flight; the daemon drains until all are 0."""
        return 0

    async def stop(self) -> None:
        """Shutdown phase 3: release resources. Background tasks are cancelled after this."""

    async def __aenter__(self) -> Component[S]:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            await self.start()
        except BaseException:
            await self._close_group()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop()
        finally:
            await self._close_group()

    async def _close_group(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if self._tg is not None:
            tg, self._tg = self._tg, None
            await tg.__aexit__(None, None, None)
        if tasks:
            self.log.debug("%s: cancelled %d background tasks", self.name, len(tasks))

    # -- background work ----------------------------------------------------------------------
    def spawn(
        self,
        work: Callable[[], Awaitable[None]],
        name: str,
        *,
        restart: bool | None = None,
        critical: bool = True,
    ) -> asyncio.Task[None]:
        """Run `work()` in this component's task group. If it raises, the crash is published
        as `loomd.error`, and the component turns unhealthy, or (`restart`, default: the
        class's `restart_on_crash`) `work()` runs again after a capped backoff; a crash loop
        (`crash_limit` crashes in `crash_window_s`) gives up and turns it unhealthy.
        `critical=False` is for work per request or per item (one chat turn, one plugin's
        runner): its crash is reported the same way but leaves the component healthy.

        Wait with a deadline through `asyncio.timeout()`, never `asyncio.wait_for()`: on
        Python 3.11 `wait_for` swallows a cancel that arrives as the awaited thing completes
        (CPython gh-86296, fixed in 3.12), and a loop that waits that way at stop never ends
        (the daemon hung in shutdown; tests/seam/test_cancel.py)."""
        if self._tg is None:
            raise LoomdError(f"{self.name}: spawn() before start or after stop")
        again = self.restart_on_crash if restart is None else restart
        task = self._tg.create_task(
            self._supervise(work, name, again, critical), name=f"loomd.{self.name}.{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(
        self, work: Callable[[], Awaitable[None]], name: str, restart: bool, critical: bool
    ) -> None:
        first, longest = self.backoff_s
        delay = first
        while True:
            began = time.monotonic()
            try:
                await work()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._crashed(name, exc)
            if not restart:
                if critical:
                    self.fail(f"task {name} crashed: {self.crashes[-1].error}")
                return
            window = self.crash_window_s
            recent = [c for c in self.crashes if c.task == name and c.at > time.time() - window]
            if len(recent) >= self.crash_limit:
                if not critical:
                    return
                self.fail(f"task {name} crashed {len(recent)} times in {window:g} s; gave up")
                return
            if time.monotonic() - began > window:
                delay = first  # it ran fine for a while: start the backoff afresh
            self.log.warning("%s: restarting task %s in %.1f s", self.name, name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    def _crashed(self, name: str, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.crashes.append(TaskCrash(name, text, time.time()))
        del self.crashes[:-20]
        self.log.error("%s: task %s crashed: %s", self.name, name, text, exc_info=exc)
        self.ctx.error(
            ErrorCode.TASK_CRASHED, f"{self.name}: task {name} crashed: {text}", task=name
        )

    def fail(self, reason: str) -> None:
        """Mark the component unhealthy (the watchdog pings stop) with a reason."""
        if self._failed is None:
            self.log.error("%s is unhealthy: %s", self.name, reason)
        self._failed = reason

    @property
    def failure(self) -> str | None:
        return self._failed

    # -- the operator's view ------------------------------------------------------------------
    def healthy(self) -> bool:
        return self._failed is None

    def status(self) -> StatusBlock | None:
        return None

    def metrics(self) -> Iterable[Family]:
        return ()

    def commands(self) -> Mapping[str, Command]:
        return {}

    async def reload(self, new: S) -> Sequence[str]:
        """Apply `new` (its reloadable options changed; the rest kept their running values).
        Return keys that could not be applied live after all. The default just takes them:
        right for components that read `self.settings` each time they need a value."""
        self.ctx.settings = new
        return ()
