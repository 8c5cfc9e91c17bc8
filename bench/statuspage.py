"""The status page's cost: the sampler at idle, a page left open, and a live tail under load.

    .venv/bin/python bench/statuspage.py [--quick]

In one run, two daemons one after the other with the same config except `[metrics] page`:
the baseline with the page off, then with it on. Measured: idle CPU (% of one core, from
the process's CPU time over a wall-clock window) and RSS; the CPU while a browser-like
client polls the four JSON endpoints every 2 s and holds a live tail; `/api/status` latency
against a `/metrics` scrape on the same server; and publishing realtime events over the
SDK with a live-tail client reading them (the daemon's CPU per event and the publisher's
rate), against the same publisher with no tail. Ends
with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import daemon_config  # noqa: E402
from bench.services import Notifications  # noqa: E402
from loomd.sdk import Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, root: Path, page: str) -> None:
        root.mkdir(parents=True)
        self.root, self.port = root, free_port()
        self.socket = root / "run" / "bus.sock"
        cfg = daemon_config(
            root,
            f'[metrics]\nport = {self.port}\npage = "{page}"\n',
            daemon='log_level = "warning"',
        )
        self.notify = Notifications(root / "notify.sock")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path)}
        self.log = open(root / "loomd.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loomd.daemon", "--config", str(cfg)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.notify.wait_for("READY=1", 30)
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss / 2**20)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()
        self.notify.close()


def cpu_pct(d: Daemon, seconds: float) -> float:
    """The daemon's CPU over a wall-clock window, in % of one core."""
    c0, t0 = d.cpu_s(), time.monotonic()
    time.sleep(seconds)
    return 100 * (d.cpu_s() - c0) / (time.monotonic() - t0)


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}")
        return body
    finally:
        conn.close()


