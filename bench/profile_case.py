"""Profile one bench/bus.py case with py-spy: where the daemon and the clients spend CPU.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_case.py loomd_realtime_64b_eps
    .venv/bin/python bench/profile_case.py loomd_reliable_eps --seconds 6 --out /tmp/prof
    .venv/bin/python bench/profile_case.py --bench bridges qos0      # or rtt, peers
    .venv/bin/python bench/profile_case.py --bench agents sdk        # SDK provider calls

Runs `bench/bus.py --quick --only CASE` with longer runs, samples the loomd daemon and
the bench's publisher and subscriber processes while events flow, writes a raw
(collapsed stacks) file and an SVG flame graph per process, and prints the top
functions by own time and by inclusive time. GIL-idle time in the event loop shows
up as `Runner.run` / `run` self time.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

BENCH = Path(__file__).resolve().parent / "bus.py"
BRIDGES = Path(__file__).resolve().parent / "bridges.py"
AGENTS = Path(__file__).resolve().parent / "agents.py"
TARGET_NAMES = ("loomd", "mosquitto")  # brokers, by process name
WORKER_SUFFIXES = ("-pub", "-sub", "-proxy", "inproc")  # bench workers name themselves


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    return found


def find_targets(bench: psutil.Process) -> dict[str, int]:
    """name -> pid of the broker and the workers currently under the bench process."""
    out: dict[str, int] = {}
    for p in bench.children(recursive=True):
        try:
            name = p.name()
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "loomd.daemon" in cmd:  # bench/bridges.py's daemons: named by their config dir
            name = "loomd-" + Path(cmd[cmd.index("--config") + 1]).parent.name
        elif any(c.endswith("provider.py") for c in cmd):  # bench/agents.py's SDK provider
            name = "provider"
        if (
            name in TARGET_NAMES
            or name.endswith(WORKER_SUFFIXES)
            or name.startswith("loomd-")
            or name == "provider"
        ):
            out[name] = p.pid
    return out


def wait_for_daemons(
    bench: psutil.Process, timeout: float, warmup: float, also: str = ""
) -> dict[str, int]:
    """bench/bridges.py (and agents.py): wait for its daemon(s) (and the process `also`),
    then for the flow to start (`warmup` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_targets(bench)
        if any(n.startswith("loomd-") for n in found) and (not also or also in found):
            time.sleep(warmup)
            targets = find_targets(bench)
            targets["bench"] = bench.pid  # the paho clients (or SDK clients) live here
            return targets
        time.sleep(0.05)
    sys.exit(f"no daemon appeared within {timeout:.0f} s")


def wait_for_flow(bench: psutil.Process, timeout: float) -> dict[str, int]:
    """Wait until a publisher (or the in-process worker) exists, then let it warm up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        targets = find_targets(bench)
        if any(n.endswith("-pub") or n == "inproc" for n in targets):
            time.sleep(1.0)  # spawn, imports, connect, 'go'
            return find_targets(bench)
        time.sleep(0.05)
    sys.exit(f"no publisher appeared within {timeout:.0f} s")


def record(spy: str, targets: dict[str, int], seconds: float, rate: int, out: Path) -> list[Path]:
    procs, raws = [], []
    for name, pid in targets.items():
        raw = out / f"{name}.txt"
        common = ["-p", str(pid), "-d", str(int(seconds)), "-r", str(rate), "--nonblocking"]
        procs.append(
            subprocess.Popen(
                [spy, "record", *common, "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [spy, "record", *common, "-o", str(out / f"{name}.svg")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        raws.append(raw)
    for p in procs:
        p.wait(seconds + 30)
    return [r for r in raws if r.exists()]


def _function(frame: str) -> str:
    """`name (path:line)` -> `name (path)`: lines of one function count together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def top(raw: Path, n: int, rate: int, seconds: float) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, k = [_function(f) for f in stack.split(";")], int(count)
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    if not total:
        return f"== {raw.stem}: no samples\n"
    busy = 100 * total / (rate * seconds)
    lines = [f"== {raw.stem}: {total} samples (~{busy:.0f}% of one core incl. threads)"]
    lines.append("   own time, by function:")
    lines += [f"   {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(n)]
    lines.append("   inclusive, loomd functions:")
    deep = [(f, c) for f, c in incl.most_common() if "(loomd/" in f or "paho" in f][:n]
    lines += [f"   {100 * c / total:5.1f}%  {f}" for f, c in deep]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "case",
        help="a bench/bus.py case key, e.g. loomd_realtime_64b_eps; with "
        "--bench bridges a part of bench/bridges.py: rtt, qos0, outbox, peers",
    )
    p.add_argument("--bench", choices=("bus", "bridges", "agents"), default="bus")
    p.add_argument("--warmup", type=float, default=3.0, help="bridges: s from start to flow")
    p.add_argument("--scale", type=float, default=4.0, help="bridges: --scale of the bench")
    p.add_argument("--seconds", type=float, default=5.0, help="sampling time per process")
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", type=Path, default=None, help="default: /tmp/loomd-profile-CASE")
    args = p.parse_args()
    spy = py_spy()
    out = args.out or Path(f"/tmp/loomd-profile-{args.case}")
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(BENCH),
        "--quick",
        "--json-only",
        "--only",
        args.case,
        "--duration",
        str(args.seconds + 3),
    ]
    if args.bench == "bridges":
        argv = [sys.executable, str(BRIDGES), "--quick", "--only", args.case,
                "--scale", str(args.scale)]  # fmt: skip
    if args.bench == "agents":  # enough calls to outlast the sampling
        argv = [sys.executable, str(AGENTS), "--only", args.case,
                "--n", str(int(4000 * args.scale))]  # fmt: skip
    with open(out / "bench.json", "wb") as js, open(out / "bench.log", "wb") as log:
        bench = subprocess.Popen(argv, stdout=js, stderr=log)
        try:
            proc = psutil.Process(bench.pid)
            if args.bench == "bridges":
                targets = wait_for_daemons(proc, 60, args.warmup)
            elif args.bench == "agents":
                targets = wait_for_daemons(proc, 60, args.warmup, also="provider")
            else:
                targets = wait_for_flow(proc, 60)
            print(f"profiling {args.case}: {targets}", file=sys.stderr)
            raws = record(spy, targets, args.seconds, args.rate, out)
            bench.wait(120)
        finally:
            if bench.poll() is None:
                bench.terminate()
                bench.wait(10)
    for raw in sorted(raws):
        print(top(raw, args.top, args.rate, args.seconds))
    print(f"raw stacks and SVG flame graphs in {out}; the bench's JSON in {out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
