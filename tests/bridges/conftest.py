"""Real brokers for the bridge tests: mosquitto on a free loopback port, generated config
(plain, TLS with certificates made by openssl here, a password file), and an in-process
`Host` running the real state, bus and mqtt components."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from loomd.bridges.mqtt import MqttComponent
from loomd.host import Host
from loomd.settings import load_config
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")


class Mosquitto:
    """One broker process; `restart()` keeps the port and (persistence on) the sessions."""

    def __init__(
        self, root: Path, *, tls: bool = False, users: dict[str, str] | None = None
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "set_tcp_nodelay true",
            # as root mosquitto drops to its own user, which cannot write our temp dir
            *(["user root"] if os.geteuid() == 0 else []),
            "persistence true",
            f"persistence_location {root}/",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
        ]
        if users:
            pw = root / "passwd"
            pw.touch()
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            self.certs = make_certs(root / "certs")
            c = self.certs
            lines += [f"cafile {c / 'ca.pem'}", f"certfile {c / 'server.pem'}",
                      f"keyfile {c / 'server.key'}"]  # fmt: skip
        self.conf = root / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.log.read_text() if self.log.exists() else ""
                    raise AssertionError(f"mosquitto did not start: {err}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port)]

    def pub(self, topic: str, message: str, qos: int = 1, *extra: str) -> None:
        subprocess.run(
            ["mosquitto_pub", *self.args(), "-t", topic, "-m", message, "-q", str(qos), *extra],
            check=True, timeout=10,
        )  # fmt: skip

    def sub(self, topic: str, *extra: str) -> Sub:
        """A running mosquitto_sub printing `topic payload` lines (see `Sub`)."""
        return Sub(self, topic, extra)


class Sub:
    """mosquitto_sub in the background; lines collected by a reader thread. `ready()`
    publishes probes until one comes back, so the subscription is known to be live."""

    def __init__(self, broker: Mosquitto, topic: str, extra: tuple[str, ...]) -> None:
        self.broker = broker
        self.topic = topic
        self.proc = subprocess.Popen(
            ["mosquitto_sub", *broker.args(), "-t", topic, "-t", "probe/#", "-v", "-q", "1",
             *extra],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith("probe/"):
                self.lines.append(line.rstrip("\n"))
            else:
                self.probed = True

    probed = False

    async def ready(self, timeout: float = 10.0) -> Sub:
        async with asyncio.timeout(timeout):
            while not self.probed:
                await asyncio.to_thread(self.broker.pub, "probe/x", "p", 0)
                for _ in range(20):
                    if self.probed:
                        break
                    await asyncio.sleep(0.01)
        return self

    async def wait_distinct(self, n: int, timeout: float = 30.0) -> list[str]:
        """Until `n` different lines arrived: QoS 1 may repeat a message after a reconnect."""
        async with asyncio.timeout(timeout):
            while len(set(self.lines)) < n:  # noqa: ASYNC110 - filled by a reader thread
                await asyncio.sleep(0.01)
        return self.lines

    async def wait(self, n: int, timeout: float = 15.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while len(self.lines) < n:  # noqa: ASYNC110 - filled by a reader thread
                await asyncio.sleep(0.01)
        return self.lines

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._t.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Sub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_certs(d: Path, host: str = "localhost") -> Path:
    """A CA and a server certificate for `host` (subjectAltName), made with openssl."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{host}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")  # fmt: skip
    return d


@pytest.fixture
def broker(short_tmp: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(short_tmp / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def host_config(root: Path, mqtt: str, device_id: str = "test-box", extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "loomd.toml"
    path.write_text(
        f'[daemon]\ndevice_id = "{device_id}"\n'
        f'[paths]\nruntime_dir = "{root}/run"\nstate_dir = "{root}/state"\n'
        f'cache_dir = "{root}/cache"\n[metrics]\nenabled = false\n' + extra + mqtt
    )
    return path


@contextlib.asynccontextmanager
async def running(
    root: Path,
    mqtt: str,
    device_id: str = "test-box",
    extra: str = "",
    names: tuple[str, ...] = ("state", "bus", "mqtt"),
) -> AsyncIterator[Host]:
    """state + bus + mqtt (or `names`) in this process, real components."""
    settings = load_config(host_config(root, mqtt, device_id, extra))
    async with Host(settings, names=list(names)) as host:
        yield host


def mqtt_of(host: Host) -> MqttComponent:
    c = host.get("mqtt")
    assert isinstance(c, MqttComponent), host.status()
    return c


async def connected(host: Host, timeout: float = 10.0) -> MqttComponent:
    c = mqtt_of(host)
    await wait_for(lambda: c.connected, timeout)
    return c


@contextlib.asynccontextmanager
async def bridge(root: Path, mqtt: str) -> AsyncIterator[MqttComponent]:
    """`running()` state + bus + mqtt, once the bridge is connected to the broker."""
    async with running(root, mqtt) as host:
        yield await connected(host)


async def wait_for(cond: object, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a cheap predicate with a deadline (state the component exposes, no sleeps)."""
    await eventually(cond, timeout, what)


def mqtt_section(broker: Mosquitto, maps: str = "", **opts: object) -> str:
    lines = ["[mqtt]", "enabled = true", f"port = {broker.port}", "reconnect_min_s = 0.1",
             "reconnect_max_s = 0.5"]  # fmt: skip
    for k, v in opts.items():
        lines.append(
            f"{k} = {v!r}".replace("'", '"')
            if not isinstance(v, bool)
            else f"{k} = {str(v).lower()}"
        )
    return "\n".join(lines) + "\n" + maps


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests here on a fresh loop with a deadline (no plugin needed)."""
    fn = pyfuncitem.obj
    if not asyncio.iscoroutinefunction(fn):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    limit = float(getattr(fn, "deadline", 90.0))

    async def guarded() -> None:
        async with asyncio.timeout(limit):
            await fn(**args)

    asyncio.run(guarded())
    return True
