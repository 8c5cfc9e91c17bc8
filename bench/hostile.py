"""Hostile clients against a real daemon: what a well-behaved client sees meanwhile.

    .venv/bin/python bench/hostile.py [--quick]

For each attack of issue 7 a fresh daemon is started; a *witness* in its own process
pings and publishes a reliable durable event every 10 ms for the whole attack and
records its slowest answer (the worst stall another client saw). The same witness
against an idle daemon is the baseline, measured in the same run. Also per attack: the
daemon's RSS growth (peak sampled every 20 ms), its CPU time, whether it survived, and
whether every event acknowledged to the witness is in the journal. Prints a table, then
ONE JSON line: {"attacks": {name: {"worst_stall_ms", "rss_growth_mb", ...}}, ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import uvloop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import control_replies, raw_dealer  # noqa: E402
from bench.hostile_acl import acl_daemon, acl_denied  # noqa: E402
from bench.hostile_cost import matching_cost, state_daemon, state_total  # noqa: E402
from loomd.bus import wire  # noqa: E402
from loomd.bus.envelope import Event  # noqa: E402
from loomd.sdk import connect  # noqa: E402
from tests.conftest import LoomdProcess  # noqa: E402

WITNESS_TOPIC = "action.witness.bench"


# -- the witness (own process) -----------------------------------------------------------------
def _witness(endpoint: str, conn: Connection) -> None:
    async def main() -> dict[str, Any]:
        worst = 0.0
        n = 0
        acked: list[bytes] = []
        async with connect(endpoint, name="witness", timeout=30) as bus:
            conn.send("ready")
            while not conn.poll():
                t0 = time.perf_counter()
                await bus.call("ping", timeout=30)
                ev = await bus.publish(WITNESS_TOPIC, n)
                acked.append(ev.id)
                worst = max(worst, time.perf_counter() - t0)
                n += 1
                await asyncio.sleep(0.01)
            # nothing acknowledged lost: all of it is in the journal
            seen: set[bytes] = set()
            async with bus.subscribe("action.witness.#", "reliable", since=0) as sub:
                async with asyncio.timeout(20):
                    while not set(acked) <= seen:
                        seen.add((await sub.get()).id)
        return {"worst_ms": worst * 1000, "rounds": n, "lost": len(set(acked) - seen)}

    try:
        conn.send(uvloop.run(main()))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


class Watch:
    """RSS peak and CPU time of the daemon while an attack runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.rss0 = self.peak = self.proc.memory_info().rss
        self.cpu0 = sum(self.proc.cpu_times()[:2])
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join()
        try:
            cpu = sum(self.proc.cpu_times()[:2]) - self.cpu0
        except psutil.Error:
            cpu = float("nan")
        return {"rss_growth_mb": (self.peak - self.rss0) / 1e6, "cpu_s": cpu}


# -- attacks (in this process) -----------------------------------------------------------------


def _bignum(n: int) -> bytes:
    return b"\xc2\x5a" + struct.pack(">I", n) + b"\x01" * n


BOMBS = [
    b"\x81" * 200_000 + b"\x00",
    b"\xc4\x82\x3a\x7f\xff\xff\xff" + _bignum(250_000),
    b"\xd8\x1e\x82" + _bignum(120_000) + _bignum(120_000),
    b"\xba\x00\x01\x86\xa0" + b"\x00\x00" * 100_000,
]


async def decoder_bombs(d: LoomdProcess, q: bool) -> str:
    s = raw_dealer(d.endpoint)
    for _ in range(3 if q else 10):
        for b in BOMBS:
            s.send(bytes((wire.CONTROL,)) + b)
            s.send(wire.pack_event(b"bomb.h", b, b"\x00"))
    got = await control_replies(s, 2 * len(BOMBS) * (3 if q else 10))
    s.close()
    return f"{sum(not r['ok'] for r in got)} refused"


async def oversized_control(d: LoomdProcess, q: bool) -> str:
    s = raw_dealer(d.endpoint)
    big = bytes((wire.CONTROL,)) + b"\xbb" + (3 << 20).to_bytes(8, "big") + b"\0" * (3 << 20)
    for _ in range(5 if q else 20):
        s.send(big)  # before any hello, 3 MiB
    got = await control_replies(s, 5 if q else 20)
    s.close()
    return f"{sum('too large' in r.get('error', '') for r in got)} refused by size"


