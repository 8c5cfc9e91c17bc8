"""`loomctl home`: areas, devices and their state."""

from __future__ import annotations

from typing import Any

from loomd.cli import dumps, op
from loomd.messages import HomeSnapshot

__all__ = ["add_cli"]


def add_cli(cmds: Any) -> None:
    p = cmds.add_parser("home", help="the home: areas, devices and their state")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cli_home)


async def _cli_home(bus: Any, args: Any) -> int:
    r = await op(bus, "home.list")
    snap = HomeSnapshot.from_payload(r["home"])
    if args.json:
        print(dumps(snap.to_payload(), indent=2))
        return 0
    by_area: dict[str, list[Any]] = {}
    for d in snap.devices:
        by_area.setdefault(d.area, []).append(d)
    names = {a.id: a.name for a in snap.areas}
    for area in [a.id for a in snap.areas] + ([""] if "" in by_area else []):
        print(f"{names.get(area, '(no area)')}" + (f" [{area}]" if area else ""))
        for d in by_area.get(area, []):
            state = (d.state or "?") + (f" {d.unit}" if d.unit and d.state else "")
            print(f"  {d.id:<22} {d.domain.value:<13} {state:<12} {d.name}  ({d.source})")
    return 0
