"""Settings sections that grow with components: nested tables, arrays of tables, tables of
tables, one-line errors with the key path and index, and reload semantics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from loomd.config import Section, build_section, option, split_reload
from loomd.errors import ConfigError


@dataclass(frozen=True)
class Tls(Section):
    ca: str = option("", valid=lambda v: not v or v.startswith("/"), expected="an absolute path")


@dataclass(frozen=True)
class Route(Section):
    mqtt: str = option("")
    bus: str = option("")
    qos: int = option(0, min=0, max=2)
    tls: Tls = option(factory=Tls)


@dataclass(frozen=True)
class Agent(Section):
    model: str = option("small")
    temperature: float = option(0.7, min=0.0, max=2.0)


@dataclass(frozen=True)
class Demo(Section):
    SECTION: ClassVar[str] = "demo"

    level: int = option(1, min=0, max=10, reload=True)
    port: int = option(80, min=1, max=65535)
    ids: tuple[int, ...] = option(factory=tuple)
    map: tuple[Route, ...] = option(factory=tuple)
    agents: Mapping[str, Agent] = option(factory=dict)
    extra: Mapping[str, Any] = option(factory=dict)


def test_arrays_of_tables_and_tables_of_tables_are_built_and_frozen() -> None:
    demo = build_section(
        Demo,
        {
            "ids": [1, 2],
            "map": [{"mqtt": "a/+", "bus": "a.*", "qos": 1}, {"tls": {"ca": "/etc/ca.pem"}}],
            "agents": {"butler": {"model": "tiny"}},
            "extra": {"anything": [1, {"x": 2}]},
        },
    )
    assert demo.ids == (1, 2)
    assert demo.map[0] == Route(mqtt="a/+", bus="a.*", qos=1)
    assert demo.map[1].tls.ca == "/etc/ca.pem"
    assert demo.agents["butler"] == Agent(model="tiny")
    assert demo.extra["anything"] == [1, {"x": 2}]
    with pytest.raises(TypeError):
        demo.agents["x"] = Agent()  # type: ignore[index]
    assert demo.to_dict()["map"][1]["tls"] == {"ca": "/etc/ca.pem"}
    assert build_section(Demo, demo.to_dict()) == demo  # to_dict round-trips


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"map": [{}, {"qos": 3}]}, "demo.map[1].qos = 3: expected an integer from 0 to 2"),
        (
            {"map": [{"qoss": 1}]},
            "demo.map[0].qoss = 1: expected a known key "
            "(unknown key; did you mean demo.map[0].qos?)",
        ),
        (
            {"map": [{"tls": {"ca": "rel"}}]},
            "demo.map[0].tls.ca = 'rel': expected an absolute path",
        ),
        ({"map": {"qos": 1}}, "demo.map = {'qos': 1}: expected an array of tables"),
        ({"map": [5]}, "demo.map[0] = 5: expected a table"),
        (
            {"agents": {"butler": {"temperature": 9.5}}},
            "demo.agents.butler.temperature = 9.5: expected a number from 0 to 2",
        ),
        ({"agents": {"my bot": {"model": 1}}}, 'demo.agents."my bot".model = 1: expected a string'),
        ({"ids": [1, "2"]}, "demo.ids = [1, '2']: expected a list of integers"),
        ({"levl": 2}, "did you mean demo.level?"),
    ],
)
def test_nested_errors_name_the_whole_path(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_section(Demo, table)
    assert str(info.value) == message or message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_reload_takes_only_reloadable_options() -> None:
    old = Demo()
    new = Demo(level=5, port=81)
    running, applied, restart = split_reload(old, new)
    assert (applied, restart) == (["level"], ["port"])
    assert running == Demo(level=5, port=80)  # the port keeps the value in effect
    assert split_reload(old, Demo(level=3)) == (Demo(level=3), ["level"], [])
    assert Demo.reloadable() == frozenset({"level"})


@dataclass(frozen=True)
class Plugins(Section):
    SECTION: ClassVar[str] = "plugins"
    TABLES: ClassVar[str] = "each"

    dirs: tuple[str, ...] = option(factory=tuple)
    each: Mapping[str, Any] = option(factory=dict)


def test_free_sub_tables_land_in_the_catch_all_field() -> None:
    p = build_section(Plugins, {"dirs": ["/x"], "butler": {"model": "tiny"}, "pa": {}})
    assert p.dirs == ("/x",) and dict(p.each) == {"butler": {"model": "tiny"}, "pa": {}}
    assert p.to_dict() == {"dirs": ["/x"], "butler": {"model": "tiny"}, "pa": {}}
    assert build_section(Plugins, p.to_dict()) == p
    with pytest.raises(ConfigError, match=r"plugins\.dirz = 1: expected a known key"):
        build_section(Plugins, {"dirz": 1})  # not a table: still a typo
    old, new = Plugins(), build_section(Plugins, {"butler": {"model": "x"}})
    assert split_reload(old, new)[2] == ["each"]  # a changed table needs a restart here
