"""Bus benchmark: loomd against raw ZeroMQ and mosquitto, same machine, same run.

    .venv/bin/python bench/bus.py              # full run: a few minutes
    .venv/bin/python bench/bus.py --quick      # under a minute
    .venv/bin/python bench/bus.py --json-only  # only the final JSON line on stdout

Every publisher, broker and subscriber runs in its own process, on loopback or
`ipc://`. Throughput is what the *subscriber* receives per second (first to last
event). Progress goes to stderr; stdout gets a table, ratios, the targets of
issue 2 with PASS/MISS, and one JSON line last. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import zmq

REPO = Path(__file__).resolve().parent.parent
STAMP = struct.Struct(">QQ")  # payload prefix: event index, send time (ns)
TOPIC = "bench.x"
DURABLE_TOPIC = "action.bench.x"  # under the default durable pattern "action.#"
LATENCY_RATE = 10_000  # events/s for the latency runs
SUB_WINDOW = 4096
HWM = 20_000  # raw ZeroMQ high-water marks: the same as the loomd SDK's DEALER

# Issue 2 targets: (JSON key, comparison, bound, text).
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("loomd_realtime_64b_eps", ">=", 150_000, "cross-process realtime 64 B >= 150k ev/s"),
    ("ratio_realtime_64b_over_mosquitto_qos0", ">=", 6.0, "realtime 64 B >= 6x mosquitto QoS 0"),
    ("p99_ms_at_10k", "<=", 1.0, "p99 <= 1 ms at 10k ev/s"),
    ("loomd_reliable_eps", ">=", 50_000, "reliable durable >= 50k ev/s"),
    ("reliable_lost", "<=", 0, "reliable: nothing acknowledged lost"),
    ("inproc_eps", ">=", 300_000, "in-process >= 300k ev/s"),
    ("idle_rss_mb", "<=", 60.0, "daemon idle RSS <= 60 MB"),
    ("ready_s", "<=", 1.0, "start to READY <= 1 s"),
)


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


# --- process plumbing ----------------------------------------------------------------------


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


# --- worker specs, payloads, tallies -------------------------------------------------------


@dataclass(frozen=True)
class PubSpec:
    endpoint: str
    topic: str = TOPIC
    size: int = 64
    duration_s: float = 1.0
    rate: float = 0.0  # events/s on a time schedule; 0 = as fast as possible
    qos: str = "realtime"  # loomd: realtime | reliable; mqtt: "0" | "1"
    stamped: bool = False  # index and send time in the payload (latency, loss check)
    window: int = 20  # mqtt QoS 1: messages in flight (paho's default)


@dataclass(frozen=True)
class SubSpec:
    endpoint: str
    pattern: str = TOPIC
    qos: str = "realtime"
    deadline_s: float = 60.0  # hard stop after ready
    idle_s: float = 0.5  # after the publisher is done, stop this long after the last event
    latency: bool = False
    track: bool = False  # record event indexes: loss and duplicate check
    warmup_s: float = 0.5  # latency samples in the first warmup_s are discarded


def payload(size: int, index: int = 0, stamped: bool = False) -> bytes:
    if not stamped:
        return b"\x00" * size
    return STAMP.pack(index, time.time_ns()) + b"\x00" * (size - STAMP.size)


class Schedule:
    """A fixed-rate schedule that never drifts: `due()` is how many events are owed now.

    Publishers wake once per tick and send what is owed, so at 10k ev/s events leave
    in bursts of about 10 per 1 ms (uvloop's timers have 1 ms resolution; the sync
    publishers use the same tick so every transport sees the same traffic shape).
    """

    TICK_S = 0.001

    def __init__(self, rate: float, duration_s: float) -> None:
        self.rate = rate
        self.total = int(rate * duration_s)
        self.start = time.perf_counter()
        self.sent = 0

    def due(self) -> int:
        return min(self.total, int((time.perf_counter() - self.start) * self.rate) + 1) - self.sent

    def wait_s(self) -> float:
        """Seconds to sleep before the next event is owed (at least one tick)."""
        return max(self.TICK_S, self.start + self.sent / self.rate - time.perf_counter())

    @property
    def finished(self) -> bool:
        return self.sent >= self.total


class Tally:
    """What a subscriber saw: count, first/last arrival, latencies, indexes."""

    def __init__(self, spec: SubSpec) -> None:
        self.spec = spec
        self.n = 0
        self.first = 0.0
        self.last = 0.0
        self.first_ns = 0
        self.cpu0 = time.process_time()
        self.lat = array("q")
        self.ages = array("q")  # sampled event age under load (throughput runs)
        self.seen = bytearray()
        self.unique = 0
        self.dups = 0
        self.top = -1  # highest index seen

    def arrive(self) -> None:
        now = time.perf_counter()
        if not self.n:
            self.first, self.first_ns = now, time.time_ns()
        self.n += 1
        self.last = now

    def latency(self, sent_ns: int, now_ns: int) -> None:
        if now_ns - self.first_ns >= self.spec.warmup_s * 1e9:
            self.lat.append(now_ns - sent_ns)

    def index(self, i: int) -> None:
        if i >= len(self.seen):
            self.seen.extend(bytes(max(i + 1 - len(self.seen), 65536)))
        self.top = max(self.top, i)
        if self.seen[i]:
            self.dups += 1
        else:
            self.seen[i] = 1
            self.unique += 1

    @property
    def count(self) -> int:
        return self.unique if self.spec.track else self.n

    def result(self, stop: Stopper) -> dict[str, Any]:
        span = self.last - self.first
        expect = stop.expect
        out: dict[str, Any] = {
            "stopped": stop.reason,
            "received": self.n,
            "eps": (self.n - 1) / span if self.n > 1 and span > 0 else 0.0,
            "span_s": span,
            "peak_rss_mb": own_peak_rss_mb(),
            "cpu_s": time.process_time() - self.cpu0,
        }
        if self.spec.latency:
            out["latency_ms"] = latency_summary(self.lat)
        if self.ages:
            out["age_ms"] = latency_summary(self.ages)
        if self.spec.track:
            n = expect if expect is not None else self.top + 1
            out["missing"] = n - sum(self.seen[:n])
            out["duplicates"] = self.dups
            out["unexpected"] = sum(self.seen[n:])
        return out


def latency_summary(samples_ns: array[int]) -> dict[str, float | int]:
    if not samples_ns:
        return {"n": 0}
    ordered = sorted(samples_ns)

    def q(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)] / 1e6

    return {
        "n": len(ordered),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": ordered[-1] / 1e6,
    }


class Stopper:
    """When a subscriber stops: the publisher is done and (everything arrived, or nothing
    arrived for idle_s), or the hard deadline passed."""

    def __init__(self, conn: Connection, spec: SubSpec) -> None:
        self.conn, self.spec = conn, spec
        self.deadline = time.perf_counter() + spec.deadline_s
        self.done_at: float | None = None
        self.expect: int | None = None
        self.reason = ""  # why it stopped: complete, idle or deadline

    def should_stop(self, tally: Tally) -> bool:
        now = time.perf_counter()
        if self.done_at is None and self.conn.poll():
            _, data = self.conn.recv()
            self.done_at, self.expect = now, data.get("expect")
        if now >= self.deadline:
            self.reason = "deadline"
        elif self.done_at is None:
            return False
        elif self.expect is not None and tally.count >= self.expect:
            self.reason = "complete"
        elif now - max(tally.last, self.done_at) >= self.spec.idle_s:
            self.reason = "idle"
        return bool(self.reason)


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


# --- raw ZeroMQ: PUB -> zmq.proxy(XSUB/XPUB) -> SUB ----------------------------------------


def raw_proxy(conn: Connection, endpoints: tuple[str, str]) -> None:
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for s in (xsub, xpub):
        s.setsockopt(zmq.SNDHWM, HWM)
        s.setsockopt(zmq.RCVHWM, HWM)
    xsub.bind(endpoints[0])
    xpub.bind(endpoints[1])
    conn.send(("ready", {}))
    zmq.proxy(xsub, xpub)  # forever: the bench stops this process


def raw_pub(conn: Connection, spec: PubSpec) -> None:
    sock = zmq.Context().socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(spec.endpoint)
    time.sleep(0.2)  # let the proxy forward the subscription (ZeroMQ slow joiner)
    conn.send(("ready", {}))
    wait_go(conn)
    cpu0 = time.process_time()
    prefix = spec.topic.encode()
    send = sock.send
    t0 = time.perf_counter()
    sent = 0
    if spec.rate:
        sched = Schedule(spec.rate, spec.duration_s)
        while not sched.finished:
            for _ in range(sched.due()):
                send(prefix + payload(spec.size - len(prefix), sched.sent, True))
                sched.sent += 1
            time.sleep(sched.wait_s())
        sent = sched.sent
    else:
        msg = prefix + payload(spec.size - len(prefix))
        end = t0 + spec.duration_s
        while time.perf_counter() < end:
            for _ in range(1024):
                send(msg)
            sent += 1024
    elapsed = time.perf_counter() - t0
    send_result(conn, cpu0, sent=sent, elapsed_s=elapsed, expect=sent)
    sock.close(linger=0)


def raw_sub(conn: Connection, spec: SubSpec) -> None:
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.SUBSCRIBE, spec.pattern.encode())
    sock.connect(spec.endpoint)
    conn.send(("ready", {}))
    tally, stop = Tally(spec), Stopper(conn, spec)
    skip = len(spec.pattern)
    recv = sock.recv
    inspect = spec.latency
    while True:
        try:
            msg = recv(zmq.NOBLOCK)
        except zmq.Again:
            if stop.should_stop(tally):
                break
            sock.poll(20)
            continue
        tally.arrive()
        if inspect:
            now = time.time_ns()
            tally.latency(STAMP.unpack_from(msg, skip)[1], now)
        if not tally.n & 0xFFFF and stop.should_stop(tally):
            break
    conn.send(("result", tally.result(stop)))
    sock.close(linger=0)


# --- mosquitto + paho-mqtt -----------------------------------------------------------------


def _mqtt_client(name: str, port: int, window: int = 20) -> Any:
    import paho.mqtt.client as mqtt

    def nodelay(client: Any, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}", protocol=mqtt.MQTTv311
    )
    client.on_socket_open = nodelay
    client.max_inflight_messages_set(window)  # only allowed before connecting
    client.connect("127.0.0.1", port, keepalive=60)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise BenchError("mqtt: no CONNACK within 10 s")
        client.loop(0.05)
    return client


def mqtt_pub(conn: Connection, spec: PubSpec) -> None:
    qos = int(spec.qos)
    client = _mqtt_client("bench-pub", int(spec.endpoint), spec.window)
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1

    if qos:
        client.on_publish = on_publish
    conn.send(("ready", {}))
    wait_go(conn)
    cpu0 = time.process_time()
    publish, topic, window = client.publish, spec.topic, spec.window

    def send(data: bytes) -> None:
        while qos and sent - acked >= window:
            client.loop(0.1)  # read PUBACKs: the QoS 1 window is full
        publish(topic, data, qos=qos)
        if client.want_write():  # socket buffer full: wait like a blocking socket would
            client.loop(0.1)

    t0 = time.perf_counter()
    sent = 0
    if spec.rate:
        sched = Schedule(spec.rate, spec.duration_s)
        while not sched.finished:
            for _ in range(sched.due()):
                send(payload(spec.size, sched.sent, True))
                sched.sent += 1
                sent += 1
            time.sleep(sched.wait_s())
    else:
        msg = payload(spec.size)
        end = t0 + spec.duration_s
        while time.perf_counter() < end:
            for _ in range(256):
                send(msg)
                sent += 1
    deadline = time.monotonic() + 30
    while (client.want_write() or (qos and acked < sent)) and time.monotonic() < deadline:
        client.loop(0.1)
    elapsed = time.perf_counter() - t0
    acked_or_none = acked if qos else None
    send_result(conn, cpu0, sent=sent, acked=acked_or_none, elapsed_s=elapsed, expect=sent)
    client.disconnect()


class BrokerDrops:
    """mosquitto's own count of publishes it dropped ($SYS, refreshed every sys_interval)."""

    TOPIC = "$SYS/broker/publish/messages/dropped"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.value: int | None = None
        self.at = 0.0
        client.message_callback_add(self.TOPIC, self._on)
        client.subscribe(self.TOPIC, qos=0)

    def _on(self, client: Any, userdata: Any, msg: Any) -> None:
        self.value, self.at = int(msg.payload), time.monotonic()

    def read(self, newer_than: float, timeout: float = 1.6) -> int | None:
        """The value published after `newer_than`; mosquitto publishes $SYS values only when
        they change, so no update within one sys_interval (1 s) means it did not change."""
        deadline = time.monotonic() + timeout
        while (self.value is None or self.at <= newer_than) and time.monotonic() < deadline:
            self.client.loop(0.05)
        return self.value


