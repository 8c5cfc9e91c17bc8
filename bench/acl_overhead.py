"""`acl_overhead_pct` for bench/bus.py: loomd realtime 64 B throughput with an ACL of 50
rules and clients that it checks (publisher and subscriber run as `nobody`, so every
publish and the subscription are judged), against no rules and root clients (never
checked: today's path). Runs alternate (none, rules, none, rules, ...) so drift on the
shared machine hits both; the figure compares the medians of the daemon's *CPU time per
event* (user + system of the daemon process over the run, divided by the events it took
in): wall-clock throughput on two shared cores swung 2.4x between two runs of the same
configuration, CPU per event is what the ACL adds and what other processes do not change.
Throughput medians are reported beside it.

CPU time per event still moved 15-26 % between runs of one configuration on the shared box,
so `acl_overhead_pct` itself comes from *instructions*: the daemon runs under valgrind's
callgrind (`apt-get install valgrind`), clients outside it publish a fixed number of
realtime 64 B events in lockstep (a batch of 256, then wait until all 256 arrived: nothing
dropped, the same work every run), the counters are zeroed after a warm-up and dumped after
the events (`callgrind_control`), and instructions per event are compared. Counted
instructions do not depend on what else runs on the machine (two runs of one configuration
agree to well under 1 %). Without valgrind the figure falls back to CPU time per event."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.cases import Case, run_pair
from bench.harness import BenchError, log
from bench.services import start_loomd, stop_loomd
from bench.transports.loomd import _wait_go_async, loomd_pub, loomd_sub
from bench.workload import TOPIC, PubSpec, SubSpec

NOBODY = 65534
CASE = Case("loomd_realtime_64b_eps", "loomd realtime, 64 B", "loomd")
# Under callgrind the daemon runs ~50x slower (~0.5 ms per event): 12k events and the
# start take a minute or two per run.
CALLGRIND_EVENTS = 12_288
CALLGRIND_WARM = 2_048
CALLGRIND_TIMEOUT_S = 600.0
LOCKSTEP = 256  # events per burst: one batch frame, all delivered before the next
# Only the bus under callgrind: the components that load models or run timers of their own
# start slowly under valgrind and add instructions that are not the bus's.
LEAN = tuple(f"{c}.enabled=false" for c in ("voice", "llm", "assist", "home", "agents", "metrics"))


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


@dataclass(frozen=True)
class LockstepSpec:
    endpoint: str
    warm: int
    events: int
    nobody: bool


def lockstep(conn: Connection, spec: LockstepSpec) -> None:
    """A publisher and a subscriber (as `nobody` for the ACL case) in one process: bursts
    of LOCKSTEP realtime events, each waited for at the subscriber. Says `warm` after the
    warm-up, runs the measured events on `go`, then says `result`."""
    if spec.nobody:
        _drop()
    import uvloop

    uvloop.run(_lockstep(conn, spec))


async def _lockstep(conn: Connection, spec: LockstepSpec) -> None:
    import loomd.sdk

    slow = CALLGRIND_TIMEOUT_S
    async with (
        loomd.sdk.connect(spec.endpoint, name="acl-pub", timeout=slow, heartbeat_s=5) as pub,
        loomd.sdk.connect(spec.endpoint, name="acl-sub", timeout=slow, heartbeat_s=5) as sc,
    ):
        sub = sc.subscribe(TOPIC.rsplit(".", 1)[0] + ".#", "realtime")
        async with asyncio.timeout(slow):
            await sub.ready()

        async def bursts(n: int) -> int:
            got = 0
            for start in range(0, n, LOCKSTEP):
                k = min(LOCKSTEP, n - start)
                for i in range(k):
                    await pub.publish(TOPIC, b"%062d" % (start + i), qos="realtime")
                for _ in range(k):
                    await sub.get(timeout=slow)
                    got += 1
            if pub.dropped or sub.dropped:
                raise BenchError(f"lockstep dropped {pub.dropped} / {sub.dropped} events")
            return got

        await bursts(spec.warm)
        conn.send(("warm", {}))
        await _wait_go_async(conn, slow)
        t0 = time.perf_counter()
        got = await bursts(spec.events)
        conn.send(("result", {"events": got, "wall_s": time.perf_counter() - t0}))
        await _wait_go_async(conn, slow)  # connected (heartbeats) through the idle window


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def _instructions(out: Path) -> int:
    """The `summary:` (instructions, all threads) of the last dump callgrind wrote."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    for line in dumps[-1].read_text().splitlines() if dumps else ():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise BenchError(f"no callgrind summary in {dumps[-1] if dumps else out}")


