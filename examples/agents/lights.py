"""A capability used from `loomctl call`: two versions; the highest is used unless one is
named.

    loomctl caps
    loomctl call lights.set '{"level": 30}'          # -> lights.set@2
    loomctl call lights.set@1 '{"on": true}'
"""

from typing import Literal

from loomd.agents import capability

AGENT_ID = "lights"
LEVEL = {"living": 0, "kitchen": 0}


@capability("lights.set", version=1)
def set_v1(on: bool) -> dict[str, int]:
    """Switch every light on or off."""
    for room in LEVEL:
        LEVEL[room] = 100 if on else 0
    return dict(LEVEL)


@capability("lights.set", version=2)
def set_v2(level: int, room: Literal["living", "kitchen"] = "living") -> dict[str, int]:
    """Dim one room.

    Args:
        level: 0 to 100
        room: which room
    """
    LEVEL[room] = max(0, min(100, level))
    return {room: LEVEL[room]}
