"""Running the checks: each in its own thread with its deadline, the report, the exit
code, and `loomctl doctor` / `python -m loomd.doctor`.

The board's own checks are `BOARD_CHECKS`; each component contributes its own through the
registry (`loomd.components.BUILTIN_DOCTOR`, or the entry-point group `loomd.doctor`), so
doctor knows no subsystem: `all_checks()` is both."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loomd.components import registry
from loomd.doctor.board import check_disk, check_memory, check_temperature, check_throttling
from loomd.doctor.context import Check, Context, Result, Status, Verdict, fail, load_context
from loomd.doctor.daemon import check_config, check_daemon, check_group, check_socket
from loomd.doctor.models import check_models
from loomd.doctor.system import check_clock

log = logging.getLogger(__name__)


# --- running ----------------------------------------------------------------------------


BOARD_CHECKS: tuple[Check, ...] = (
    Check("config", check_config),
    Check("daemon", check_daemon, 6.0),  # daemon_timeout_s (3 s) and a margin
    Check("group", check_group),
    Check("socket", check_socket),
    Check("models", check_models, 120.0),  # sha256 of a few hundred MB on a Pi
    Check("memory", check_memory, 6.0),  # may wait for the daemon's status
    Check("temperature", check_temperature),
    Check("throttling", check_throttling),
    Check("disk", check_disk),
    Check("clock", check_clock),
)


def all_checks() -> tuple[Check, ...]:
    """The board's checks, then each component's, in registry order. A component whose
    checks do not import gets one failing check that says so (the rest still run)."""
    out = list(BOARD_CHECKS)
    for name, contributed in registry().doctor().items():
        if isinstance(contributed, Exception):
            why = f"{type(contributed).__name__}: {contributed}"
            out.append(Check(name, functools.partial(_broken, why)))
        else:
            out.extend(contributed)
    return tuple(out)


def _broken(why: str, ctx: Context) -> Verdict:
    return fail(f"its checks did not import: {why}", "reinstall loomd; report it if it stays")


def run_checks(ctx: Context, checks: Sequence[Check] | None = None) -> list[Result]:
    """Every check (default: `all_checks()`) at once, each in its own daemon thread with
    its deadline: a hung check cannot hold the exit, a crash becomes its own `fail` line."""
    if checks is None:
        checks = all_checks()
    boxes: list[list[Verdict]] = [[] for _ in checks]

    def one(i: int, c: Check) -> None:
        try:
            boxes[i].append(c.fn(ctx))
        except Exception as exc:  # a crashing check is a finding, not the end of the report
            log.debug("check %s crashed", c.name, exc_info=True)
            boxes[i].append(
                fail(
                    f"check crashed: {type(exc).__name__}: {exc}",
                    "report this: loomctl doctor --json output and the traceback "
                    "from `python -m loomd.doctor --debug`",
                )
            )

    threads = [
        threading.Thread(target=one, args=(i, c), name=f"doctor-{c.name}", daemon=True)
        for i, c in enumerate(checks)
    ]
    for t in threads:
        t.start()
    start = time.monotonic()
    results = []
    for i, (c, t) in enumerate(zip(checks, threads, strict=True)):
        t.join(max(0.0, start + c.timeout_s - time.monotonic()))
        v = (
            boxes[i][0]
            if boxes[i]
            else fail(f"no answer within {c.timeout_s:g} s", "run it again; if it hangs, report it")
        )
        results.append(Result(c.name, v.status, v.finding, v.fix))
    return results


MARK = {Status.OK: "ok  ", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}


def format_results(results: list[Result]) -> str:
    width = max(len(r.check) for r in results)
    lines = []
    for r in results:
        lines.append(f"{MARK[r.status]}  {r.check:<{width}}  {r.finding}")
        if r.fix and r.status in (Status.WARN, Status.FAIL):
            lines.append(f"      {'':<{width}}  fix: {r.fix}")
    fails = sum(r.status == Status.FAIL for r in results)
    warns = sum(r.status == Status.WARN for r in results)
    lines.append(
        f"{fails} failed, {warns} warning(s), {sum(r.status == Status.OK for r in results)} ok"
    )
    return "\n".join(lines)


def exit_code(results: list[Result]) -> int:
    return 1 if any(r.status == Status.FAIL for r in results) else 0


# --- loomctl doctor ---------------------------------------------------------------------


def add_parser(cmds: Any) -> None:
    """`loomctl doctor`: registered by loomd/ctl.py; runs locally (`local=True`)."""
    p = cmds.add_parser(
        "doctor",
        help="check this board: daemon, permissions, audio, models, "
        "memory, temperature, disk, MQTT, cloud key, clock, GPU",
        description="One line per check with its fix. Runs without the daemon (it is one "
        "of the checks). Exit 1 when a check fails; warnings do not fail.",
    )
    p.add_argument("--json", action="store_true", help="the checks as a JSON list")
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="the daemon's configuration (default: $LOOMD_CONFIG, else /etc/loomd/loomd.toml)",
    )
    p.set_defaults(func=main_args, local=True)


def main_args(args: argparse.Namespace) -> int:
    ctx = load_context(args.config, getattr(args, "socket", None))
    if getattr(args, "timeout", None):
        ctx.daemon_timeout_s = min(float(args.timeout), 3.0)
    results = run_checks(ctx)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        print(format_results(results))
    return exit_code(results)


def main(argv: list[str] | None = None) -> int:
    """`python -m loomd.doctor`: the same as `loomctl doctor`, plus --debug (tracebacks)."""
    p = argparse.ArgumentParser(prog="python -m loomd.doctor")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", type=Path)
    p.add_argument("--socket")
    p.add_argument("--debug", action="store_true", help="log each crashing check's traceback")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    return main_args(args)