def mqtt_sub(conn: Connection, spec: SubSpec) -> None:
    client = _mqtt_client("bench-sub", int(spec.endpoint))
    subscribed: list[bool] = []
    client.on_subscribe = lambda *_: subscribed.append(True)
    client.subscribe(spec.pattern, qos=int(spec.qos))
    deadline = time.monotonic() + 10
    while not subscribed:
        if time.monotonic() > deadline:
            raise BenchError("mqtt: no SUBACK within 10 s")
        client.loop(0.05)
    broker_drops = BrokerDrops(client)
    drops0 = broker_drops.read(newer_than=0.0)
    tally, stop = Tally(spec), Stopper(conn, spec)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        tally.arrive()
        if spec.latency:
            now = time.time_ns()
            tally.latency(STAMP.unpack_from(msg.payload)[1], now)

    client.on_message = on_message
    conn.send(("ready", {}))
    loop = client.loop
    while not stop.should_stop(tally):
        for _ in range(4096):
            n0 = tally.n
            loop(0.02)  # paho's own network loop step (what loop_forever() runs)
            if tally.n == n0:
                break  # idle: time to ask whether to stop
    result = tally.result(stop)
    drops1 = broker_drops.read(newer_than=time.monotonic())
    if drops0 is not None and drops1 is not None:
        result["dropped_broker"] = drops1 - drops0
    conn.send(("result", result))
    client.disconnect()


