"""The bus cases: what runs against what, repeats, and the issue targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench.harness import BenchError, Children, Plan, log, peak_rss_mb
from bench.services import start_loomd, start_mosquitto, stop_loomd
from bench.transports.inproc import inproc
from bench.transports.loomd import loomd_pub, loomd_sub
from bench.transports.mqtt import mqtt_pub, mqtt_sub
from bench.transports.zmq import raw_proxy, raw_pub, raw_sub
from bench.workload import DURABLE_TOPIC, LATENCY_RATE, TOPIC, PubSpec, SubSpec

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
    max_age_ms: int | None = None  # loomd realtime: the subscription's max_age_ms

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
            max_age_ms=self.max_age_ms,
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
    # the overload row of issue 21: how old events reach a subscriber that said how old
    # it takes them (the daemon drops older ones at hand-off, the SDK at delivery)
    Case("loomd_realtime_maxage_eps", "loomd realtime, 64 B, max_age 100", "loomd", max_age_ms=100),
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
            "settle_s": daemon.settle_s,
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