async def pattern_complexity(d: LoomdProcess, q: bool) -> str:
    s = raw_dealer(d.endpoint)
    s.send(wire.pack_control({"op": "sub", "rid": 1, "sid": 1, "pattern": ".".join(["#"] * 16)}))
    (r,) = await control_replies(s, 1)
    async with connect(d.endpoint) as bus:
        await bus.subscribe("#.#.#.#.z", "realtime").ready()
        topic = ".".join(["a"] * 31)
        for i in range(500 if q else 2000):
            await bus.publish(f"{topic[:-1]}{i % 10}", b"x", qos="realtime")
        await bus.call("ping")
    s.close()
    return "16 x '#' refused; 4 x '#' x 31 segments matched" if not r["ok"] else "ACCEPTED"


async def bad_ids(d: LoomdProcess, q: bool) -> str:
    s = raw_dealer(d.endpoint)
    n = 200 if q else 1000
    for i in range(n):
        s.send(wire.pack_control({"op": "sub", "rid": i, "sid": (1 << 40) + i, "pattern": "#"}))
    got = await control_replies(s, n)
    s.close()
    return f"{sum(not r['ok'] for r in got)}/{n} refused"


async def stalled_reliable(d: LoomdProcess, q: bool) -> str:
    async with connect(d.endpoint, name="stalled") as st, connect(d.endpoint) as pub:
        await st.subscribe("#", "reliable").ready()
        t0 = time.perf_counter()
        for i in range(15000 if q else 40000):
            await pub.publish("flood.x" if i % 2 else "action.flood.x", i, wait=False)
        await pub.flush(60)
        flood_s = time.perf_counter() - t0
        blob = b"r" * 16384
        for _ in range(3000 if q else 10000):
            await pub.publish("flood.rt", blob, qos="realtime")
        await pub.call("ping", timeout=60)  # behind its own flood: not what is measured
        shed = (await pub.status())["status"]["components"]["bus"]["status"]["shed"]
    return f"all acked in {flood_s:.1f} s; shed {shed}"


async def subscription_flood(d: LoomdProcess, q: bool) -> str:
    s = raw_dealer(d.endpoint)
    total = 5000 if q else 20000
    for start in range(0, total, 100):
        for i in range(start, start + 100):
            s.send(wire.pack_control({"op": "sub", "rid": i, "sid": i + 1, "pattern": "#"}))
        # replies that find its pipe full of deliveries are dropped: do not wait for them
        await control_replies(s, 100, timeout=0.5)
    async with connect(d.endpoint) as bus:
        for _ in range(200):
            await bus.publish("fan.out", b"x", qos="realtime")
        await bus.call("ping")
        st = (await bus.status())["status"]["components"]["bus"]["status"]
    s.close()
    held = st["subscriptions_total"]
    return f"{total} asked, {held} held (quota), 200 events fanned out to each"


async def state_fill(d: LoomdProcess, q: bool) -> str:
    refused = 0
    blob = "x" * (512 * 1024)
    async with connect(d.endpoint) as bus:
        for ns in range(4 if q else 12):
            for i in range(40):
                try:
                    await bus.call("state.put", args=[f"k{i}", blob], ns=f"ns{ns}")
                except Exception:
                    refused += 1
    return f"{refused} puts refused (quota)"


async def deaf_realtime(d: LoomdProcess, q: bool) -> str:
    s = raw_dealer(d.endpoint, RCVHWM=1, RCVBUF=4096)
    s.send(wire.pack_control({"op": "hello", "rid": 1, "name": "deaf"}))
    s.send(wire.pack_control({"op": "sub", "rid": 2, "sid": 1, "pattern": "deaf.#"}))
    await asyncio.sleep(0.1)
    async with connect(d.endpoint) as bus:
        for _ in range(3000):
            await bus.publish("deaf.x", b"y" * 1024, qos="realtime")
        await bus.call("ping")
    proc = psutil.Process(d.pid())
    c0 = sum(proc.cpu_times()[:2])
    for _ in range(8 if q else 20):
        s.send(wire.pack_control({"op": "ping"}))
        await asyncio.sleep(0.25)
    idle = (sum(proc.cpu_times()[:2]) - c0) / ((8 if q else 20) * 0.25)
    s.close()
    return f"idle CPU {idle * 100:.1f} % with a deaf subscriber"


