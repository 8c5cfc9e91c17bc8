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

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import shutil
import signal
import tempfile
import time
from dataclasses import replace

from bench.acl_overhead import acl_overhead
from bench.cases import Bench
from bench.harness import Children, CpuWitness, Plan, log, machine_info
from bench.report import print_report, summarize


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


def max_age_row(bench: Bench) -> dict[str, object]:
    """Issue 21: realtime event age under overload, p99, against the subscription's
    max_age_ms (100), with what was dropped for it (daemon `too_old`, SDK `too_old_local`)."""
    sc = bench.scenarios.get("loomd_realtime_maxage_eps")
    if sc is None or not sc.runs:
        return {}
    ages = [r.sub["age_ms"]["p99"] for r in sc.runs if "age_ms" in r.sub]
    return {
        "realtime_maxage_ms": 100,
        "realtime_maxage_age_p99_ms": round(max(ages), 1) if ages else None,
        "realtime_maxage_too_old": [
            {
                "daemon": r.sub.get("dropped_daemon", {}).get("too_old", 0),
                "sdk": r.sub.get("too_old_local", 0),
            }
            for r in sc.runs
        ],
    }


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
        summary.update(max_age_row(bench))
        if not args.only or "acl" in args.only:
            summary.update(acl_overhead(bench, 3 if args.quick else 5, 1 if args.quick else 2))
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
