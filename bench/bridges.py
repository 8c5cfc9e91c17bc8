"""Bridges benchmark: the MQTT bridge against mosquitto + paho alone, same machine, same run.

    .venv/bin/python bench/bridges.py            # full run
    .venv/bin/python bench/bridges.py --quick    # under a minute
    .venv/bin/python bench/bridges.py --quick --only qos0 --scale 4   # one part, longer
                                                 # (what bench/profile_case.py --bench
                                                 # bridges runs under py-spy)

One mosquitto (TCP_NODELAY on), one real loomd daemon (state, bus, mqtt) with two mappings
that make it a relay: `rt/in` -> bus `rt.x` -> `rt/out` (QoS 1) and `tp/in` -> bus `tp.x`
(realtime) -> `tp/out` (QoS 0). Measured:

- QoS 1 round trip, one message at a time: paho -> mosquitto -> loomd -> mosquitto -> paho,
  against paho -> mosquitto -> paho (`raw_mqtt_rtt_qos1_ms`); median of N;
- QoS 0 throughput at the receiving paho client, through loomd and raw;
- outbox replay: the broker is stopped, N events are published on the bus (reliable) and
  land in the LMDB outbox; the broker is started and the time until the outbox is empty
  gives `outbox_replay_eps`;
- peer links: reliable events/s from a publisher on one daemon to a subscriber on the
  other (`peer_eps`) against both on the second daemon (`local_eps`); three runs of each,
  alternately, medians.

Progress goes to stderr; stdout gets a table with ratios and one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
import psutil  # type: ignore[import-untyped]  # noqa: E402

from bench.harness import (  # noqa: E402
    daemon_config,
    free_port,
    mqtt_map,
    peak_rss_mb,
    spawn_daemon,
)
from loomd.errors import RemoteError, RequestTimeout  # noqa: E402
from loomd.sdk import Client  # noqa: E402

LOST_CALLS = [0]
PEER_CPU: dict[str, dict[str, float]] = {}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Broker:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.conf = root / "mosquitto.conf"
        user = ["user root"] if os.geteuid() == 0 else []
        self.conf.write_text(
            "\n".join([f"listener {self.port} 127.0.0.1", "set_tcp_nodelay true",
                       "allow_anonymous true", "max_queued_messages 1000000",
                       "max_inflight_messages 1000", *user]) + "\n"
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = subprocess.DEVNULL
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=out, stderr=out)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


CONFIG = (
    "[metrics]\nenabled = false\n[mqtt]\nenabled = true\nport = {port}\n"
    "reconnect_min_s = 0.05\nreconnect_max_s = 0.2\nmax_inflight = 1000\n"
    + mqtt_map("in", "rt/in", "rt.x", qos=1, codec="raw")
    + mqtt_map("out", "rt/out", "rt.x", qos=1, codec="raw")
    + mqtt_map("in", "tp/in", "tp.x", qos=0, codec="raw", bus_qos="realtime")
    + mqtt_map("out", "tp/out", "tp.x", qos=0, codec="raw", bus_qos="realtime")
    + mqtt_map("out", "ob/out", "ob.x", qos=1, codec="raw")
)


PEER_CONFIG = """
[metrics]
enabled = false
[peers]
enabled = true
authorized_keys_dir = "{root}/peers.d"
receive = ["peer.#"]
{extra}
"""


class Daemon:
    def __init__(self, root: Path, port: int = 0, config: str = "", name: str = "bench") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        body = config or CONFIG.format(port=port)
        self.config = daemon_config(root, body, daemon=f'device_id = "{name}"')
        self.socket = root / "run" / "bus.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = spawn_daemon(self.config, stderr=open(self.root / "loomd.log", "wb"), cwd=REPO)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError((self.root / "loomd.log").read_text())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)


async def mqtt_status(bus: Client) -> dict[str, Any]:
    return await bus.call("mqtt.status")


async def wait_status(sock: Path, pred: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Poll `mqtt.status` until `pred` holds. On an unanswered call, poll from a fresh
    client: seen on this VM, an SDK client whose calls all went unanswered from some point
    on while the daemon was idle (loop lag max 0.3 s) and answered a fresh client at once;
    reported to the lead (loomd.sdk / bus server, not the bridge). Counted in the JSON."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while True:
        async with Client(str(sock), name="bench-poll") as bus:
            while True:
                try:
                    st = await mqtt_status(bus)
                except RemoteError as exc:  # the bus answers before components have started
                    st = {"error": str(exc)}
                except RequestTimeout:
                    LOST_CALLS[0] += 1
                    log(f"mqtt.status unanswered ({LOST_CALLS[0]} so far): a fresh client")
                    break
                if "error" not in st and pred(st):
                    return st
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mqtt status never matched: {st}")
                await asyncio.sleep(0.02)


def paho_client(port: int, cid: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def rtt(port: int, send: str, recv: str, n: int) -> float:
    """Median QoS 1 round trip (ms): publish on `send`, wait for it on `recv`, n times."""
    got = threading.Event()
    c = paho_client(port, f"rtt-{send.replace('/', '-')}")
    c.on_message = lambda c, u, m: got.set()
    sub = threading.Event()
    c.on_subscribe = lambda *a: sub.set()
    c.subscribe(recv, qos=1)
    sub.wait(5)
    samples = []
    for i in range(n + 20):
        got.clear()
        t0 = time.perf_counter()
        c.publish(send, str(i), qos=1)
        if not got.wait(5):
            raise RuntimeError(f"no echo on {recv}")
        if i >= 20:  # warm-up
            samples.append((time.perf_counter() - t0) * 1000)
    c.disconnect()
    c.loop_stop()
    return statistics.median(samples)


def throughput(port: int, send: str, recv: str, n: int) -> tuple[float, int]:
    """QoS 0: blast n messages on `send`; events/s and count at a subscriber of `recv`."""
    count = 0
    first = last = 0.0
    done = threading.Event()

    def on_message(c: Any, u: Any, m: Any) -> None:
        nonlocal count, first, last
        now = time.perf_counter()
        if count == 0:
            first = now
        count += 1
        last = now
        if count >= n:
            done.set()

    rx = paho_client(port, f"rx-{recv.replace('/', '-')}")
    rx.on_message = on_message
    sub = threading.Event()
    rx.on_subscribe = lambda *a: sub.set()
    rx.subscribe(recv, qos=0)
    sub.wait(5)
    tx = paho_client(port, f"tx-{send.replace('/', '-')}")
    payload = b"x" * 64
    for _ in range(n):
        tx.publish(send, payload, qos=0)
    # wait until delivery stops (QoS 0 may drop under load: we report what arrived)
    seen = -1
    while not done.wait(1.0) and seen != count:
        seen = count
    for c in (tx, rx):
        c.disconnect()
        c.loop_stop()
    eps = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return eps, count


async def qos0_drops(sock: Path) -> dict[str, Any]:
    """Where the QoS 0 messages that did not arrive went, as the daemon counted them: the
    bus's drops by reason (a realtime subscription that was full) and the bridge's map
    counters (in: taken from MQTT, out: handed to paho)."""
    async with Client(str(sock), name="bench-stats") as c:
        stats = await c.stats()
        st = await mqtt_status(c)
    maps = {m["mqtt"]: m for m in st["maps"]}
    return {
        "qos0_bus_drops": dict(stats.drops),
        "qos0_dropped_by": {
            f"{s.owner}:{s.pattern}": dict(s.dropped) for s in stats.subscriptions if s.dropped
        },
        "qos0_bridge_in": maps["tp/in"]["in"],
        "qos0_bridge_out": maps["tp/out"]["out"],
    }


async def outbox_replay(d: Daemon, broker: Broker, n: int) -> tuple[float, float]:
    bus = d.socket
    async with Client(str(d.socket), name="bench-flood") as flood:
        await asyncio.to_thread(broker.stop)  # never block the clients' loop (heartbeats)
        await wait_status(bus, lambda s: s["state"] != "connected")
        t0 = time.perf_counter()
        for i in range(n):
            await flood.publish("ob.x", i.to_bytes(8, "big"), qos="reliable", wait=False)
        await wait_status(bus, lambda s: s["outbox_depth"] == n, 60)
        fill = n / (time.perf_counter() - t0)
        await asyncio.to_thread(broker.start)
        # the daemon's own clock: CONNACK to the last PUBACK (no polling in the measure)
        st = await wait_status(bus, lambda s: s["outbox_depth"] == 0, 120)
        return n / (st["outbox_emptied_at"] - st["connected_at"]), fill


async def count_rate(pub_sock: Path, sub_sock: Path, n: int) -> float:
    """Reliable events published on one daemon, events/s at a subscriber of another (or the
    same) daemon: first to last received."""
    async with (
        Client(str(pub_sock), name="bench-pub") as pub,
        Client(str(sub_sock), name="bench-sub") as sub_c,
    ):
        sub = sub_c.subscribe("peer.#", "reliable")
        await sub.ready()
        payload = b"x" * 64

        async def produce() -> None:
            for _ in range(n):
                await pub.publish("peer.x", payload, qos="reliable", wait=False)

        job = asyncio.create_task(produce())
        try:
            await sub.get(30)
        except TimeoutError:
            why = job.exception() if job.done() else "the publisher is still publishing"
            log(f"count_rate: nothing arrived in 30 s ({pub_sock} -> {sub_sock}): {why!r}")
            raise
        t0 = time.perf_counter()
        for _ in range(n - 1):
            await sub.get(30)
        dt = time.perf_counter() - t0
        await job
        await sub.close()
        return (n - 1) / dt


def peers_bench(root: Path, n: int) -> tuple[float, float]:
    from loomd.bridges.peers import load_or_make_keys

    hub_root, sat_root = root / "hub", root / "sat"
    hub_key = load_or_make_keys(hub_root / "state" / "peers")[0].decode()
    sat_key = load_or_make_keys(sat_root / "state" / "peers")[0].decode()
    (hub_root / "peers.d").mkdir(parents=True)
    (hub_root / "peers.d" / "sat.key").write_text(sat_key + "\n")
    port = free_port()
    hub = Daemon(
        hub_root,
        config=PEER_CONFIG.format(root=hub_root, extra=f'listen = "tcp://127.0.0.1:{port}"'),
        name="hub",
    )
    link = (
        f'[[peers.links]]\nname = "hub"\nendpoint = "tcp://127.0.0.1:{port}"\n'
        f'public_key = "{hub_key}"\nsend = ["peer.#"]\nreceive = []\n'
    )
    sat = Daemon(sat_root, config=PEER_CONFIG.format(root=sat_root, extra=link), name="sat")
    try:
        hub.start()
        sat.start()

        async def run() -> tuple[float, float]:
            async with Client(str(sat.socket), name="bench") as c:
                deadline = time.monotonic() + 20
                # the component's status is None until it has started
                while not (
                    ((await c.call("status"))["status"]["components"]["peers"]["status"] or {})
                    .get("peers", {})
                    .get("hub", {})
                    .get("connected")
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError("peer link did not come up")
                    await asyncio.sleep(0.05)
            # alternately, three times each, medians: one run of the local bus lasts well
            # under a second here, and a single scheduling hiccup on a shared box halves it
            locals_, peers = [], []

            async def show() -> None:
                for d in (sat, hub):
                    async with Client(str(d.socket), name="bench") as c:
                        st = (await c.call("status"))["status"]["components"]["peers"]["status"]
                        subs = [(s.owner, s.pattern, s.qos, s.depth, s.dropped)
                                for s in (await c.stats()).subscriptions]  # fmt: skip
                        log(f"{d.root.name}: {st['peers']} {subs}")

            assert hub.proc is not None and sat.proc is not None
            procs = {"bench": psutil.Process(), "sat": psutil.Process(sat.proc.pid),
                     "hub": psutil.Process(hub.proc.pid)}  # fmt: skip
            cpu = {"local": dict.fromkeys(procs, 0.0), "peer": dict.fromkeys(procs, 0.0)}

            async def timed(kind: str, pub: Daemon) -> float:
                before = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
                rate = await count_rate(pub.socket, hub.socket, n)
                for k, p in procs.items():
                    cpu[kind][k] += sum(p.cpu_times()[:2]) - before[k]
                return rate

            try:
                for _ in range(3):
                    locals_.append(await timed("local", hub))  # no forwarding
                    peers.append(await timed("peer", sat))
            except TimeoutError:
                await show()
                raise
            log(f"peer link runs {[round(x) for x in peers]}, local {[round(x) for x in locals_]}")
            await show()
            # CPU per event (us) of each process: where a peer hop's cost lands
            for kind, by in cpu.items():
                PEER_CPU[kind] = {k: round(v / (3 * n) * 1e6, 1) for k, v in by.items()}
            return statistics.median(peers), statistics.median(locals_)

        return asyncio.run(run())
    finally:
        sat.stop()
        hub.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--only", default="", help="comma-separated parts: rtt, qos0, outbox, peers (default all)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the message counts")
    args = ap.parse_args()
    q = args.quick
    parts = {w for w in args.only.split(",") if w} or {"rtt", "qos0", "outbox", "peers"}
    if parts - {"rtt", "qos0", "outbox", "peers"}:
        sys.exit(f"--only: unknown parts {sorted(parts - {'rtt', 'qos0', 'outbox', 'peers'})}")
    k = args.scale
    n_rtt, n_tp, n_ob = (300, 20_000, 5_000) if q else (2_000, 100_000, 30_000)
    n_peer = 20_000 if q else 100_000
    n_rtt, n_tp, n_ob, n_peer = (int(n * k) for n in (n_rtt, n_tp, n_ob, n_peer))
    if shutil.which("mosquitto") is None:
        sys.exit("bench/bridges.py needs mosquitto (scripts/setup --dev)")
    results: dict[str, Any] = {}
    if parts & {"rtt", "qos0", "outbox"}:
        root = Path(tempfile.mkdtemp(prefix="lb-", dir="/tmp"))
        broker = Broker(root)
        broker.start()
        d = Daemon(root, broker.port)
        try:
            d.start()

            async def ready() -> None:
                await wait_status(d.socket, lambda s: s["state"] == "connected")

            asyncio.run(ready())
            if "rtt" in parts:
                log("round trips (QoS 1)")
                results["raw_mqtt_rtt_qos1_ms"] = rtt(broker.port, "raw/rt", "raw/rt", n_rtt)
                results["mqtt_rtt_qos1_ms"] = rtt(broker.port, "rt/in", "rt/out", n_rtt)
            if "qos0" in parts:
                log("throughput (QoS 0)")
                results["raw_mqtt_eps"], raw_n = throughput(broker.port, "raw/tp", "raw/tp", n_tp)
                results["mqtt_in_eps"], got_n = throughput(broker.port, "tp/in", "tp/out", n_tp)
                results["raw_mqtt_delivered"] = raw_n / n_tp
                results["mqtt_delivered"] = got_n / n_tp
                results.update(asyncio.run(qos0_drops(d.socket)))
            if "outbox" in parts:
                log("outbox replay")
                results["outbox_replay_eps"], results["outbox_fill_eps"] = asyncio.run(
                    outbox_replay(d, broker, n_ob)
                )
            assert d.proc is not None
            results["daemon_peak_rss_mb"] = peak_rss_mb(d.proc.pid)
        finally:
            d.stop()
            broker.stop()
            if not os.environ.get("BENCH_KEEP"):
                shutil.rmtree(root, ignore_errors=True)
    if "peers" in parts:
        log("peer link")
        proot = Path(tempfile.mkdtemp(prefix="lp-", dir="/tmp"))
        try:
            results["peer_eps"], results["local_eps"] = peers_bench(proot, n_peer)
            results["peer_cpu_us_per_event"] = PEER_CPU
        finally:
            if not os.environ.get("BENCH_KEEP"):
                shutil.rmtree(proot, ignore_errors=True)
    results["sdk_calls_unanswered"] = LOST_CALLS[0]
    results["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["quick"] = q

    r = results
    if parts != {"rtt", "qos0", "outbox", "peers"}:  # a part alone: the JSON line only
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        return
    added = r["mqtt_rtt_qos1_ms"] - r["raw_mqtt_rtt_qos1_ms"]
    share = r["mqtt_in_eps"] / r["raw_mqtt_eps"] if r["raw_mqtt_eps"] else 0.0
    rows = [
        ("QoS 1 round trip, ms (median)", r["raw_mqtt_rtt_qos1_ms"], r["mqtt_rtt_qos1_ms"],
         f"+{added:.3f} ms"),
        ("QoS 0 throughput, msg/s", r["raw_mqtt_eps"], r["mqtt_in_eps"], f"{share:.0%}"),
        ("  delivered fraction", r["raw_mqtt_delivered"], r["mqtt_delivered"], ""),
        ("outbox fill (bus -> LMDB), ev/s", None, r["outbox_fill_eps"], ""),
        ("outbox replay (LMDB -> broker), ev/s", None, r["outbox_replay_eps"], ""),
        ("reliable ev/s: local bus | peer link", r["local_eps"], r["peer_eps"],
         f"{r['peer_eps'] / r['local_eps']:.0%}"),
    ]  # fmt: skip
    print(f"{'':<40}{'baseline':>16}{'via loomd':>14}{'':>12}")
    for label, raw, via, note in rows:
        raw_s = "-" if raw is None else f"{raw:,.3f}" if raw < 100 else f"{raw:,.0f}"
        via_s = f"{via:,.3f}" if via < 100 else f"{via:,.0f}"
        print(f"{label:<40}{raw_s:>16}{via_s:>14}{note:>12}")
    print(
        f"daemon peak RSS {r['daemon_peak_rss_mb']:.1f} MB, bench {r['bench_peak_rss_mb']:.1f} MB"
    )
    targets = [
        ("bridge adds <= 0.5 ms to a QoS 1 round trip", added <= 0.5),
        (">= 80% of paho alone at QoS 0", share >= 0.8),
        ("outbox replays >= 5k ev/s", r["outbox_replay_eps"] >= 5000),
        ("peer link >= 50% of the local bus", r["peer_eps"] >= 0.5 * r["local_eps"]),
    ]
    for text, ok in targets:
        print(f"  {'PASS' if ok else 'MISS'}  {text}")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