async def fd_flood(d: LoomdProcess, q: bool) -> str:
    # connected before the flood: new connections from this uid are refused meanwhile
    observer = await connect(d.endpoint).__aenter__()
    conns = []
    for _ in range(1500 if q else 3000):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect(str(d.socket))
        except OSError:
            c.close()
            continue
        conns.append(c)
    await asyncio.sleep(0.5)
    st = (await observer.status())["status"]["components"]["bus"]["status"]
    await observer.__aexit__(None, None, None)
    for c in conns:
        c.close()
    refused = sum(st["refused"].values())
    return f"{len(conns)} connections, {refused} shut at the cap ({st['quotas']['max_clients']})"


async def id_squat(d: LoomdProcess, q: bool) -> str:
    socks = [raw_dealer(d.endpoint, IDENTITY=f"victim-{i}".encode()) for i in range(50)]
    for s in socks:
        s.send(wire.pack_control({"op": "hello", "rid": 1, "name": "squatter"}))
    got = [await control_replies(s, 1) for s in socks]
    for s in socks:
        s.close()
    return f"{sum(not r[0]['ok'] for r in got if r)}/50 chosen ids refused"


async def rejected_publish(d: LoomdProcess, q: bool) -> str:
    async with connect(d.endpoint) as bus:
        bus.max_frame_bytes = 8 << 20  # a client library that does not check
        futs = []
        for i in range(20 if q else 100):
            ev = (
                Event.create("action.r", b"z" * (2 << 20))
                if i % 3 == 0
                else Event.create("action.r", i, ttl=300)
                if i % 3 == 1
                else Event.create("action.r", i)
            )
            fut = bus.loop.create_future()
            bus._unacked.append((ev.to_wire(), fut))
            bus._queue_frame(ev.to_wire(), reliable=True)
            bus._flush_outbox()  # one frame each: a batch over the limit is refused whole
            futs.append((i, fut))
        res = await asyncio.gather(*(f for _, f in futs), return_exceptions=True)
    acked_bad = sum(r is None and i % 3 != 2 for (i, _), r in zip(futs, res, strict=True))
    failed_ok = sum(r is not None and i % 3 == 2 for (i, _), r in zip(futs, res, strict=True))
    return f"{acked_bad} rejected ones acked, {failed_ok} valid ones failed, of {len(res)}"


# -- token_bruteforce: the HTTP surfaces beyond loopback ------------------------------------------
EXTRA: dict[str, dict[str, Any]] = {}  # figures an attack reports beside the witness's


def _outside_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # picks the route's source address; sends nothing
        return str(s.getsockname()[0])


def _http_witness(host: str, targets: list[tuple[int, str]], token: str, conn: Connection) -> None:
    """A legitimate HTTP client: GETs with the right token every 10 ms, round robin over
    the surfaces; sends back (monotonic start, latency s, status) per request."""
    import http.client

    samples: list[tuple[float, float, int]] = []
    conn.send("ready")
    i = 0
    while not conn.poll():
        port, path = targets[i % len(targets)]
        i += 1
        t0 = time.monotonic()
        c = http.client.HTTPConnection(host, port, timeout=10)
        try:
            c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            r = c.getresponse()
            r.read()
            status = r.status
        except OSError:
            status = 0
        finally:
            c.close()
        samples.append((t0, time.monotonic() - t0, status))
        time.sleep(0.01)
    conn.send(samples)


async def _bruteforce(host: str, targets: list[tuple[int, str, str]], n: int) -> dict[str, int]:
    """`n` requests with random wrong tokens over 8 connections at a time; status counts."""
    counts: dict[str, int] = {}
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            port, method, path = targets[i % len(targets)]
            r, w = await asyncio.open_connection(host, port)
            body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}' if method == "POST" else b""
            w.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer loomd_{os.urandom(32).hex()}\r\n"
                "Accept: application/json, text/event-stream\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await w.drain()
            line = await r.readline()
            code = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "none"
            counts[code] = counts.get(code, 0) + 1
            w.close()
            await w.wait_closed()

    await asyncio.gather(*(worker() for _ in range(8)))
    return counts


