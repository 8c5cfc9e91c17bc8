"""`loomctl`: the operator's window onto a running loomd."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from loomd import __version__
from loomd.bus.envelope import QOS_CLASSES, Event, QoS
from loomd.cli import dumps, op, parse_payload
from loomd.components import registry
from loomd.doctor import add_parser as add_doctor
from loomd.errors import LoomdError, NotRunning, PermissionDenied, ProtocolError, RemoteError
from loomd.models.cli import add_parser as add_models_parser
from loomd.sdk.client import Client
from loomd.sdk.endpoint import default_endpoint


def format_event(ev: Event) -> str:
    ts = (
        time.strftime("%H:%M:%S", time.localtime(ev.ts / 1e9)) + f".{ev.ts // 1_000_000 % 1000:03d}"
    )
    try:
        payload = ev.payload
        body = f"<{len(payload)} raw bytes>" if isinstance(payload, bytes) else dumps(payload)
    except ProtocolError as exc:  # a hostile body: say so and keep tailing
        body = f"<undecodable body: {exc}>"
    typ = "" if ev.type == ev.topic else f" [{ev.type}]"
    sender = f" from {ev.sender}" if ev.sender else ""
    return f"{ts} {ev.topic}{typ}{sender}: {body}"


def format_status(st: dict[str, Any]) -> str:
    d = st["daemon"]
    lag = d["loop_lag_ms"]
    lines = [
        f"loomd {d['version']} on {d['device_id']} (pid {d['pid']}), up {d['uptime_s']:.0f} s, "
        f"{d['reloads']} reloads, {'healthy' if d['healthy'] else 'UNHEALTHY'}",
        f"  config:   {d.get('config_path') or 'built-in defaults'}",
        f"  loop lag: {lag['last']:.2f} ms (max {lag['max']:.2f} ms)",
    ]
    lines += [f"  problem:  {p}" for p in d.get("problems", [])]
    for name, c in st["components"].items():
        head = c["state"] if c["healthy"] is not False else "running, UNHEALTHY"
        reason = f": {c['reason']}" if c.get("reason") else ""
        lines.append(f"{name} ({head}{reason})")
        lines += [f"  {line}" for line in c.get("text", [])]
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """A command-line argument: JSON if it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_op_args(tokens: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """`A B key=value --key value --key=value` -> positional and keyword args; a single
    JSON object argument is the whole keyword map (`'{"key": "lamp"}'`)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and len(tok) > 2:
            key, eq, value = tok[2:].partition("=")
            if not eq:
                if i + 1 >= len(tokens):
                    raise LoomdError(f"{tok} needs a value")
                i += 1
                value = tokens[i]
            kwargs[key.replace("-", "_")] = parse_value(value)
        elif "=" in tok and tok.split("=", 1)[0].isidentifier():
            key, _, value = tok.partition("=")
            kwargs[key] = parse_value(value)
        elif tok.startswith("{") and len(tokens) == 1:  # the whole argument map at once
            obj = parse_payload(tok)
            if not isinstance(obj, dict):
                raise LoomdError("a JSON argument must be an object")
            kwargs.update(obj)
        else:
            args.append(parse_value(tok))
        i += 1
    return args, kwargs


async def _run(args: argparse.Namespace) -> int:
    async with Client(args.socket, name="loomctl", timeout=args.timeout) as bus:
        result: int = await args.func(bus, args)
        return result


async def _status(bus: Client, args: argparse.Namespace) -> int:
    st = (await bus.status())["status"]
    print(dumps(st, indent=2) if args.json else format_status(st))
    return 0


async def _pub(bus: Client, args: argparse.Namespace) -> int:
    payload = parse_payload(args.payload, args.raw)
    ev = await bus.publish(args.topic, payload, qos=args.qos, type=args.type, wait=True)
    if args.qos != "reliable":
        await bus.call("ping")  # same socket, in order: the daemon has routed it
    print(f"published {ev.id.hex()} on {args.topic}", file=sys.stderr)
    return 0


async def _sub(bus: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with bus.subscribe(args.pattern, args.qos) as sub:
        await sub.ready()  # the daemon routes to it from now on: say so (scripts wait for it)
        print(f"loomctl: subscribed to {args.pattern}", file=sys.stderr, flush=True)
        while args.count is None or seen < args.count:
            try:
                ev = await sub.get(timeout=args.wait)
            except TimeoutError:
                print(f"loomctl: no event within {args.wait:g} s", file=sys.stderr)
                return 1
            seen += 1
            print(dumps(ev.to_dict()) if args.json else format_event(ev), flush=True)
    return 0


async def _ops(bus: Client, args: argparse.Namespace) -> int:
    r = await bus.call("commands")
    if args.json:
        print(dumps(r, indent=2))
        return 0
    for name, info in r["commands"].items():
        params = " ".join(f"[{p}]" for p in info["params"])
        print(f"{name} {params}".rstrip() + (f"  - {info['help']}" if info["help"] else ""))
    down = {n: s for n, s in r["components"].items() if s != "running"}
    for n, s in down.items():
        print(f"({n}: {s})")
    return 0


async def _generic(bus: Client, args: argparse.Namespace) -> int:
    pos, kw = parse_op_args(args.op_args)
    result = await op(bus, f"{args.component}.{args.op}", *pos, **kw)
    result = {k: v for k, v in result.items() if k not in ("rid", "ok")}
    print(dumps(result, indent=2))
    return 0


class _Commands:
    """argparse's subparsers, remembering the names added (argparse keeps its own list
    private), so `parse` knows the friendly commands from a component's generic ops."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub
        self.names: list[str] = []

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        self.names.append(name)
        parser: argparse.ArgumentParser = self._sub.add_parser(name, **kw)
        return parser


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, list[str]]:
    p = argparse.ArgumentParser(
        prog="loomctl",
        description="Inspect and drive a running loomd. Beyond the commands below, "
        "`loomctl COMPONENT OP [ARGS]` runs any component's operation "
        "(ARGS: values, key=value, --key value, or a JSON object); `loomctl ops` lists them.",
    )
    p.add_argument(
        "--socket",
        help="daemon socket path or endpoint "
        "(default: $LOOMD_SOCKET, /run/loomd/bus.sock, else the per-user one)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
    p.add_argument("--version", action="version", version=f"loomctl {__version__}")
    cmds = _Commands(p.add_subparsers(dest="cmd", required=True, metavar="COMMAND"))
    st = cmds.add_parser("status", help="the daemon and every component's status")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_status)
    pub = cmds.add_parser("pub", help="publish one event")
    pub.add_argument("topic")
    pub.add_argument("payload", nargs="?", help="JSON, or @FILE")
    pub.add_argument("--qos", default=QoS.RELIABLE.value, choices=QOS_CLASSES)
    pub.add_argument("--type", help="event type (default: the topic)")
    pub.add_argument("--raw", action="store_true", help="send the payload as raw bytes")
    pub.set_defaults(func=_pub)
    sub = cmds.add_parser("sub", help="print events matching a pattern ('#' for all)")
    sub.add_argument("pattern")
    sub.add_argument("--qos", choices=QOS_CLASSES)
    sub.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_argument("--count", type=int, help="exit after N events")
    sub.add_argument(
        "--wait", type=float, default=None, help="exit 1 if no event arrives within S seconds"
    )
    sub.set_defaults(func=_sub)
    ops = cmds.add_parser("ops", help="list every component operation the daemon serves")
    ops.add_argument("--json", action="store_true")
    ops.set_defaults(func=_ops)
    add_doctor(cmds)
    add_models_parser(cmds)
    reg = registry()
    for name in reg.names():  # friendly commands of the components
        add = reg.cli(name)
        if add is not None:
            add(cmds)
    return p, cmds.names


def _generic_parser() -> argparse.ArgumentParser:
    g = argparse.ArgumentParser(prog="loomctl")
    g.add_argument("--socket")
    g.add_argument("--timeout", type=float, default=5.0)
    g.add_argument("component")
    g.add_argument("op")
    g.add_argument("op_args", nargs=argparse.REMAINDER)
    g.set_defaults(func=_generic)
    return g


def parse(argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    parser, names = _build()
    first = _first_positional(argv)
    friendly = set(names)
    if first is not None and first not in friendly and first in registry().names():
        rest = argv[argv.index(first) + 2 :] if argv.index(first) + 1 < len(argv) else []
        if any(t in ("-h", "--help") for t in rest):
            parser.parse_args([*argv[: argv.index(first)], "--help"])
        return _generic_parser().parse_args(argv)
    return parser.parse_args(argv)


def _first_positional(argv: list[str]) -> str | None:
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("--socket", "--timeout"):
            i += 2
            continue
        if tok.startswith("-"):
            i += 1
            continue
        return tok
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if getattr(args, "local", False):  # models, doctor: run here, no daemon needed up front
        try:
            code: int = args.func(args)
        except LoomdError as exc:
            print(f"loomctl: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        return code
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
