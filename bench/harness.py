"""Bench harness: plan, processes (workers over pipes, cleanup), RSS/CPU, machine facts."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import zmq

REPO = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """A scenario could not be measured (a worker failed, a deadline passed)."""


@dataclass(frozen=True)
class Plan:
    """How long and how often: --quick trades precision for a run under a minute."""

    duration_s: float
    repeats: int
    latency_s: float
    warmup_s: float
    idle_rss_wait_s: float
    loomd_set: tuple[str, ...] = ()  # config overrides for what-if runs (--loomd-set)
    sweep: tuple[int, ...] = ()  # offered rates for the loomd realtime sweep (--sweep)

    @classmethod
    def pick(cls, quick: bool) -> Plan:
        if quick:
            return cls(duration_s=1.5, repeats=1, latency_s=2.0, warmup_s=0.3, idle_rss_wait_s=0.5)
        return cls(
            duration_s=5.0,
            repeats=3,
            latency_s=5.0,
            warmup_s=0.5,
            idle_rss_wait_s=1.0,
            sweep=(50_000, 75_000, 100_000, 125_000, 150_000),
        )


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def die_with_parent(name: str = "") -> None:
    """Ask Linux to SIGKILL this process when the bench dies (no orphans, even on kill -9),
    and name it (`ps -o comm`, psutil's name(): how bench/profile_case.py finds it)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if name:
            libc.prctl(15, name.encode()[:15])  # PR_SET_NAME


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set (VmHWM) of a live process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def own_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_entry(
    name: str, fn: Callable[[Connection, Any], None], conn: Connection, spec: Any
) -> None:
    die_with_parent(name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; no Ctrl-C tracebacks
    try:
        fn(conn, spec)
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None


class Worker:
    """A spawned process speaking a tiny protocol over a pipe: ready, go, done, result."""

    def __init__(self, name: str, proc: BaseProcess, conn: Connection) -> None:
        self.name, self.proc, self.conn = name, proc, conn

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, kind: str, data: dict[str, Any] | None = None) -> None:
        self.conn.send((kind, data or {}))

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise BenchError(f"{self.name}: no {kind!r} within {timeout:.0f} s")
        try:
            got, data = self.conn.recv()
        except EOFError:
            raise BenchError(f"{self.name} exited (code {self.proc.exitcode})") from None
        if got == "error":
            raise BenchError(f"{self.name} failed:\n{data}")
        if got != kind:
            raise BenchError(f"{self.name}: expected {kind!r}, got {got!r}")
        return dict(data)


class Children:
    """Every process the bench starts; `close()` stops whatever is still running."""

    def __init__(self) -> None:
        self._mp = mp.get_context("spawn")
        self._procs: list[BaseProcess | subprocess.Popen[bytes]] = []

    def spawn(self, name: str, fn: Callable[[Connection, Any], None], spec: Any) -> Worker:
        parent, child = self._mp.Pipe()
        proc = self._mp.Process(
            target=_worker_entry, args=(name, fn, child, spec), name=name, daemon=True
        )
        proc.start()
        child.close()
        self._procs.append(proc)
        return Worker(name, proc, parent)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, preexec_fn=die_with_parent, **kw)
        self._procs.append(proc)
        return proc

    def stop(
        self, proc: BaseProcess | subprocess.Popen[bytes] | Worker, grace_s: float = 3.0
    ) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL."""
        if isinstance(proc, Worker):
            proc.conn.close()
            proc = proc.proc
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        else:
            if proc.is_alive():
                proc.join(grace_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(grace_s)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in list(self._procs):
            with contextlib.suppress(Exception):
                self.stop(proc, grace_s=1.0)


def wait_go(conn: Connection, timeout: float = 60.0) -> None:
    """Block until the bench says go (or closes the pipe: then go anyway, and exit soon)."""
    if not conn.poll(timeout):
        raise BenchError(f"no word from the bench within {timeout:.0f} s")
    with contextlib.suppress(EOFError):
        conn.recv()


def pub_result(cpu0: float, **fields: Any) -> tuple[str, dict[str, Any]]:
    """A publisher's last word: its figures, its peak RSS and its CPU time since `go`."""
    fields.update(peak_rss_mb=own_peak_rss_mb(), cpu_s=time.process_time() - cpu0)
    return ("result", fields)


def send_result(conn: Connection, cpu0: float, **fields: Any) -> None:
    """Report, then stay connected until the bench lets go (after the subscriber is done):
    closing a socket throws away what is still queued in it, which would count as lost."""
    conn.send(pub_result(cpu0, **fields))
    wait_go(conn, timeout=300)


def machine_info() -> dict[str, Any]:

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    freq = psutil.cpu_freq()
    git = _git("describe", "--always", "--dirty")
    dirty = _git("diff", "--name-only", "HEAD").split()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_mhz": round(freq.current) if freq else None,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "paho_mqtt": _dist_version("paho-mqtt"),
        "mosquitto": mosquitto_version(),
        "uvloop": _dist_version("uvloop"),
        "cbor2": _dist_version("cbor2"),
        "loomd": _dist_version("loomd"),
        "git": git or None,
        "git_modified": dirty,  # uncommitted changes the measured code includes
    }