async def token_bruteforce(d: LoomdProcess, q: bool) -> str:
    from tests.conftest import loomctl

    host, ports = d.http_host, d.http_ports  # type: ignore[attr-defined]
    r = loomctl(d, "tokens", "create", "witness", "--scope", "all")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    for port in ports.values():  # the surfaces listen once a token exists
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{host}:{port} never listened"
                await asyncio.sleep(0.05)
    parent, child = mp.Pipe()
    legit = [(ports["metrics"], "/metrics"), (ports["openai"], "/v1/models")]
    w = mp.get_context("spawn").Process(target=_http_witness, args=(host, legit, token, child))
    w.start()
    assert parent.poll(30) and parent.recv() == "ready"
    await asyncio.sleep(1.0 if q else 2.0)  # the witness's baseline, before the attack
    t0 = time.monotonic()
    n = 2_000 if q else 10_000
    attack = [
        (ports["metrics"], "GET", "/metrics"),
        (ports["openai"], "GET", "/v1/models"),
        (ports["mcp"], "POST", "/mcp"),
    ]
    counts = await _bruteforce(host, attack, n)
    t1 = time.monotonic()
    parent.send("stop")
    samples: list[tuple[float, float, int]] = parent.recv() if parent.poll(60) else []
    w.join(10)

    def p(xs: list[float], q_: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q_ * len(xs)))] * 1000 if xs else float("nan")

    before = [lat for t, lat, _ in samples if t < t0]
    during = [lat for t, lat, _ in samples if t0 <= t <= t1]
    refused_legit = sum(1 for t, _, st in samples if t0 <= t <= t1 and st != 200)
    base_p50 = p(before, 0.5)
    figures = {
        "requests": n,
        "rate_per_s": round(n / (t1 - t0)),
        "status_counts": counts,
        "all_401": counts.get("401", 0) == n,
        "legit_requests": len(during),
        "legit_refused": refused_legit,
        "legit_p50_ms_idle": round(base_p50, 2),
        "legit_p99_ms_idle": round(p(before, 0.99), 2),
        "legit_p50_ms": round(p(during, 0.5), 2),
        "legit_p99_ms": round(p(during, 0.99), 2),
        "legit_max_ms": round(p(during, 1.0), 2),
        # the stall: how much longer than its idle median a legitimate request took
        "p99_stall_ms": round(p(during, 0.99) - base_p50, 2),
    }
    EXTRA["token_bruteforce"] = figures
    return (
        f"{n} wrong tokens at {figures['rate_per_s']}/s: {counts}; legit p99 "
        f"{figures['legit_p99_ms']} ms (idle p50 {figures['legit_p50_ms_idle']} ms), "
        f"{refused_legit} legit refused"
    )


async def idle(d: LoomdProcess, q: bool) -> str:
    await asyncio.sleep(1.5 if q else 4.0)
    return "no attack (baseline)"


ATTACKS: list[tuple[str, Callable[[LoomdProcess, bool], Awaitable[str]], str]] = [
    ("baseline_idle", idle, ""),
    ("decoder_bombs", decoder_bombs, ""),
    ("oversized_control", oversized_control, ""),
    ("pattern_complexity", pattern_complexity, ""),
    ("bad_ids", bad_ids, ""),
    ("stalled_reliable", stalled_reliable, ""),
    ("subscription_flood", subscription_flood, ""),
    ("state_fill", state_fill, ""),
    ("deaf_realtime", deaf_realtime, ""),
    ("fd_flood_nofile_1024", fd_flood, ""),
    ("id_squat", id_squat, ""),
    ("rejected_publish", rejected_publish, ""),
    ("token_bruteforce", token_bruteforce, "http"),
    ("acl_denied", acl_denied, "acl"),
    ("matching_cost", matching_cost, ""),
    ("state_total", state_total, "state"),
]