def latency_ms(port: int, path: str, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        get(port, path)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class Tail(threading.Thread):
    """A live-tail client (a thread) that reads everything as fast as it comes."""

    def __init__(self, port: int, pattern: str = "%23") -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(
            f"GET /api/events?pattern={pattern} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
        )
        self.events = 0

    def run(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(65536):
                buf += chunk
                frames = buf.split(b"\n\n")
                buf = frames.pop()
                for f in frames:
                    if b"event: bus\n" in f:  # a chunk's size line may precede it
                        self.events += 1
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def page_open_cpu(d: Daemon, seconds: float) -> float:
    """CPU while a page is open: the four JSON endpoints every 2 s and a live tail."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for path in ("/api/status", "/api/history", "/api/voice", "/api/routes"):
                get(d.port, path)
            stop.wait(2.0)

    tail = Tail(d.port)
    tail.start()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        return cpu_pct(d, seconds)
    finally:
        stop.set()
        poller.join()
        tail.close()


READER = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
s.sendall(b"GET /api/events?pattern=bench.%23 HTTP/1.1\r\nHost: localhost\r\n\r\n")
buf = b""
while b'"last":true' not in buf:
    chunk = s.recv(1 << 16)
    if not chunk:
        sys.exit("the stream ended")
    buf = buf[-64:] + chunk
    if b"\r\n\r\n" in buf and b"ready" not in sys.argv:
        sys.argv.append("ready")
        print("ready", flush=True)
"""


def publish_cost(d: Daemon, n: int, tail: bool) -> tuple[float, float]:
    """(events/s one SDK publisher gets through, daemon CPU µs per event), with or without
    a live-tail client reading every event (in a process of its own: no GIL shared with
    the publisher)."""
    reader = None
    if tail:
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(d.port)], stdout=subprocess.PIPE, text=True
        )
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError("the live-tail reader did not connect")
        time.sleep(0.2)  # subscribed (the head is written after the subscription is ready)

    async def run() -> float:
        async with Client(str(d.socket), name="bench-pub") as bus:
            payload = {"reading": 21.5, "unit": "C", "room": "kitchen"}
            t0 = time.perf_counter()
            for i in range(n):
                await bus.publish("bench.sensor", {**payload, "i": i}, qos="realtime")
            await bus.publish("bench.sensor", {"last": True}, qos="reliable")
            return n / (time.perf_counter() - t0)

    c0 = d.cpu_s()
    rate = asyncio.run(run())
    if reader is not None and reader.wait(60) != 0:
        raise RuntimeError("the live tail never saw the last event")
    time.sleep(0.2)  # the daemon finishes routing what is queued
    return rate, (d.cpu_s() - c0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows (under a minute)")
    a = ap.parse_args()
    window = 8.0 if a.quick else 60.0
    n_pub = 5000 if a.quick else 50000
    t_start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="ldb-", dir="/tmp"))
    res: dict[str, Any] = {}
    try:
        off = Daemon(root / "off", "off")
        try:
            time.sleep(2.0)  # past start-up
            res["idle_cpu_pct_off"] = cpu_pct(off, window)
            res["rss_mb_off"] = off.rss_mb()
            res["metrics_p50_ms"] = latency_ms(off.port, "/metrics", 50)
            res["publish_eps_no_tail"], res["daemon_us_per_event_no_tail"] = publish_cost(
                off, n_pub, tail=False
            )
        finally:
            off.stop()
        on = Daemon(root / "on", "local")
        try:
            time.sleep(2.0)
            res["idle_cpu_pct_on"] = cpu_pct(on, window)
            res["rss_mb_on"] = on.rss_mb()
            res["page_open_cpu_pct"] = page_open_cpu(on, window)
            res["api_status_p50_ms"] = latency_ms(on.port, "/api/status", 50)
            res["api_history_p50_ms"] = latency_ms(on.port, "/api/history", 50)
            res["metrics_p50_ms_page_on"] = latency_ms(on.port, "/metrics", 50)
            res["publish_eps_tail"], res["daemon_us_per_event_tail"] = publish_cost(
                on, n_pub, tail=True
            )
            res["rss_mb_on_after"] = on.rss_mb()
            res["history_samples"] = len(json.loads(get(on.port, "/api/history"))["samples"])
        finally:
            on.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["sampler_cpu_pct"] = res["idle_cpu_pct_on"] - res["idle_cpu_pct_off"]
    res["rss_delta_mb"] = res["rss_mb_on"] - res["rss_mb_off"]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["seconds"] = time.monotonic() - t_start

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y else "-"

    rows = [
        ("idle CPU, % of a core", res["idle_cpu_pct_on"], res["idle_cpu_pct_off"]),
        ("daemon RSS, MB", res["rss_mb_on"], res["rss_mb_off"]),
        ("CPU with a page open (poll + tail), %", res["page_open_cpu_pct"],
         res["idle_cpu_pct_off"]),
        ("GET /api/status p50, ms", res["api_status_p50_ms"], res["metrics_p50_ms_page_on"]),
        ("GET /api/history p50, ms", res["api_history_p50_ms"],
         res["metrics_p50_ms_page_on"]),
        ("realtime publish with a live tail, ev/s", res["publish_eps_tail"],
         res["publish_eps_no_tail"]),
        ("daemon CPU per event with a live tail, us", res["daemon_us_per_event_tail"],
         res["daemon_us_per_event_no_tail"]),
    ]  # fmt: skip
    print(f"window {window:.0f} s, {n_pub} events; baseline = the same daemon with page = off"
          " (for latency: a /metrics scrape on the same server)")  # fmt: skip
    print(f"{'measure':<46} {'page on':>10} {'baseline':>10} {'ratio':>7}")
    for name, x, y in rows:
        print(f"{name:<46} {x:>10.3f} {y:>10.3f} {ratio(x, y):>7}")
    print(f"CPU resolution: one 10 ms tick in {window:.0f} s = {1 / window:.3f} %; "
          f"history held {res['history_samples']} samples (ring of 600)")  # fmt: skip
    print(f"bench peak RSS {res['peak_rss_mb']:.0f} MB, {res['seconds']:.0f} s")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
