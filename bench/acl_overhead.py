"""`acl_overhead_pct` for bench/bus.py: loomd realtime 64 B throughput with an ACL of 50
rules and clients that it checks (publisher and subscriber run as `nobody`, so every
publish and the subscription are judged), against no rules and root clients (never
checked: today's path). Runs alternate (none, rules, none, rules, ...) so drift on the
shared machine hits both; the figure compares the medians of the daemon's *CPU time per
event* (user + system of the daemon process over the run, divided by the events it took
in): wall-clock throughput on two shared cores swung 2.4x between two runs of the same
configuration, CPU per event is what the ACL adds and what other processes do not change.
Throughput medians are reported beside it."""

from __future__ import annotations

import os
import statistics
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.cases import Case, run_pair
from bench.harness import BenchError, log
from bench.services import start_loomd, stop_loomd
from bench.transports.loomd import loomd_pub, loomd_sub
from bench.workload import TOPIC, PubSpec, SubSpec

NOBODY = 65534
CASE = Case("loomd_realtime_64b_eps", "loomd realtime, 64 B", "loomd")


def rules(n: int = 50) -> str:
    """`bus.acl` as one TOML value: n-1 rules for other uids, one for the bench's clients."""
    other = [
        f'{{identity = ["uid:{2000 + i}"], publish = ["app{i}.#", "sensor.{i}.*"], '
        f'subscribe = ["app{i}.#"], call = ["app{i}.*"], state = ["app{i}"]}}'
        for i in range(n - 1)
    ]
    mine = f'{{identity = ["uid:{NOBODY}"], publish = ["bench.#"], subscribe = ["bench.#"]}}'
    return "[" + ", ".join([*other, mine]) + "]"


def _drop() -> None:
    """Import what the worker needs, then become nobody (the Python install under /root is
    not readable by nobody; the kernel records the uid at connect())."""
    import encodings.idna  # noqa: F401

    import uvloop  # noqa: F401

    import loomd.sdk  # noqa: F401

    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def nobody_pub(conn: Connection, spec: PubSpec) -> None:
    _drop()
    loomd_pub(conn, spec)


def nobody_sub(conn: Connection, spec: SubSpec) -> None:
    _drop()
    loomd_sub(conn, spec)


def _once(bench: Any, with_acl: bool) -> tuple[float, float]:
    """(subscriber events/s, daemon CPU microseconds per event taken in)."""
    plan = bench.plan
    if with_acl:
        plan = replace(
            plan, loomd_set=(*plan.loomd_set, 'bus.socket_mode="0666"', f"bus.acl={rules()}")
        )
    os.chmod(bench.tmp, 0o755)  # nobody must reach the socket
    root: Path = bench._dir("acl" if with_acl else "noacl")
    os.chmod(root, 0o755)
    daemon = start_loomd(bench.kids, root, plan)
    try:
        os.chmod(root / "run", 0o755)
        pub = CASE.pub(plan, daemon.socket, topic=TOPIC)
        sub = CASE.sub(plan, daemon.socket, pattern=TOPIC.rsplit(".", 1)[0] + ".#", idle_s=0.5)
        pf, sf = (nobody_pub, nobody_sub) if with_acl else (loomd_pub, loomd_sub)
        run = run_pair(
            bench.kids, "acl" if with_acl else "loomd", sf, sub, pf, pub, daemon.proc.pid
        )
        taken = int(run.pub["sent"]) - int(run.pub.get("dropped_local", 0))
        cpu_us = (run.broker_cpu_s or 0.0) / max(taken, 1) * 1e6
        return float(run.sub["eps"]), cpu_us
    finally:
        stop_loomd(bench.kids, daemon)


def _spread(xs: list[float]) -> float:
    """max / min of runs of one configuration: how noisy the measure is."""
    return round(max(xs) / min(xs), 2) if xs and min(xs) > 0 else float("nan")


def acl_overhead(bench: Any, pairs: int) -> dict[str, Any]:
    none: list[tuple[float, float]] = []
    acl: list[tuple[float, float]] = []
    try:
        for i in range(pairs):
            log(f"acl overhead: pair {i + 1}/{pairs}")
            # alternate which goes first, so neither always runs on a warmer machine
            first, second = (False, True) if i % 2 == 0 else (True, False)
            for with_acl in (first, second):
                (acl if with_acl else none).append(_once(bench, with_acl))
    except BenchError as exc:
        log(f"acl overhead FAILED: {exc}")
        return {"acl_overhead_pct": None, "acl_overhead_error": str(exc)}
    cpu_none = statistics.median(c for _, c in none)
    cpu_acl = statistics.median(c for _, c in acl)
    eps_none = statistics.median(e for e, _ in none)
    eps_acl = statistics.median(e for e, _ in acl)
    return {
        "acl_overhead_pct": round((cpu_acl - cpu_none) / cpu_none * 100, 1),
        "acl_overhead": {
            "rules": 50,
            "measure": "daemon CPU per event, medians of alternating runs",
            "cpu_us_per_event_no_acl": [round(c, 2) for _, c in none],
            "cpu_us_per_event_acl": [round(c, 2) for _, c in acl],
            "cpu_spread_no_acl": _spread([c for _, c in none]),
            "cpu_spread_acl": _spread([c for _, c in acl]),
            "eps_no_acl_root": [round(e) for e, _ in none],
            "eps_acl_50_rules_checked": [round(e) for e, _ in acl],
            "eps_spread_no_acl": _spread([e for e, _ in none]),
            "throughput_overhead_pct": round((eps_none - eps_acl) / eps_none * 100, 1),
        },
    }
