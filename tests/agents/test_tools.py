"""Capabilities as tools: valid, unique, reversible names, deterministic whatever the order."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from loomd.agents.capability import CapabilitySpec
from loomd.agents.tools import capability_of, tool_specs

VALID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def test_versions_and_separators() -> None:
    caps = [
        CapabilitySpec("lights.set", 1, "old"),
        CapabilitySpec("lights.set", 2, "new"),
        CapabilitySpec("mcp:time:get_current_time", 1),
        CapabilitySpec("thermostat.set", 3),
    ]
    tools = {t.name: t for t in tool_specs(caps)}
    assert tools["lights_set"].capability == "lights.set@2"  # the broker's unversioned pick
    assert tools["lights_set_v1"].capability == "lights.set@1"
    assert tools["mcp_time_get_current_time"].capability == "mcp:time:get_current_time@1"
    assert tools["thermostat_set"].capability == "thermostat.set@3"
    assert tools["lights_set"].description == "new"
    assert capability_of("lights_set_v1", tools.values()) == "lights.set@1"


def test_collisions_are_resolved_the_same_way_in_any_order() -> None:
    caps = [
        CapabilitySpec("a.b"),
        CapabilitySpec("a_b"),
        CapabilitySpec("a:b"),
        CapabilitySpec("x" * 70),
        CapabilitySpec("x" * 70 + ".y"),
        CapabilitySpec("loomd_publish"),
    ]
    first = {t.capability: t.name for t in tool_specs(caps, reserved={"loomd_publish"})}
    for seed in range(5):
        shuffled = caps[:]
        random.Random(seed).shuffle(shuffled)
        again = {t.capability: t.name for t in tool_specs(shuffled, reserved={"loomd_publish"})}
        assert again == first
    names = list(first.values())
    assert len(set(names)) == len(names)
    assert all(VALID.fullmatch(n) for n in names)
    assert first["a.b@1"] == "a_b"  # first by full name keeps the plain name
    assert first["a_b@1"].startswith("a_b_") and first["a:b@1"].startswith("a_b_")
    assert first["loomd_publish@1"] != "loomd_publish"  # reserved for the MCP server's tool


def test_a_name_keeps_its_hash_when_others_come_and_go() -> None:
    both = {
        t.capability: t.name for t in tool_specs([CapabilitySpec("a.b"), CapabilitySpec("a_b")])
    }
    more = tool_specs([CapabilitySpec("a.b"), CapabilitySpec("a_b"), CapabilitySpec("zzz")])
    assert {t.capability: t.name for t in more if t.capability != "zzz@1"} == both


_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,90}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_names, st.integers(1, 4)), max_size=12, unique=True))
def test_any_set_gives_valid_unique_reversible_names(pairs: list[tuple[str, int]]) -> None:
    caps = [CapabilitySpec(n, v) for n, v in pairs]
    tools = tool_specs(caps)
    names = [t.name for t in tools]
    assert len(set(names)) == len(names) == len(caps)
    assert all(VALID.fullmatch(n) for n in names)
    assert sorted(capability_of(t.name, tools) for t in tools) == sorted(c.full for c in caps)
