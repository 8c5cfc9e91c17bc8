"""Researcher: a module of `@capability` functions is a plugin too (agent id `researcher`).

loomctl call research.find '{"topic": "solar"}'
"""

from loomd.agents import CapabilityError, capability

AGENT_ID = "researcher"

# A board answers from what it has; a real researcher would read sensors, files, or an MCP
# tool (`await ctx.call("fetch:fetch", url=...)`).
NOTES = {
    "solar": ["panels make 18-22% of sunlight into power", "output drops ~0.4%/degree C"],
    "battery": ["LiFePO4 lasts 3000+ cycles", "keep it between 10 and 90 percent"],
    "wind": ["power grows with the cube of wind speed", "small turbines need 4 m/s to start"],
}


@capability("research.find")
def find(topic: str, limit: int = 2) -> list[str]:
    """Facts about a topic.

    Args:
        topic: what to look up (solar, battery, wind)
        limit: at most this many facts
    """
    facts = NOTES.get(topic.lower())
    if facts is None:
        raise CapabilityError(f"nothing known about {topic!r}; try one of {', '.join(NOTES)}")
    return facts[:limit]