class CpuWitness:
    """How much CPU *other* processes used while the bench ran (a shared machine skews
    every figure): system busy time minus the bench's own and its children's."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.load0 = os.getloadavg()[0]
        self.sys0 = psutil.cpu_times()
        self.own0 = self._own()

    @staticmethod
    def _own() -> float:
        import resource

        me, kids = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def report(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        sys1 = psutil.cpu_times()
        busy = sum(
            getattr(sys1, f) - getattr(self.sys0, f)
            for f in ("user", "nice", "system", "irq", "softirq")
        )
        steal = getattr(sys1, "steal", 0.0) - getattr(self.sys0, "steal", 0.0)
        own = self._own() - self.own0
        return {
            "wall_s": round(wall, 1),
            "bench_cpu_cores": round(own / wall, 2),
            "other_cpu_cores": round(max(0.0, busy - own) / wall, 2),
            "steal_cores": round(steal / wall, 2),
            "loadavg_start": round(self.load0, 2),
            "loadavg_end": round(os.getloadavg()[0], 2),
        }


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    except OSError:
        return ""
    return out.stdout.strip()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def _ratio(a: float | None, b: float | None, nd: int) -> float | None:
    return round(a / b, nd) if a is not None and b else None


def _round(v: float | None, nd: int) -> float | None:
    if v is None:
        return None
    return round(v) if nd == 0 else round(v, nd)


def target_check(value: Any, op: str, bound: float) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": f"{op} {bound:g}", "pass": False}
    ok = value >= bound if op == ">=" else value <= bound
    return {"value": value, "target": f"{op} {bound:g}", "pass": bool(ok)}


def _fmt_eps(v: float | None) -> str:
    return f"{v:>10,.0f}" if v is not None else f"{'n/a':>10}"


def _fmt_num(v: float | None, nd: int) -> str:
    return f"{v:.{nd}f}" if v is not None else "-"


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return out.splitlines()[0] if out else "unknown"


def small_models_dir() -> Path:
    """The small real models' folder: `$LOOMD_TEST_MODELS`, else where
    scripts/fetch-test-models puts them (`${XDG_CACHE_HOME:-~/.cache}/loomd-test-models`)."""
    if os.environ.get("LOOMD_TEST_MODELS"):
        return Path(os.environ["LOOMD_TEST_MODELS"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "loomd-test-models"


def need_test_models() -> Path:
    """The folder, or exit with what to run when it holds no models."""
    root = small_models_dir()
    if not (root / "models.json").is_file():
        sys.exit(f"no test models in {root}: run scripts/fetch-test-models")
    return root


async def wait_daemon_op(endpoint: str, op: str, timeout: float = 60.0) -> None:
    """Until the daemon at `endpoint` answers the control op `op` (its component is up)."""
    from loomd.sdk import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            async with Client(endpoint, name="bench", timeout=2) as bus:
                await bus.call(op)
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def daemon_config(root: Path, body: str, daemon: str = 'device_id = "bench"') -> Path:
    """`root/loomd.toml` for a bench daemon: `[daemon]` (`daemon`, its lines), its paths
    under `root`, then `body` (the sections the bench is about; `[metrics]` among them)."""
    cfg = root / "loomd.toml"
    cfg.write_text(
        f"[daemon]\n{daemon}\n[paths]\n"
        f'runtime_dir = "{root}/run"\nstate_dir = "{root}/state"\ncache_dir = "{root}/cache"\n'
        + body
    )
    return cfg


def wait_settled(pid: int, timeout_s: float = 60.0, window_s: float = 0.5) -> float:
    """Seconds until the process `pid` is idle: under 5 % of a core over `window_s`. A
    daemon on its defaults goes on starting after READY (the assist builds its sentences
    in a thread for seconds): measured then, its CPU per event and a call's tail are the
    start's, not the bus's. Past `timeout_s`, a BenchError."""
    proc = psutil.Process(pid)
    t0 = time.perf_counter()

    def used() -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    last = used()
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(window_s)
        now = used()
        if now - last < 0.05 * window_s:
            return time.perf_counter() - t0
        last = now
    raise BenchError(f"process {pid} still busy {timeout_s:g} s after it was ready")


def spawn_daemon(cfg: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """`python -m loomd.daemon --config cfg`, its output dropped unless `popen` says where."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "loomd.daemon", "--config", str(cfg)], **popen)


def raw_dealer(endpoint: str, **opts: Any) -> zmq.Socket[bytes]:
    """A bare ZeroMQ client (`opts`: socket options by name, `RCVHWM=1`): what a hostile
    or buggy client library would use."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        sock.setsockopt(getattr(zmq, k), v)
    sock.connect(endpoint)
    return sock


async def control_replies(
    s: zmq.Socket[bytes], n: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Up to `n` control replies on a `raw_dealer` within `timeout` (deliveries skipped)."""
    from loomd.bus import cbor, wire

    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        try:
            f = s.recv(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.002)
            continue
        if f[0] == wire.CONTROL:
            out.append(wire.unpack_control(f, cbor.CONTROL_OUT))
    return out


@contextlib.asynccontextmanager
async def background(*work: Coroutine[Any, Any, Any]) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run `work` as tasks while the block runs; cancelled (and awaited) when it ends."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def mqtt_map(direction: str, mqtt: str, bus: str, **opts: str | int) -> str:
    """One `[[mqtt.map]]` table of loomd.toml; `opts` are its other keys (qos, codec, ...)."""
    lines = ["[[mqtt.map]]", f'direction = "{direction}"', f'mqtt = "{mqtt}"', f'bus = "{bus}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in opts.items()]
    return "\n".join(lines) + "\n"