def _http_daemon(root: Path) -> LoomdProcess:
    """A daemon whose three HTTP surfaces listen beyond loopback (so tokens are required)."""
    from tests.conftest import free_port

    host = _outside_address()
    ports = {"metrics": free_port(), "openai": free_port(), "mcp": free_port()}
    toml = (
        f'[metrics]\nbind = "{host}"\nport = {ports["metrics"]}\npage = "on"\n'
        f'[llm]\nenabled = true\nhttp_bind = "{host}"\nhttp_port = {ports["openai"]}\n'
        f"[voice]\nenabled = false\n"
        f'[mcp]\nhttp_enabled = true\nhttp_bind = "{host}"\nhttp_port = {ports["mcp"]}\n'
    )
    d = LoomdProcess(root, toml)
    d.http_host, d.http_ports = host, ports  # type: ignore[attr-defined]
    return d


def run_attack(
    name: str, fn: Callable[[LoomdProcess, bool], Awaitable[str]], quick: bool, kind: str = ""
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="lh-", dir="/tmp"))
    daemons = {"http": _http_daemon, "acl": acl_daemon, "state": state_daemon}
    d = daemons[kind](root) if kind else LoomdProcess(root)
    real_popen = subprocess.Popen
    if name.startswith("fd_flood"):

        def popen(*a: Any, **kw: Any) -> Any:
            kw["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
            return real_popen(*a, **kw)

        subprocess.Popen = popen  # type: ignore[misc]
    try:
        d.start()
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
    parent, child = mp.Pipe()
    w = mp.get_context("spawn").Process(target=_witness, args=(d.endpoint, child))
    w.start()
    out: dict[str, Any] = {}
    try:
        assert parent.poll(30) and parent.recv() == "ready"
        watch = Watch(d.pid())
        t0 = time.perf_counter()
        note = uvloop.run(fn(d, quick))
        out["attack_s"] = time.perf_counter() - t0
        out.update(watch.stop())
        parent.send("stop")
        res = parent.recv() if parent.poll(60) else {"error": "witness hung"}
        out.update(res)
        out["note"] = note
        out["alive"] = d.proc is not None and d.proc.poll() is None
    finally:
        w.join(10)
        code = d.stop()
        out["exit_code"] = code
        if os.environ.get("HOSTILE_LOG"):
            print(d.log.read_text()[-4000:], file=sys.stderr)
        d.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller attacks: under a minute")
    args = p.parse_args()
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    only = os.environ.get("HOSTILE_ONLY")
    for name, fn, kind in ATTACKS:
        if only and name not in (only, "baseline_idle"):
            continue
        print(f"[hostile] {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = run_attack(name, fn, args.quick, kind)
        except Exception as exc:  # one broken case must not hide the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    base = results.get("baseline_idle", {}).get("worst_ms") or float("nan")
    print(
        f"\n{'attack':24} {'worst stall ms':>14} {'x idle':>7} {'RSS +MB':>8} {'CPU s':>6} "
        f"{'alive':>5} {'lost':>4}  what happened"
    )
    for name, r in results.items():
        if "error" in r and "worst_ms" not in r:
            print(f"{name:24} ERROR {r['error']}")
            continue
        print(
            f"{name:24} {r['worst_ms']:>14.1f} {r['worst_ms'] / base:>7.1f} "
            f"{r['rss_growth_mb']:>8.1f} {r['cpu_s']:>6.2f} {r['alive']!s:>5} "
            f"{r['lost']:>4}  {r['note']}"
        )
    peak = max((psutil.Process().memory_info().rss / 1e6), 0.0)
    print(f"\nbench process RSS {peak:.0f} MB; wall {time.perf_counter() - t0:.0f} s")
    summary = {
        "mode": "quick" if args.quick else "full",
        "baseline_worst_stall_ms": round(base, 1),
        "worst_stall_ms": round(max(r.get("worst_ms", float("inf")) for r in results.values()), 1),
        "max_rss_growth_mb": round(
            max(r.get("rss_growth_mb", float("inf")) for r in results.values()), 1
        ),
        "all_alive": all(r.get("alive") for r in results.values()),
        "lost": sum(r.get("lost", 1) for r in results.values()),
        "attacks": {
            k: {
                "worst_stall_ms": round(r.get("worst_ms", -1), 1),
                "rss_growth_mb": round(r.get("rss_growth_mb", -1), 1),
                "cpu_s": round(r.get("cpu_s", -1), 2),
                "alive": r.get("alive"),
                "lost": r.get("lost"),
                "note": r.get("note", r.get("error")),
            }
            for k, r in results.items()
        },
        "cores": os.cpu_count(),
        **EXTRA,
    }
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
