"""What a component's `loomctl` subcommands are built on: run an operation, print JSON, read
a payload argument.

A package offers friendly commands with a function `add_cli(cmds)` in its own `cli` module,
named in the component registry (`loomd.components.BUILTIN_CLI`, or an entry point in the
group `loomd.cli`); `loomctl` calls it with argparse's subparsers. Each parser it adds sets
`func=async (client, args) -> exit code`, built on `op()` here, so no package imports
`loomd.ctl` (the top floor) and `loomctl --help` imports no component module.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomd.errors import LoomdError

if TYPE_CHECKING:
    from loomd.sdk.client import Client

__all__ = ["add_group", "dumps", "jsonable", "op", "parse_payload", "show"]


def add_group(
    cmds: Any, name: str, help: str, actions: Mapping[str, str], func: Any,
    *, required: bool = True,
) -> Any:  # fmt: skip
    """`loomctl NAME ACTION`: a command with its actions (`{action: help}`, no arguments),
    run by `func`, which finds the action in `args.<name>_cmd`. Returns the sub-parsers,
    for actions that take arguments."""
    p = cmds.add_parser(name, help=help)
    sc = p.add_subparsers(dest=f"{name}_cmd", required=required)
    for action, text in actions.items():
        sc.add_parser(action, help=text)
    p.set_defaults(func=func)
    return sc


def show(rows: Sequence[Any], as_json: bool, text: Callable[[Any], str]) -> None:
    """A listing: the rows as one JSON document (`--json`), or `text(row)` for each."""
    if as_json:
        print(dumps(rows, indent=2))
        return
    for row in rows:
        print(text(row))


def jsonable(value: Any) -> Any:
    """A CBOR value as JSON can hold it: bytes become `{"base64": ...}`."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, **kw: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False, default=str, **kw)


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


async def op(bus: Client, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run `<component>.<op>` on the daemon: what every friendly command is built on."""
    return await bus.call(name, args=list(args), **kwargs)