# --- loomd SDK clients (uvloop) ------------------------------------------------------------


def loomd_pub(conn: Connection, spec: PubSpec) -> None:
    import uvloop

    uvloop.run(_loomd_pub(conn, spec))


async def _wait_go_async(conn: Connection, timeout: float = 60.0) -> None:
    """`wait_go` that keeps the event loop (and the SDK client) running meanwhile."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        async with asyncio.timeout(timeout):
            await readable.wait()
    except TimeoutError:
        raise BenchError(f"no word from the bench within {timeout:.0f} s") from None
    finally:
        loop.remove_reader(conn.fileno())
    with contextlib.suppress(EOFError):
        conn.recv()


async def _loomd_pub(conn: Connection, spec: PubSpec) -> None:
    import loomd.sdk

    async with loomd.sdk.connect(spec.endpoint, name="bench-pub") as bus:
        conn.send(("ready", {}))
        await _wait_go_async(conn)
        cpu0 = time.process_time()
        publish, topic, qos = bus.publish, spec.topic, spec.qos
        t0 = time.perf_counter()
        sent = 0
        result: dict[str, Any] = {}
        if spec.qos == "reliable":
            end = t0 + spec.duration_s
            while time.perf_counter() < end:
                for _ in range(256):
                    await publish(topic, payload(spec.size, sent, True), qos=qos, wait=False)
                    sent += 1
            result["published_s"] = time.perf_counter() - t0
            try:
                await bus.flush(timeout=60)
                result["acked"] = sent
            except Exception as exc:  # an ack error: nothing can be claimed as acknowledged
                result["acked"] = 0
                result["ack_error"] = f"{type(exc).__name__}: {exc}"
        elif spec.rate:
            sched = Schedule(spec.rate, spec.duration_s)
            while not sched.finished:
                for _ in range(sched.due()):
                    await publish(topic, payload(spec.size), qos=qos)
                    sched.sent += 1
                await asyncio.sleep(sched.wait_s())
            sent = sched.sent
        else:
            msg = payload(spec.size)
            end = t0 + spec.duration_s
            while time.perf_counter() < end:
                for _ in range(256):
                    await publish(topic, msg, qos=qos)
                sent += 256
                await asyncio.sleep(0)  # let the client's pump and heartbeat run
        elapsed = time.perf_counter() - t0
        local_drops = bus.dropped
        result.update(sent=sent, dropped_local=local_drops, elapsed_s=elapsed)
        result.setdefault("expect", result.get("acked", sent - local_drops))
        conn.send(pub_result(cpu0, **result))
        await _wait_go_async(conn, timeout=300)  # stay connected: see send_result


def loomd_sub(conn: Connection, spec: SubSpec) -> None:
    import uvloop

    uvloop.run(_loomd_sub(conn, spec))


def _daemon_drops(status: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in status["status"].get("drops", {}).items()}


async def _loomd_sub(conn: Connection, spec: SubSpec) -> None:
    import loomd.sdk

    async with loomd.sdk.connect(spec.endpoint, name="bench-sub") as bus:
        drops_before = _daemon_drops(await bus.status())
        sub = bus.subscribe(spec.pattern, qos=spec.qos, window=SUB_WINDOW)
        await sub.ready()
        tally, stop = Tally(spec), Stopper(conn, spec)

        async def consume() -> None:
            arrive, ages = tally.arrive, tally.ages
            if not (spec.latency or spec.track):
                async for ev in sub:
                    arrive()
                    if not tally.n & 63:  # 1 in 64: how stale events are under load
                        now = time.time_ns()
                        ages.append(now - ev.ts)
                return
            async for ev in sub:
                arrive()
                if spec.latency:
                    now = time.time_ns()
                    tally.latency(ev.ts, now)
                if spec.track:
                    tally.index(STAMP.unpack_from(ev.body_bytes())[0])

        conn.send(("ready", {}))
        task = asyncio.create_task(consume())
        while not task.done() and not stop.should_stop(tally):  # noqa: ASYNC110 - idle detection polls
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        status = await bus.status()
        drops_after = _daemon_drops(status)
        result = tally.result(stop)
        result["dropped_daemon"] = {
            k: v - drops_before.get(k, 0)
            for k, v in drops_after.items()
            if v - drops_before.get(k, 0)
        }
        result["dropped_local"] = sub.dropped
        result["daemon_latency_ms"] = status["status"].get("latency_ms")
        await sub.close()
        conn.send(("result", result))


# --- in-process broker ---------------------------------------------------------------------


def inproc(conn: Connection, spec: PubSpec) -> None:
    import uvloop

    uvloop.run(_inproc(conn, spec))


async def _inproc(conn: Connection, spec: PubSpec) -> None:
    from loomd.bus.broker import Broker
    from loomd.bus.envelope import Event
    from loomd.bus.settings import BusSettings

    broker = Broker(BusSettings(realtime_queue=4096))
    sub = broker.subscribe("bench.#", "realtime")
    last = 0.0
    received = 0

    async def consume() -> None:
        nonlocal received, last
        async for _ in sub:
            received += 1
            last = time.perf_counter()

    task = asyncio.create_task(consume())
    conn.send(("ready", {}))
    wait_go(conn)
    cpu0 = time.process_time()
    body, create, publish = payload(spec.size), Event.create, broker.publish
    t0 = time.perf_counter()
    end = t0 + spec.duration_s
    sent = 0
    while time.perf_counter() < end:
        for _ in range(256):
            publish(create(spec.topic, body, sender="bench", qos="realtime"))
        sent += 256
        await asyncio.sleep(0)  # the consumer task drains what was published
    await asyncio.sleep(0)  # one more turn: the consumer drains the last burst
    dropped = sum(broker.drops.values())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    elapsed = last - t0
    eps = received / elapsed if elapsed > 0 else 0.0
    send_result(
        conn,
        cpu0,
        sent=sent,
        received=received,
        dropped=dropped,
        eps=eps,
        unaccounted=sent - received - dropped,
    )


# --- services: the loomd daemon, mosquitto -------------------------------------------------


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: str
    ready_s: float  # spawn -> READY=1 on NOTIFY_SOCKET
    answer_s: float  # spawn -> first ping answered on the bus socket
    idle_rss_mb: float
    log_path: Path

    @property
    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid)


def loomd_argv(config: Path) -> list[str]:
    exe = Path(sys.executable).parent / "loomd"
    if exe.exists():
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


def start_loomd(kids: Children, root: Path, plan: Plan) -> Daemon:
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
        proc = kids.popen(loomd_argv(cfg), env=env, stdout=logf, stderr=subprocess.STDOUT)
        ready_s = _wait_ready(notify, proc, t0, log_path)
    answer_s = _wait_answer(sock_path, t0)
    time.sleep(plan.idle_rss_wait_s)
    idle = psutil.Process(proc.pid).memory_info().rss / 2**20
    return Daemon(proc, sock_path, ready_s, answer_s, idle, log_path)


def _wait_ready(
    notify: socket.socket, proc: subprocess.Popen[bytes], t0: float, log: Path
) -> float:
    deadline = t0 + 15
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
    raise BenchError(f"loomd sent no READY=1 within 15 s:\n{log.read_text()[-2000:]}")


def _wait_answer(sock_path: str, t0: float) -> float:
    """Seconds from spawn until an SDK client got its hello and a ping answered."""

    async def ping() -> None:
        import loomd.sdk

        async with loomd.sdk.connect(sock_path, name="bench-ready", timeout=10) as bus:
            await bus.call("ping")

    try:
        asyncio.run(ping())
    except Exception as exc:
        raise BenchError(f"loomd did not answer on {sock_path}: {exc}") from exc
    return time.perf_counter() - t0


def stop_loomd(kids: Children, d: Daemon) -> int | None:
    kids.stop(d.proc, grace_s=5.0)
    return d.proc.returncode


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return out.splitlines()[0] if out else "unknown"


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


# --- scenarios -----------------------------------------------------------------------------


@dataclass
class Run:
    """One publisher -> (broker) -> subscriber measurement."""

    pub: dict[str, Any]
    sub: dict[str, Any]
    broker_peak_rss_mb: float | None = None
    broker_cpu_s: float | None = None  # CPU the broker/daemon used from 'go' to the end


@dataclass
class Scenario:
    key: str
    label: str
    runs: list[Run] = field(default_factory=list)
    error: str | None = None
    rate_of: str = "sub"  # which side's rate is the figure: "sub" or "acked"

    def rates(self) -> list[float]:
        if self.rate_of == "acked":
            return [
                r.pub["acked"] / r.pub["elapsed_s"] for r in self.runs if r.pub.get("elapsed_s")
            ]
        return [float(r.sub["eps"]) for r in self.runs]

    @property
    def eps(self) -> float | None:
        rates = self.rates()
        return statistics.median(rates) if rates else None

    def total(self, side: str, key: str) -> int:
        return sum(int(getattr(r, side).get(key) or 0) for r in self.runs)

    def peak(self, side: str) -> float | None:
        vals = [
            r.broker_peak_rss_mb if side == "broker" else getattr(r, side).get("peak_rss_mb")
            for r in self.runs
        ]
        nums = [v for v in vals if v is not None]
        return max(nums) if nums else None

    def cpu_us_per_event(self, side: str) -> float | None:
        """CPU microseconds one process spent per event the subscriber received."""
        cpu = [
            r.broker_cpu_s if side == "broker" else getattr(r, side).get("cpu_s") for r in self.runs
        ]
        received = self.total("sub", "received")
        if not received or any(c is None for c in cpu) or not cpu:
            return None
        return sum(c for c in cpu if c is not None) / received * 1e6


def run_pair(
    kids: Children,
    name: str,
    sub_fn: Callable[[Connection, Any], None],
    sub_spec: SubSpec,
    pub_fn: Callable[[Connection, Any], None],
    pub_spec: PubSpec,
    broker_pid: int | None = None,
) -> Run:
    sub = kids.spawn(f"{name}-sub", sub_fn, sub_spec)
    pub = kids.spawn(f"{name}-pub", pub_fn, pub_spec)
    broker = psutil.Process(broker_pid) if broker_pid else None
    try:
        sub.expect("ready", 30)
        pub.expect("ready", 30)
        cpu0 = sum(broker.cpu_times()[:2]) if broker else 0.0
        pub.send("go")
        pub_res = pub.expect("result", pub_spec.duration_s + 90)
        sub.send("done", {"expect": pub_res.get("expect")})
        sub_res = sub.expect("result", sub_spec.idle_s + 30)
        if broker is None:
            return Run(pub_res, sub_res)
        return Run(pub_res, sub_res, peak_rss_mb(broker.pid), sum(broker.cpu_times()[:2]) - cpu0)
    finally:
        kids.stop(pub)
        kids.stop(sub)


def fail(sc: Scenario, exc: BenchError) -> None:
    """Record a failed scenario: the full story on stderr, its last line in the report."""
    log(f"  FAILED: {exc}")
    sc.error = str(exc).strip().splitlines()[-1]


def repeat(sc: Scenario, n: int, once: Callable[[], Run]) -> None:
    """Run a measurement n times; a failure is recorded on the scenario, never raised."""
    for i in range(n):
        log(f"{sc.label} ({i + 1}/{n})")
        try:
            sc.runs.append(once())
        except BenchError as exc:
            fail(sc, exc)
            break
    if sc.eps is not None:
        log(f"  -> {sc.eps:,.0f} ev/s")


@dataclass(frozen=True)
class Case:
    """One line of the report: what to run and how."""

    key: str  # JSON key (throughput) or latency_* (a paced run at LATENCY_RATE)
    label: str
    kind: str  # raw | mosquitto | loomd | inproc
    size: int = 64
    qos: str = "realtime"  # loomd: realtime | reliable; mosquitto: "0" | "1"

    @property
    def latency(self) -> bool:
        return self.key.startswith("latency_")

    def pub(self, plan: Plan, endpoint: str, **kw: Any) -> PubSpec:
        return PubSpec(
            endpoint,
            size=self.size,
            qos=self.qos,
            duration_s=plan.latency_s if self.latency else plan.duration_s,
            rate=LATENCY_RATE if self.latency else 0.0,
            **kw,
        )

    def sub(self, plan: Plan, endpoint: str, **kw: Any) -> SubSpec:
        return SubSpec(
            endpoint,
            qos=self.qos,
            latency=self.latency,
            deadline_s=plan.duration_s + 60,
            warmup_s=plan.warmup_s,
            **kw,
        )

    def repeats(self, plan: Plan) -> int:
        return 1 if self.latency else plan.repeats


CASES: tuple[Case, ...] = (
    Case("raw_zmq_proxy_eps", "raw pyzmq PUB -> proxy -> SUB, 64 B", "raw"),
    Case("mosquitto_qos0_eps", "mosquitto + paho QoS 0, 64 B", "mosquitto", qos="0"),
    Case("mosquitto_qos1_eps", "mosquitto + paho QoS 1, 64 B", "mosquitto", qos="1"),
    Case("loomd_realtime_64b_eps", "loomd realtime, 64 B", "loomd"),
    Case("loomd_realtime_1k_eps", "loomd realtime, 1 KiB", "loomd", size=1024),
    Case("loomd_reliable_eps", "loomd reliable durable, 64 B (acked/s)", "loomd", qos="reliable"),
    Case("inproc_eps", "loomd in-process Broker, 64 B", "inproc"),
    Case("latency_loomd", "loomd realtime @10k/s, 64 B", "loomd"),
    Case("latency_raw_zmq", "raw zmq @10k/s, 64 B", "raw"),
    Case("latency_mosquitto_qos0", "mosquitto QoS 0 @10k/s, 64 B", "mosquitto", qos="0"),
)


class Bench:
    """Runs the cases; each gets fresh brokers/daemons so no run inherits another's state."""

    def __init__(self, plan: Plan, kids: Children, tmp: Path) -> None:
        self.plan, self.kids, self.tmp = plan, kids, tmp
        self.scenarios: dict[str, Scenario] = {}
        self.daemons: list[dict[str, Any]] = []
        self.sweep_rows: list[dict[str, Any]] = []
        self._n = 0

    def run_all(self, only: tuple[str, ...] = ()) -> None:
        """Every case in order; `only` keeps those whose key contains one of its words."""
        runners: dict[str, Callable[[Case, Scenario], None]] = {
            "raw": self.raw,
            "mosquitto": self.mosquitto,
            "loomd": self.loomd,
            "inproc": self.inproc,
        }
        for case in CASES:
            if only and not any(word in case.key for word in only):
                continue
            sc = Scenario(
                case.key, case.label, rate_of="acked" if case.qos == "reliable" else "sub"
            )
            try:
                runners[case.kind](case, sc)
            except BenchError as exc:
                fail(sc, exc)
            self.scenarios[case.key] = sc
        if self.plan.sweep:
            try:
                self.sweep()
            except BenchError as exc:
                log(f"sweep FAILED: {exc}")

    def sweep(self) -> None:
        """loomd realtime 64 B at fixed offered rates: where drops start, and how stale
        events get, without a publisher that hogs a core (the throughput runs' shape)."""
        daemon = start_loomd(self.kids, self._dir("d"), self.plan)
        try:
            for rate in self.plan.sweep:
                log(f"sweep: loomd realtime 64 B offered {rate:,} ev/s")
                pub = PubSpec(daemon.socket, duration_s=self.plan.duration_s, rate=rate)
                sub = SubSpec(
                    daemon.socket, pattern="bench.#", deadline_s=self.plan.duration_s + 60
                )
                run = run_pair(self.kids, "loomd", loomd_sub, sub, loomd_pub, pub, daemon.proc.pid)
                received = run.sub["received"]
                self.sweep_rows.append(
                    {
                        "offered_eps": round(run.pub["sent"] / run.pub["elapsed_s"]),
                        "received_eps": round(run.sub["eps"]),
                        "sent": run.pub["sent"],
                        "received": received,
                        "dropped_daemon": sum(run.sub["dropped_daemon"].values()),
                        "dropped_subscriber": run.sub["dropped_local"],
                        "age_ms": run.sub.get("age_ms", {}),
                        "cpu_us_per_event": [
                            round(c / max(received, 1) * 1e6, 1)
                            for c in (run.pub["cpu_s"], run.broker_cpu_s or 0.0, run.sub["cpu_s"])
                        ],
                    }
                )
        finally:
            stop_loomd(self.kids, daemon)

    def _dir(self, prefix: str) -> Path:
        self._n += 1
        path = self.tmp / f"{prefix}{self._n}"
        path.mkdir()
        return path

    def raw(self, case: Case, sc: Scenario) -> None:
        root = self._dir("z")
        eps = (f"ipc://{root}/in", f"ipc://{root}/out")
        proxy = self.kids.spawn("zmq-proxy", raw_proxy, eps)
        try:
            proxy.expect("ready", 30)
            pub = case.pub(self.plan, eps[0], topic=TOPIC, stamped=case.latency)
            sub = case.sub(self.plan, eps[1], pattern=TOPIC)
            repeat(
                sc,
                case.repeats(self.plan),
                lambda: run_pair(self.kids, "zmq", raw_sub, sub, raw_pub, pub, proxy.pid),
            )
        finally:
            self.kids.stop(proxy)

    def mosquitto(self, case: Case, sc: Scenario) -> None:
        broker, port = start_mosquitto(self.kids, self._dir("m"))
        try:
            pub = case.pub(self.plan, str(port), topic="bench/x", stamped=case.latency)
            sub = case.sub(self.plan, str(port), pattern="bench/#")
            repeat(
                sc,
                case.repeats(self.plan),
                lambda: run_pair(self.kids, "mqtt", mqtt_sub, sub, mqtt_pub, pub, broker.pid),
            )
        finally:
            self.kids.stop(broker)

    def loomd(self, case: Case, sc: Scenario) -> None:
        daemon = start_loomd(self.kids, self._dir("d"), self.plan)
        info: dict[str, Any] = {
            "scenario": case.key,
            "ready_s": daemon.ready_s,
            "answer_s": daemon.answer_s,
            "idle_rss_mb": daemon.idle_rss_mb,
        }
        try:
            reliable = case.qos == "reliable"
            topic = DURABLE_TOPIC if reliable else TOPIC
            pub = case.pub(self.plan, daemon.socket, topic=topic)
            sub = case.sub(
                self.plan,
                daemon.socket,
                pattern=topic.rsplit(".", 1)[0] + ".#",
                track=reliable,
                idle_s=2.0 if reliable else 0.5,
            )
            repeat(
                sc,
                case.repeats(self.plan),
                lambda: run_pair(
                    self.kids, "loomd", loomd_sub, sub, loomd_pub, pub, daemon.proc.pid
                ),
            )
        finally:
            info["peak_rss_mb"] = daemon.peak_rss_mb
            info["exit_code"] = stop_loomd(self.kids, daemon)
            self.daemons.append(info)

    def inproc(self, case: Case, sc: Scenario) -> None:
        def once() -> Run:
            w = self.kids.spawn("inproc", inproc, case.pub(self.plan, "", topic=TOPIC))
            try:
                w.expect("ready", 30)
                w.send("go")
                res = w.expect("result", self.plan.duration_s + 30)
            finally:
                self.kids.stop(w)
            return Run(pub=res, sub={"received": res["received"], "eps": res["eps"]})

        repeat(sc, case.repeats(self.plan), once)


