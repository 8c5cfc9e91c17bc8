"""Shared fixtures: a real loomd daemon in a subprocess, watched through its sd_notify socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import pytest

from bench.services import Notifications
from tests.testmodels import MISSING, MODELS, require


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `pred` (a cheap read: HTTP, loomctl) until it is truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        _late(deadline, timeout, what)
        time.sleep(0.05)
    return value


async def eventually(pred: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """`wait_until` for in-process state (a component's, the writer thread's): polled
    every 10 ms with a deadline, for state that announces no event; returns its value."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        _late(deadline, timeout, what)
        await asyncio.sleep(0.01)
    return value


class _FromEvent(Protocol):
    @classmethod
    def from_event(cls, ev: Any) -> Self: ...


M = TypeVar("M", bound=_FromEvent)


async def first_event(sub: Any, cls: type[M], pred: Callable[[M], bool], timeout: float) -> M:
    """The first event on the subscription `sub` that, read as the message class `cls`,
    passes `pred` (events before it are skipped); `TimeoutError` after `timeout` s."""
    async with asyncio.timeout(timeout):
        while True:
            msg = cls.from_event(await sub.get())
            if pred(msg):
                return msg


@contextlib.asynccontextmanager
async def subscribed(bus: Any, *patterns: str) -> AsyncIterator[tuple[Any, ...]]:
    """A subscription per pattern (its topic's QoS), all ready before the body runs (what is
    published from then on reaches them), all closed after it."""
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(bus.subscribe(p)) for p in patterns]
        for sub in subs:
            await sub.ready()
        yield tuple(subs)


def _late(deadline: float, timeout: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class LoomdProcess:
    """One daemon with its own config, state and socket under a short temp dir."""

    def preexec(self) -> None:
        """Runs in the child before the daemon starts (resource limits, in subclasses)."""

    def __init__(self, root: Path, extra_toml: str = "", env: dict[str, str] | None = None) -> None:
        self.root = root
        self.socket = root / "run" / "bus.sock"
        self.config = root / "loomd.toml"
        self.log = root / "loomd.log"
        self.extra_toml = extra_toml
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: Notifications | None = None
        self.write_config(extra_toml)

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.socket}"

    def write_config(self, extra: str = "", device_id: str = "test-box") -> None:
        base = (
            f'[daemon]\ndevice_id = "{device_id}"\ndrain_timeout_s = 2.0\n'
            f'[paths]\nruntime_dir = "{self.root}/run"\nstate_dir = "{self.root}/state"\n'
            f'cache_dir = "{self.root}/cache"\n'
        )
        if "[metrics]" not in extra:
            base += "[metrics]\nenabled = false\n"
        self.config.write_text(base + extra)

    def start(self, timeout: float = 15.0, extra_env: dict[str, str] | None = None) -> None:
        if self.notify is None:
            self.notify = Notifications(self.root / "notify.sock")
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.notify.path),
            **self.env,
            **(extra_env or {}),
        }
        env.pop("JOURNAL_STREAM", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loomd.daemon", "--config", str(self.config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec,
            )
        try:
            self.notify.wait_for("READY=1", timeout)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"loomd did not become ready:\n{self.log.read_text()}") from None

    def pid(self) -> int:
        assert self.proc is not None and self.proc.pid > 0
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.pid(), sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self.notify is not None:
            self.notify.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plugins_section(root: Path, **plugins: str) -> str:
    """`root/plugins/<name>.py` with each plugin's code, and the `[agents]` section that
    loads those plugins only."""
    folder = root / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    for name, code in plugins.items():
        (folder / f"{name}.py").write_text(code)
    return f'[agents]\ndirs = ["{folder}"]\nentry_points = false\n'


def loomctl(d: LoomdProcess, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """`loomctl --socket <d's socket> ARGS`, as a user runs it (with the daemon's extra env)."""
    return subprocess.run(
        [sys.executable, "-m", "loomd.ctl", "--socket", str(d.socket), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **d.env},
    )


def loomctl_sub(d: LoomdProcess, pattern: str, count: int) -> subprocess.Popen[str]:
    """`loomctl sub PATTERN --json --count N --wait 20` in the background (read its stdout
    with `communicate()`; it says "subscribed to" on stderr once the daemon routes to it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "loomd.ctl", "--socket", str(d.socket), "sub", pattern,
         "--json", "--count", str(count), "--wait", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **d.env},
    )  # fmt: skip


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: ipc socket paths must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ld-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loomd_proc(short_tmp: Path) -> Iterator[LoomdProcess]:
    with LoomdProcess(short_tmp) as d:
        yield d


@pytest.fixture
def daemon(loomd_proc: LoomdProcess) -> LoomdProcess:
    loomd_proc.start()
    return loomd_proc


@pytest.fixture(scope="session")
def models() -> Path:
    """The small real models (whisper, Piper, openWakeWord, SmolLM2): skip without them."""
    return require()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("models") is not None:
        require()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line for every test skipped because the models are missing."""
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if isinstance(r.longrepr, tuple) and MISSING in str(r.longrepr[2])
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} model tests skipped: {MISSING} in {MODELS} "
            "(run scripts/fetch-test-models, or set LOOMD_TEST_MODELS)",
            yellow=True,
            bold=True,
        )
