"""Rows of bench/hostile.py for the hostile gaps of issue 19 that cost others work or room:
`matching_cost` (patterns built to make every publish expensive to match) and
`state_total` (one identity filling namespace after namespace)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import zmq

from bench.harness import control_replies
from loomd.bus import wire
from loomd.errors import RemoteError
from loomd.sdk import connect


def wildcard_patterns(rng: random.Random, n: int) -> list[str]:
    """The reported attack: 24-31 segments of `*`, four of them `#`, at random places."""
    out = []
    for _ in range(n):
        segs = ["*"] * (rng.randint(24, 31) - 4)
        for _ in range(4):
            segs.insert(rng.randint(0, len(segs)), "#")
        out.append(".".join(segs))
    return out


def literal_patterns(rng: random.Random, n: int) -> list[str]:
    """The same with literals between the wildcards, so no two runs collapse: the most
    matching work a pattern can ask for, against topics made of that literal."""
    out = []
    for _ in range(n):
        segs = [rng.choice(["*", "x", "x"]) for _ in range(rng.randint(20, 27))]
        for _ in range(4):
            segs.insert(rng.randint(0, len(segs)), "#")
        out.append(".".join(segs))
    return out


async def _subscribe_raw(endpoint: str, patterns: list[str]) -> tuple[zmq.Socket[bytes], int]:
    """A bare client that subscribes `patterns` and never reads its deliveries."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send(wire.pack_control({"op": "hello", "rid": 0, "name": "matcher"}))
    for i, p in enumerate(patterns):
        s.send(wire.pack_control({"op": "sub", "rid": i + 1, "sid": i + 1, "pattern": p}))
    got = await control_replies(s, len(patterns) + 1, timeout=20)
    return s, sum(bool(r.get("ok")) and r.get("rid") != 0 for r in got)


async def matching_cost(d: Any, q: bool) -> str:
    """8 (quick) or 64 clients, each 256 wildcard-heavy subscriptions (and one more client
    the literal-laden kind, as many as its budget takes), then 50 realtime events on
    32-segment topics: the witness's ping must not notice."""
    rng = random.Random(19)
    socks = []
    held = 0
    for _ in range(8 if q else 64):
        s, ok = await _subscribe_raw(d.endpoint, wildcard_patterns(rng, 256))
        socks.append(s)
        held += ok
    s, costly = await _subscribe_raw(d.endpoint, literal_patterns(rng, 256))
    socks.append(s)
    t0 = time.perf_counter()
    async with connect(d.endpoint) as bus:
        for i in range(50):
            if i % 2:
                topic = ".".join(f"s{rng.randrange(1000)}" for _ in range(32))
            else:
                topic = ".".join(["x"] * 31 + [str(i)])
            await bus.publish(topic, b"m", qos="realtime")
        await bus.call("ping", timeout=60)
    took = time.perf_counter() - t0
    for s in socks:
        s.close()
    return (
        f"{held} wildcard subs held by {len(socks) - 1} clients; {costly}/256 literal-laden "
        f"subs held (match cost quota); 50 events in {took:.2f} s"
    )


# A store whose key-value quotas alone would not keep the journal's room (kv_max_mb over
# the map's limit, as "namespaces unlimited" was): only the reserve does.
STATE_TOML = "[state]\nmax_map_size_mb = 96\njournal_max_mb = 16\nkv_max_mb = 1024\n"


def state_daemon(root: Path) -> Any:
    from tests.conftest import LoomdProcess

    return LoomdProcess(root, STATE_TOML)


async def state_total(d: Any, q: bool) -> str:
    """One client writes 512 KiB values into namespace after namespace until refused, then
    smaller ones (what is left between large values); durable publishes must still be
    acknowledged after it."""
    refused = stored = failed = 0
    why = ""
    async with connect(d.endpoint) as bus:
        for size, namespaces in ((512 * 1024, 12 if q else 40), (16 * 1024, 4), (1024, 4)):
            blob = "x" * size
            for ns in range(namespaces):
                for i in range(20):
                    try:
                        await bus.call("state.put", args=[f"k{i}", blob], ns=f"f{size}.{ns}")
                        stored += 1
                    except RemoteError as exc:
                        refused += 1
                        why = why or f"{exc.code}: {exc}"
        for i in range(50):
            try:
                await bus.publish("action.after.fill", i)
            except RemoteError:
                failed += 1
    return f"{stored} puts stored, {refused} refused ({why[:70]}); {failed}/50 durable ones failed"