# --- report --------------------------------------------------------------------------------


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


def summarize(bench: Bench, machine: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The JSON object: issue 2's keys first, then ratios, details, targets."""
    sc = bench.scenarios
    eps = {k: _round(s.eps, 0) for k, s in sc.items() if not k.startswith("latency_")}
    latency = {
        k.removeprefix("latency_"): s.runs[0].sub.get("latency_ms", {}) if s.runs else {}
        for k, s in sc.items()
        if k.startswith("latency_")
    }
    loomd_lat = latency.get("loomd", {})
    out: dict[str, Any] = {
        **eps,
        "p50_ms_at_10k": _round(loomd_lat.get("p50"), 3),
        "p99_ms_at_10k": _round(loomd_lat.get("p99"), 3),
        **_daemon_figures(bench.daemons),
        "ratio_realtime_64b_over_mosquitto_qos0": _ratio(
            eps.get("loomd_realtime_64b_eps"), eps.get("mosquitto_qos0_eps"), 2
        ),
        "ratio_realtime_64b_over_raw_zmq": _ratio(
            eps.get("loomd_realtime_64b_eps"), eps.get("raw_zmq_proxy_eps"), 3
        ),
        "ratio_reliable_over_mosquitto_qos1": _ratio(
            eps.get("loomd_reliable_eps"), eps.get("mosquitto_qos1_eps"), 2
        ),
        **_delivery_figures(sc),
        "latency_ms": latency,
        "daemon_latency_ms_at_10k": (
            sc["latency_loomd"].runs[0].sub.get("daemon_latency_ms")
            if "latency_loomd" in sc and sc["latency_loomd"].runs
            else None
        ),
        "scenarios": {k: scenario_json(s) for k, s in sc.items()},
        "sweep": bench.sweep_rows,
        "mode": "quick" if quick else "full",
        "plan": bench.plan.__dict__,
        "machine": machine,
    }
    out["targets"] = {key: target_check(out.get(key), op, bound) for key, op, bound, _ in TARGETS}
    out["errors"] = {k: s.error for k, s in sc.items() if s.error}
    return out


def _daemon_figures(daemons: list[dict[str, Any]]) -> dict[str, Any]:
    """Idle RSS: median over the daemon starts; READY: the slowest start (the target's view)."""
    if not daemons:
        return {"idle_rss_mb": None, "ready_s": None}
    return {
        "idle_rss_mb": _round(statistics.median(d["idle_rss_mb"] for d in daemons), 1),
        "ready_s": _round(max(d["ready_s"] for d in daemons), 3),
        "ready_s_all": [_round(d["ready_s"], 3) for d in daemons],
        "answer_s_all": [_round(d["answer_s"], 3) for d in daemons],
        "idle_rss_mb_all": [_round(d["idle_rss_mb"], 1) for d in daemons],
        "daemon_peak_rss_mb": {d["scenario"]: _round(d.get("peak_rss_mb"), 1) for d in daemons},
        "daemon_exit_codes": {d["scenario"]: d.get("exit_code") for d in daemons},
    }


def _delivery_figures(sc: dict[str, Scenario]) -> dict[str, Any]:
    """Loss accounting of the two acknowledged flows."""
    out: dict[str, Any] = {}
    rel = sc.get("loomd_reliable_eps")
    if rel is not None and rel.runs:
        ack_errors = sum(1 for r in rel.runs if r.pub.get("ack_error"))
        out["reliable_lost"] = rel.total("sub", "missing") + ack_errors
        out["reliable_acked"] = rel.total("pub", "acked")
        out["reliable_duplicates"] = rel.total("sub", "duplicates")
    q1 = sc.get("mosquitto_qos1_eps")
    if q1 is not None and q1.runs:
        out["mosquitto_qos1_lost"] = q1.total("pub", "sent") - q1.total("sub", "received")
    return out


def _round(v: float | None, nd: int) -> float | None:
    if v is None:
        return None
    return round(v) if nd == 0 else round(v, nd)


def scenario_json(s: Scenario) -> dict[str, Any]:
    return {
        "label": s.label,
        "eps_runs": [round(r) for r in s.rates()],
        "sent": s.total("pub", "sent"),
        "received": s.total("sub", "received"),
        "dropped_publisher": s.total("pub", "dropped_local"),
        "dropped_daemon": _sum_dicts(r.sub.get("dropped_daemon") for r in s.runs),
        "dropped_subscriber": s.total("sub", "dropped_local"),
        "age_ms_runs": [r.sub["age_ms"] for r in s.runs if "age_ms" in r.sub],
        "sub_stopped": [r.sub.get("stopped") for r in s.runs],
        "dropped_broker": (
            s.total("sub", "dropped_broker")
            if any("dropped_broker" in r.sub for r in s.runs)
            else None
        ),
        "pub_eps": [
            round(r.pub["sent"] / r.pub["elapsed_s"]) for r in s.runs if r.pub.get("elapsed_s")
        ],
        "peak_rss_mb": {side: _round(s.peak(side), 1) for side in ("pub", "broker", "sub")},
        "cpu_us_per_event": {
            side: _round(s.cpu_us_per_event(side), 2) for side in ("pub", "broker", "sub")
        },
        "error": s.error,
    }


def _sum_dicts(items: Iterator[dict[str, int] | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in items:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def target_check(value: Any, op: str, bound: float) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": f"{op} {bound:g}", "pass": False}
    ok = value >= bound if op == ">=" else value <= bound
    return {"value": value, "target": f"{op} {bound:g}", "pass": bool(ok)}


def _fmt_eps(v: float | None) -> str:
    return f"{v:>10,.0f}" if v is not None else f"{'n/a':>10}"


def _fmt_num(v: float | None, nd: int) -> str:
    return f"{v:.{nd}f}" if v is not None else "-"


def print_report(bench: Bench, summary: dict[str, Any]) -> None:
    _print_header(bench, summary)
    _print_throughput(bench, summary)
    _print_latency(bench, summary)
    _print_sweep(summary)
    _print_daemon(summary)
    _print_verdict(summary)


def _print_header(bench: Bench, summary: dict[str, Any]) -> None:
    m, c = summary["machine"], summary["cpu_during_run"]
    print(
        f"\nloomd bus benchmark ({summary['mode']}: {bench.plan.duration_s:g} s per run, "
        f"median of {bench.plan.repeats}), git {m['git']}"
    )
    if m["git_modified"]:
        print(f"uncommitted changes measured: {', '.join(m['git_modified'])}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB, {m['os']}, {m['kernel']}")
    print(
        f"python {m['python']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), uvloop {m['uvloop']}, "
        f"cbor2 {m['cbor2']}, paho-mqtt {m['paho_mqtt']}, {m['mosquitto']}"
    )
    print(
        f"during the run: bench processes {c['bench_cpu_cores']} cores, other processes "
        f"{c['other_cpu_cores']} cores, steal {c['steal_cores']} (load avg {c['loadavg_start']} "
        f"-> {c['loadavg_end']}, {c['wall_s']} s)"
    )
    if c["other_cpu_cores"] > 0.2:
        print(
            f"WARNING: other processes took {c['other_cpu_cores']} of {m['cores']} cores during "
            f"the run: every figure below is pessimistic"
        )
    print()


def _print_throughput(bench: Bench, summary: dict[str, Any]) -> None:
    if all(key.startswith("latency_") for key in bench.scenarios):
        return
    head = (
        f"{'throughput (events/s the subscriber receives)':<44}{'median':>10}  {'runs':<22}"
        f"{'sent':>9}{'received':>10}{'lost':>9}  {'counted p/d/s':<22}{'CPU us/ev p/b/s':<17}"
        f"{'peak MB p/b/s'}"
    )
    print(head)
    print("-" * len(head))
    sides = ("pub", "broker", "sub")
    for key, s in bench.scenarios.items():
        if key.startswith("latency_"):
            continue
        j = summary["scenarios"][key]
        runs = ", ".join(f"{r / 1000:.0f}k" for r in j["eps_runs"]) or "FAILED"
        counted = "-"
        if key.startswith("loomd_"):
            daemon_drops = sum(j["dropped_daemon"].values())
            counted = f"{j['dropped_publisher']}/{daemon_drops}/{j['dropped_subscriber']}"
        elif j["dropped_broker"] is not None:  # mosquitto's $SYS counter
            counted = f"-/{j['dropped_broker']}/-"
        cpu = "/".join(_fmt_num(j["cpu_us_per_event"][x], 1) for x in sides)
        rss = "/".join(_fmt_num(j["peak_rss_mb"][x], 0) for x in sides)
        print(
            f"{s.label:<44}{_fmt_eps(s.eps)}  {runs:<22}{j['sent']:>9}{j['received']:>10}"
            f"{j['sent'] - j['received']:>9}  {counted:<22}{cpu:<17}{rss}"
        )
    for key, j in summary["scenarios"].items():
        if j["age_ms_runs"] and not key.startswith("latency_"):
            p50 = "/".join(f"{a['p50']:.1f}" for a in j["age_ms_runs"])
            p99 = "/".join(f"{a['p99']:.1f}" for a in j["age_ms_runs"])
            print(f"  {j['label']}: event age at the subscriber p50 {p50} ms, p99 {p99} ms")
    rel = bench.scenarios.get("loomd_reliable_eps")
    if rel is not None and rel.runs:
        sub_rates = ", ".join(f"{r.sub['eps'] / 1000:.0f}k" for r in rel.runs)
        print(
            f"  loomd reliable: acked {summary['reliable_acked']}, "
            f"lost {summary['reliable_lost']}, duplicates {summary['reliable_duplicates']}; "
            f"the subscriber got {sub_rates} ev/s"
        )
    if summary.get("mosquitto_qos1_lost") is not None:
        print(
            f"  mosquitto QoS 1: {summary['mosquitto_qos1_lost']} events acknowledged to the "
            f"publisher never reached the subscriber"
        )
    print()


def _print_latency(bench: Bench, summary: dict[str, Any]) -> None:
    if not any(key.startswith("latency_") for key in bench.scenarios):
        return
    cols = ("p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "samples", "sent", "recv")
    print(
        f"{'latency at 10k ev/s (publish -> subscriber)':<46}" + "".join(f"{c:>10}" for c in cols)
    )
    for key, s in bench.scenarios.items():
        if not key.startswith("latency_"):
            continue
        lat = s.runs[0].sub.get("latency_ms", {}) if s.runs else {}
        if not lat.get("n"):
            print(f"{s.label:<46}  n/a {s.error or ''}")
            continue
        ms = "".join(f"{lat[q]:>10.3f}" for q in ("p50", "p90", "p99", "p999", "max"))
        counts = (lat["n"], s.runs[0].pub.get("sent", 0), s.runs[0].sub["received"])
        print(f"{s.label:<46}{ms}" + "".join(f"{c:>10}" for c in counts))
    dl = summary.get("daemon_latency_ms_at_10k")
    if dl:
        print(
            f"  loomd's own histogram (publish ts -> hand-off to the subscriber socket): "
            f"p50 {dl.get('p50')} ms, p99 {dl.get('p99')} ms"
        )
    print()


def _print_sweep(summary: dict[str, Any]) -> None:
    if not summary["sweep"]:
        return
    cols = ("offered/s", "received/s", "lost", "daemon", "sub", "age p50", "age p99")
    print(
        f"{'loomd realtime 64 B at a fixed offered rate':<44}"
        + "".join(f"{c:>11}" for c in cols)
        + "  CPU us/ev p/d/s"
    )
    for row in summary["sweep"]:
        age = row["age_ms"]
        cells = (
            f"{row['offered_eps']:,}",
            f"{row['received_eps']:,}",
            row["sent"] - row["received"],
            row["dropped_daemon"],
            row["dropped_subscriber"],
            f"{age.get('p50', float('nan')):.1f} ms",
            f"{age.get('p99', float('nan')):.1f} ms",
        )
        cpu = "/".join(str(c) for c in row["cpu_us_per_event"])
        print(f"{'':<44}" + "".join(f"{c:>11}" for c in cells) + f"  {cpu}")
    print()


def _print_daemon(summary: dict[str, Any]) -> None:
    if summary.get("idle_rss_mb") is None:
        return
    print(
        f"loomd daemon: idle RSS {summary['idle_rss_mb']} MB (median; per start "
        f"{summary['idle_rss_mb_all']}); spawn -> READY=1 {summary['ready_s_all']} s; "
        f"spawn -> SDK hello + ping answered {summary['answer_s_all']} s"
    )
    print(f"loomd daemon peak RSS per scenario (MB): {summary['daemon_peak_rss_mb']}\n")


def _print_verdict(summary: dict[str, Any]) -> None:
    print("ratios (same run):")
    for label, key in (
        ("loomd realtime 64 B / mosquitto QoS 0", "ratio_realtime_64b_over_mosquitto_qos0"),
        ("loomd realtime 64 B / raw zmq proxy", "ratio_realtime_64b_over_raw_zmq"),
        ("loomd reliable durable / mosquitto QoS 1", "ratio_reliable_over_mosquitto_qos1"),
    ):
        v = summary.get(key)
        print(f"  {label:<44}{f'{v:.3g}x' if v is not None else 'n/a':>10}")
    print("\ntargets (issue 2):")
    for key, _, _, text in TARGETS:
        t = summary["targets"][key]
        v = t["value"]
        shown = "not measured" if v is None else f"{v:,}"
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {text:<44} measured {shown}")
    for k, e in summary["errors"].items():
        print(f"  ERROR {k}: {e}")
    print()


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="short runs, no repeats: under a minute")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line on stdout")
    p.add_argument(
        "--only",
        default="",
        metavar="WORDS",
        help="comma-separated words: run only scenarios whose key contains one "
        "(e.g. loomd,latency); for investigating, not for the record",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="length of each throughput and latency run (default: 1.5 quick, 5 full)",
    )
    p.add_argument(
        "--sweep",
        default=None,
        metavar="RATES",
        help="loomd realtime 64 B at these offered rates (default: none with --quick, "
        "50k..150k in steps of 25k in a full run; '' for none)",
    )
    p.add_argument(
        "--loomd-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the daemon's config (TOML value), e.g. state.commit_window_ms=0; "
        "repeatable; for what-if runs, not for the record",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.pick(args.quick)
    if args.duration:
        plan = replace(plan, duration_s=args.duration, latency_s=args.duration)
    plan = replace(plan, loomd_set=tuple(args.loomd_set))
    if args.sweep is not None:
        plan = replace(plan, sweep=tuple(int(float(r)) for r in args.sweep.split(",") if r))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    tmp = Path(tempfile.mkdtemp(prefix="lb-", dir="/tmp"))
    kids = Children()
    started = time.perf_counter()
    try:
        machine = machine_info()
        witness = CpuWitness()
        bench = Bench(plan, kids, tmp)
        bench.run_all(tuple(w for w in args.only.split(",") if w))
        summary = summarize(bench, machine, args.quick)
        summary["cpu_during_run"] = witness.report()
        summary["bench_wall_s"] = round(time.perf_counter() - started, 1)
        if not args.json_only:
            print_report(bench, summary)
        print(json.dumps(summary, separators=(",", ":")))
    finally:
        kids.close()
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