def _callgrind_once(bench: Any, with_acl: bool, events: int) -> dict[str, float]:
    """Instructions the daemon (under callgrind) spends per realtime event, all threads:
    those of the event window less those of an idle window as long (timers, heartbeats:
    what depends on wall time, which valgrind and the machine's load stretch)."""
    plan = _plan(bench, with_acl)
    plan = replace(plan, loomd_set=(*LEAN, *plan.loomd_set))
    root: Path = bench._dir("cg-acl" if with_acl else "cg-noacl")
    os.chmod(root, 0o755)
    out = root / "callgrind.out"
    # a fixed hash seed: str hashes, and with them dict and set probing, are the same in
    # every run (with random seeds two runs of one configuration differed by ~3 %)
    wrap = (
        *("env", "PYTHONHASHSEED=0", "valgrind", "--tool=callgrind"),
        *(f"--callgrind-out-file={out}", "--dump-line=no"),
    )
    daemon = start_loomd(bench.kids, root, plan, wrap=wrap, timeout_s=CALLGRIND_TIMEOUT_S)
    try:
        os.chmod(root / "run", 0o755)
        spec = LockstepSpec(daemon.socket, CALLGRIND_WARM, events, nobody=with_acl)
        w = bench.kids.spawn("acl-lockstep", lockstep, spec)
        try:
            w.expect("warm", CALLGRIND_TIMEOUT_S)
            _callgrind("-z", str(daemon.proc.pid))
            w.send("go")
            res = w.expect("result", CALLGRIND_TIMEOUT_S)
            _callgrind("-d", str(daemon.proc.pid))
            busy = _instructions(out)
            _callgrind("-z", str(daemon.proc.pid))
            time.sleep(res["wall_s"])
            _callgrind("-d", str(daemon.proc.pid))
            idle = _instructions(out)
            w.send("done")
        finally:
            bench.kids.stop(w)
        return {"instr_per_event": (busy - idle) / res["events"], "idle_instr": idle, **res}
    finally:
        stop_loomd(bench.kids, daemon)


def _plan(bench: Any, with_acl: bool) -> Any:
    plan = bench.plan
    if with_acl:
        plan = replace(
            plan, loomd_set=(*plan.loomd_set, 'bus.socket_mode="0666"', f"bus.acl={rules()}")
        )
    os.chmod(bench.tmp, 0o755)  # nobody must reach the socket
    return plan


def acl_instructions(bench: Any, pairs: int = 2, events: int = CALLGRIND_EVENTS) -> dict[str, Any]:
    """`acl_overhead_pct` from callgrind's instruction counts (none, rules, rules, none...)."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"acl_instr_error": "valgrind is not installed (apt-get install -y valgrind)"}
    none: list[float] = []
    acl: list[float] = []
    try:
        for i in range(pairs):
            first, second = (False, True) if i % 2 == 0 else (True, False)
            for with_acl in (first, second):
                log(f"acl overhead under callgrind: pair {i + 1}/{pairs}, acl={with_acl}")
                r = _callgrind_once(bench, with_acl, events)
                log(
                    f"  {r['instr_per_event']:,.0f} instructions per event "
                    f"({r['wall_s']:.0f} s; {r['idle_instr']:,} idle in as long)"
                )
                (acl if with_acl else none).append(r["instr_per_event"])
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        log(f"acl overhead under callgrind FAILED: {exc}")
        return {"acl_instr_error": str(exc)}
    base, ruled = statistics.median(none), statistics.median(acl)
    return {
        "acl_overhead_pct": round((ruled - base) / base * 100, 2),
        "acl_instructions": {
            "measure": "daemon instructions per realtime 64 B event (callgrind, all threads)",
            "events_per_run": events,
            "instr_per_event_no_acl": [round(x) for x in none],
            "instr_per_event_acl": [round(x) for x in acl],
            "spread_no_acl": _spread(none),
            "spread_acl": _spread(acl),
        },
    }


def _once(bench: Any, with_acl: bool) -> tuple[float, float]:
    """(subscriber events/s, daemon CPU microseconds per event taken in)."""
    plan = _plan(bench, with_acl)
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


def acl_overhead(bench: Any, pairs: int, counted_pairs: int = 1) -> dict[str, Any]:
    """CPU time per event over `pairs` alternating pairs, then `acl_overhead_pct` from
    instructions over `counted_pairs` pairs under callgrind (~3-8 min a pair)."""
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
    cpu_pct = round((cpu_acl - cpu_none) / cpu_none * 100, 1)
    counted = acl_instructions(bench, counted_pairs)  # the figure, where valgrind is there
    return {
        "acl_overhead_pct": counted.pop("acl_overhead_pct", cpu_pct),
        **counted,
        "acl_cpu_overhead_pct": cpu_pct,
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
