"""Services a bench (or a test) starts: the loomd daemon, mosquitto."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.harness import BenchError, Children, Plan, free_port, peak_rss_mb, wait_settled


class Notifications:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []

    def wait_for(self, line: str, timeout: float = 10.0) -> list[str]:
        """Block until a datagram containing `line` arrives; return that datagram's lines."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {line!r} from loomd within {timeout} s; got {self.seen}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            lines = data.split("\n")
            self.seen.extend(lines)
            if line in lines:
                return lines

    def drain(self) -> list[str]:
        """Take every datagram already queued (sent before now); return their lines."""
        lines: list[str] = []
        self.sock.setblocking(False)
        try:
            while True:
                lines += self.sock.recv(65536).decode().split("\n")
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        self.seen.extend(lines)
        return lines

    def close(self) -> None:
        self.sock.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    ready_s: float  # spawn -> READY=1 on NOTIFY_SOCKET
    answer_s: float  # spawn -> first ping answered on the bus socket
    idle_rss_mb: float
    log_path: Path
    settle_s: float = 0.0  # answer -> idle (harness.wait_settled); not waited for under `wrap`

    @property
    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid)


def loomd_argv(config: Path, module: bool = False) -> list[str]:
    """The daemon's command: the installed entry point, or `python -m` (`module`: what a
    wrapper such as valgrind needs, the entry point being a script)."""
    exe = Path(sys.executable).parent / "loomd"
    if exe.exists() and not module:
        return [str(exe), "--config", str(config)]
    return [sys.executable, "-m", "loomd.daemon", "--config", str(config)]


def write_loomd_config(root: Path, overrides: tuple[str, ...] = ()) -> Path:
    """Defaults everywhere (queues, credit window, durable patterns, commit window) except
    paths, a quieter log and a short drain; `overrides` are `section.key=<TOML value>`."""
    sections: dict[str, dict[str, str]] = {
        "daemon": {"log_level": '"warning"', "drain_timeout_s": "1.0"},
        "paths": {"runtime_dir": f'"{root}/run"', "state_dir": f'"{root}/state"'},
        "metrics": {"enabled": "true", "port": str(free_port())},
    }
    for item in overrides:
        dotted, _, value = item.partition("=")
        section, _, key = dotted.strip().partition(".")
        if not (section and key and value):
            raise BenchError(f"--loomd-set {item!r}: expected section.key=value")
        sections.setdefault(section, {})[key] = value.strip()
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
        for name, keys in sections.items()
    )
    cfg = root / "loomd.toml"
    cfg.write_text(text)
    return cfg


def start_loomd(
    kids: Children, root: Path, plan: Plan, wrap: tuple[str, ...] = (), timeout_s: float = 15.0
) -> Daemon:
    """`wrap`: a command the daemon runs under (valgrind, say: then `timeout_s` for READY
    and the first answer must be long enough for a ~50x slower daemon)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = write_loomd_config(root, plan.loomd_set)
    sock_path = f"{root}/run/bus.sock"
    notify_path = f"{root}/notify.sock"
    log_path = root / "loomd.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, open(log_path, "wb") as logf:
        notify.bind(notify_path)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path}
        env.pop("WATCHDOG_USEC", None)
        t0 = time.perf_counter()
        argv = loomd_argv(cfg, module=bool(wrap))
        proc = kids.popen([*wrap, *argv], env=env, stdout=logf, stderr=subprocess.STDOUT)
        ready_s = _wait_ready(notify, proc, t0, log_path, timeout_s)
    answer_s = _wait_answer(sock_path, t0, timeout_s)
    settle_s = 0.0 if wrap else wait_settled(proc.pid)
    time.sleep(plan.idle_rss_wait_s)
    idle = psutil.Process(proc.pid).memory_info().rss / 2**20
    return Daemon(proc, sock_path, ready_s, answer_s, idle, log_path, settle_s)


def _wait_ready(
    notify: socket.socket, proc: subprocess.Popen[bytes], t0: float, log: Path, timeout_s: float
) -> float:
    deadline = t0 + timeout_s
    notify.settimeout(0.05)
    while time.perf_counter() < deadline:
        try:
            data = notify.recv(4096)
        except TimeoutError:
            if proc.poll() is not None:
                raise BenchError(
                    f"loomd exited ({proc.returncode}):\n{log.read_text()[-2000:]}"
                ) from None
            continue
        if b"READY=1" in data.split(b"\n"):
            return time.perf_counter() - t0
    raise BenchError(f"loomd sent no READY=1 within {timeout_s:g} s:\n{log.read_text()[-2000:]}")


def _wait_answer(sock_path: str, t0: float, timeout_s: float) -> float:
    """Seconds from spawn until an SDK client got its hello and a ping answered."""

    async def ping() -> None:
        import loomd.sdk

        async with loomd.sdk.connect(sock_path, name="bench-ready", timeout=timeout_s) as bus:
            await bus.call("ping")

    try:
        asyncio.run(ping())
    except Exception as exc:
        raise BenchError(f"loomd did not answer on {sock_path}: {exc}") from exc
    return time.perf_counter() - t0


def stop_loomd(kids: Children, d: Daemon) -> int | None:
    kids.stop(d.proc, grace_s=5.0)
    return d.proc.returncode


def start_mosquitto(kids: Children, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise BenchError("mosquitto is not installed (apt-get install -y mosquitto)")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "mosquitto.conf"
    # Defaults (in-flight window 20, queue 1000 per client), plus TCP_NODELAY. Larger
    # in-flight windows were slower here: paho rescans its whole in-flight table per PUBACK.
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "set_tcp_nodelay true\n"
        "sys_interval 1\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
    )
    with open(root / "mosquitto.log", "wb") as logf:
        proc = kids.popen([exe, "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"mosquitto exited: {(root / 'mosquitto.log').read_text()[-1000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.02)
    raise BenchError("mosquitto did not listen within 10 s")
