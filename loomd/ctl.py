"""`loomctl`: the operator's window onto a running loomd."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

from loomd import __version__
from loomd.bus.envelope import Event
from loomd.errors import LoomdError, NotRunning, PermissionDenied, RemoteError
from loomd.sdk.client import Client, default_endpoint


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _dumps(value: Any, **kw: Any) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False, default=str, **kw)


def parse_payload(arg: str | None, raw: bool = False) -> Any:
    """JSON text, `@file` (JSON, or bytes with --raw), or nothing (null)."""
    if arg is None:
        return None
    if arg.startswith("@"):
        data = Path(arg[1:]).read_bytes()
        if raw:
            return data
        arg = data.decode()
    elif raw:
        return arg.encode()
    try:
        return json.loads(arg)
    except json.JSONDecodeError as exc:
        raise LoomdError(
            f"payload is not JSON ({exc.msg}); quote strings like '\"hello\"' or use --raw"
        ) from None


def format_event(ev: Event) -> str:
    ts = (
        time.strftime("%H:%M:%S", time.localtime(ev.ts / 1e9)) + f".{ev.ts // 1_000_000 % 1000:03d}"
    )
    payload = ev.payload
    body = f"<{len(payload)} raw bytes>" if isinstance(payload, bytes) else _dumps(payload)
    typ = "" if ev.type == ev.topic else f" [{ev.type}]"
    sender = f" from {ev.sender}" if ev.sender else ""
    return f"{ts} {ev.topic}{typ}{sender}: {body}"


def format_status(st: dict[str, Any]) -> str:
    drops = sum(st.get("drops", {}).values())
    state = st.get("state", {})
    lat = st.get("latency_ms", {})
    lag = st["loop_lag_ms"]
    lines = [
        f"loomd {st['version']} on {st['device_id']} (pid {st['pid']}), up {st['uptime_s']:.0f} s, "
        f"{st['reloads']} reloads",
        f"  config:        {st.get('config_path') or 'built-in defaults'}",
        f"  endpoints:     {', '.join(st.get('endpoints', []))}",
        f"  clients:       {len(st.get('clients', {}))}",
        f"  events:        {st['events_in']} in, {st['events_out']} out, {drops} dropped; "
        f"now {st['rates']['in_per_s']:.0f}/s in, {st['rates']['out_per_s']:.0f}/s out"
        + (f" ({_dumps(st['drops'])})" if drops else ""),
        f"  rejected:      {sum(st.get('rejected', {}).values())} frames"
        + (f" ({_dumps(st['rejected'])})" if st.get("rejected") else ""),
        f"  loop lag:      {lag['last']:.2f} ms (max {lag['max']:.2f} ms)",
        f"  latency:       p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms",
        f"  state:         {state.get('used_bytes', 0) / 1e6:.1f} MB used, "
        f"{state.get('journal_entries', 0)} journal entries",
        f"  metrics:       {st.get('metrics') or 'off'}",
    ]
    topics = st.get("topics", {})
    if topics:
        lines.append("  topics:")
        for name, t in sorted(topics.items(), key=lambda kv: -kv[1]["in"])[:20]:
            lines.append(
                f"    {name:40} in {t['in']:>9}  out {t['out']:>9}  dropped {t['dropped']}"
            )
    subs = st.get("subscriptions", [])
    if subs:
        lines.append("  subscriptions:")
        for s in subs:
            dropped = sum(s["dropped"].values())
            lines.append(
                f"    {s['pattern']:30} {s['qos']:9} {s['owner'][:20]:20} depth {s['depth']:>6} "
                f"delivered {s['delivered']:>9} dropped {dropped}"
            )
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> int:
    async with Client(args.socket, name="loomctl", timeout=args.timeout) as bus:
        if args.cmd == "status":
            st = (await bus.status())["status"]
            print(_dumps(st, indent=2) if args.json else format_status(st))
        elif args.cmd == "pub":
            payload = parse_payload(args.payload, args.raw)
            ev = await bus.publish(args.topic, payload, qos=args.qos, type=args.type, wait=True)
            if args.qos != "reliable":
                await bus.call("ping")  # same socket, in order: the daemon has routed it
            print(f"published {ev.id.hex()} on {args.topic}", file=sys.stderr)
        elif args.cmd == "sub":
            return await _sub(bus, args)
        elif args.cmd == "state":
            return await _state(bus, args)
    return 0


async def _sub(bus: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with bus.subscribe(args.pattern, args.qos) as sub:
        while args.count is None or seen < args.count:
            try:
                ev = await sub.get(timeout=args.wait)
            except TimeoutError:
                print(f"loomctl: no event within {args.wait:g} s", file=sys.stderr)
                return 1
            seen += 1
            print(_dumps(ev.to_dict()) if args.json else format_event(ev), flush=True)
    return 0


async def _state(bus: Client, args: argparse.Namespace) -> int:
    if args.state_cmd == "get":
        r = await bus.call("state_get", ns=args.ns, key=args.key)
        if not r.get("found"):
            print(f"loomctl: no key {args.key!r} in namespace {args.ns!r}", file=sys.stderr)
            return 1
        print(_dumps(r.get("value")))
    elif args.state_cmd == "put":
        await bus.call("state_put", ns=args.ns, key=args.key, value=parse_payload(args.value))
    elif args.state_cmd == "ls":
        for key in (await bus.call("state_ls", ns=args.ns, prefix=args.prefix))["keys"]:
            print(key)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loomctl", description="Inspect and drive a running loomd.")
    p.add_argument(
        "--socket",
        help="daemon socket path or endpoint "
        "(default: $LOOMD_SOCKET, /run/loomd/bus.sock, else the per-user one)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
    p.add_argument("--version", action="version", version=f"loomctl {__version__}")
    cmds = p.add_subparsers(dest="cmd", required=True)
    st = cmds.add_parser(
        "status", help="uptime, topics, subscribers, rates, drops, loop lag, state size"
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    pub = cmds.add_parser("pub", help="publish one event")
    pub.add_argument("topic")
    pub.add_argument("payload", nargs="?", help="JSON, or @FILE")
    pub.add_argument("--qos", default="reliable", choices=("realtime", "batched", "reliable"))
    pub.add_argument("--type", help="event type (default: the topic)")
    pub.add_argument("--raw", action="store_true", help="send the payload as raw bytes")
    sub = cmds.add_parser("sub", help="print events matching a pattern ('#' for all)")
    sub.add_argument("pattern")
    sub.add_argument("--qos", choices=("realtime", "batched", "reliable"))
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_argument("--count", type=int, help="exit after N events")
    sub.add_argument(
        "--wait", type=float, default=None, help="exit 1 if no event arrives within S seconds"
    )
    state = cmds.add_parser("state", help="the daemon's key-value state")
    state.add_argument("--ns", default="user", help="namespace (default: user)")
    sc = state.add_subparsers(dest="state_cmd", required=True)
    g = sc.add_parser("get")
    g.add_argument("key")
    pu = sc.add_parser("put")
    pu.add_argument("key")
    pu.add_argument("value", help="JSON, or @FILE")
    ls = sc.add_parser("ls")
    ls.add_argument("prefix", nargs="?", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.socket = args.socket or default_endpoint()
    try:
        return asyncio.run(_run(args))
    except (NotRunning, PermissionDenied) as exc:
        print(f"loomctl: {exc}", file=sys.stderr)
        return 1
    except RemoteError as exc:
        print(f"loomctl: loomd said: {exc}", file=sys.stderr)
        return 1
    except LoomdError as exc:
        print(f"loomctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
