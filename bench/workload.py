"""Workloads: publisher/subscriber specs, payloads, the paced/flood schedule, tallies."""

from __future__ import annotations

import math
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.harness import own_peak_rss_mb

STAMP = struct.Struct(">QQ")  # payload prefix: event index, send time (ns)


TOPIC = "bench.x"


DURABLE_TOPIC = "action.bench.x"  # under the default durable pattern "action.#"


LATENCY_RATE = 10_000  # events/s for the latency runs


SUB_WINDOW = 4096


HWM = 20_000  # raw ZeroMQ high-water marks: the same as the loomd SDK's DEALER


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
    max_age_ms: int | None = None  # loomd realtime: events older than this are dropped


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


def publish_for(
    spec: PubSpec, send: Callable[[bytes], object], prefix: bytes = b"", batch: int = 1024
) -> int:
    """The sync publishers' loop: `spec.rate` stamped events a second on a `Schedule`, or
    (no rate) one message as fast as `send` takes it, for `spec.duration_s`; the count sent."""
    if spec.rate:
        sched = Schedule(spec.rate, spec.duration_s)
        while not sched.finished:
            for _ in range(sched.due()):
                send(prefix + payload(spec.size - len(prefix), sched.sent, True))
                sched.sent += 1
            time.sleep(sched.wait_s())
        return sched.sent
    msg = prefix + payload(spec.size - len(prefix))
    sent = 0
    end = time.perf_counter() + spec.duration_s
    while time.perf_counter() < end:
        for _ in range(batch):
            send(msg)
        sent += batch
    return sent


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
