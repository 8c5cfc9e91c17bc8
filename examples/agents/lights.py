"""Dimmable lights as capabilities the assist understands, and the devices they act for.

    loomctl caps                                     # lights.set@2 with its sentences
    loomctl assist "dim the kitchen lights to 30 percent"     # -> lights.set@2
    loomctl assist "turn on the living room dimmer"  # a device this agent contributes
    loomctl call lights.set '{"level": 30}'          # -> lights.set@2
    loomctl call lights.set@1 '{"on": true}'

The `devices` declared on `lights.act` join the home registry (`loomctl home` lists them
with the source `agent:lights`); `home.turn_on` on one of them calls `lights.act`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loomd.agents import capability
from loomd.agents.broker import CapabilityError

AGENT_ID = "lights"
Room = Literal["living", "kitchen"]


@dataclass
class Dimmer:
    room: str
    level: int = 0  # percent

    def set(self, level: int) -> int:
        self.level = max(0, min(100, level))
        return self.level


DIMMERS: dict[str, Dimmer] = {"living": Dimmer("living"), "kitchen": Dimmer("kitchen")}
DEVICES = [
    {"id": "living_dimmer", "name": "living room dimmer", "domain": "light"},
    {"id": "kitchen_dimmer", "name": "kitchen dimmer", "domain": "light"},
]


def levels() -> dict[str, int]:
    return {d.room: d.level for d in DIMMERS.values()}


@capability("lights.set", version=1)
def set_v1(on: bool) -> dict[str, int]:
    """Switch every light on or off."""
    for d in DIMMERS.values():
        d.set(100 if on else 0)
    return levels()


@capability(
    "lights.set",
    version=2,
    sentences=[
        "dim the {room} [room] lights to {level} [percent]",
        "set the {room} [room] dimmer to {level} [percent]",
    ],
)
def set_v2(level: int, room: Room = "living") -> dict[str, int | str]:
    """Dim one room.

    Args:
        level: 0 to 100
        room: which room
    """
    now = DIMMERS[room].set(level)
    return {room: now, "reply": f"The {room} lights are at {now} percent"}


@capability("lights.act", devices=DEVICES)
def act(device: str, action: str, value: float | None = None) -> dict[str, int]:
    """What the home registry calls for the dimmers it lists (turn_on, turn_off, brightness).

    Args:
        device: living_dimmer or kitchen_dimmer
        action: turn_on, turn_off or brightness
        value: the brightness, in percent
    """
    d = DIMMERS.get(device.removesuffix("_dimmer"))
    if d is None:
        raise CapabilityError(f"no dimmer {device!r}")
    if action == "brightness" and value is not None:
        d.set(int(value))
    elif action in ("turn_on", "turn_off"):
        d.set(100 if action == "turn_on" else 0)
    else:
        raise CapabilityError(f"a dimmer cannot {action}")
    return {d.room: d.level}
