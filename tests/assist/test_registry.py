"""The device registry: config and home.d validation, sources, the snapshot others see."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomd.config import build_section
from loomd.errors import ConfigError, LoomdError
from loomd.home.registry import Registry, Source, load_dir, source_from_tables
from loomd.home.settings import DeviceSettings, HomeSettings
from loomd.messages import Domain, HomeSnapshot

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "home"


def test_the_example_home_loads() -> None:
    reg = Registry()
    for src in load_dir(EXAMPLE):
        reg.set_source(src)
    assert set(reg.areas) == {"kitchen", "living_room", "bedroom", "hall"}
    assert reg.get("front_door").domain == Domain.LOCK
    assert reg.get("front_door").needs_confirm("unlock")
    assert not reg.get("front_door").needs_confirm("lock")
    assert reg.get("kitchen_ceiling").source == "home.d/home.toml"
    snap = HomeSnapshot.from_payload(reg.snapshot().to_payload())
    door = next(d for d in snap.devices if d.id == "front_door")
    assert door.confirm == ("unlock",) and door.sensitive


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"id": "x", "domain": "toaster", "command_topic": "t"}, "domain", "one of light"),
        ({"id": "x", "domain": "light"}, "command_topic", "a command_topic"),
        ({"id": "x", "domain": "sensor"}, "state_topic", "a state topic"),
        ({"id": "Bad Id", "domain": "light", "command_topic": "t"}, "id", "lower-case"),
        ({"id": "x", "domain": "light", "command_topic": "a/+/b"}, "command_topic", "wildcards"),
        (
            {"id": "x", "domain": "light", "command_topic": "t", "capability": "c"},
            "capability",
            "not both",
        ),
        ({"id": "x", "domain": "light", "command_topc": "t"}, "devices[0].command_topc", "did you"),
    ],
)
def test_bad_devices_get_clear_errors(table: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_section(HomeSettings, {"devices": [table]})
    assert key in err.value.key and words in str(err.value), str(err.value)


def test_duplicates_and_unknown_areas_are_refused_and_nothing_is_lost() -> None:
    reg = Registry()
    light = DeviceSettings(id="lamp", domain="light", command_topic="t")
    reg.set_source(Source("config", (), (light,)))
    with pytest.raises(LoomdError, match="declared twice"):
        reg.set_source(Source("home.d/b.toml", (), (light,)))
    with pytest.raises(LoomdError, match="no area 'attic'"):
        reg.set_source(
            Source(
                "x", (), (DeviceSettings(id="y", domain="light", area="attic", command_topic="t"),)
            )
        )
    assert list(reg.devices) == ["lamp"] and list(reg.sources) == ["config"]


def test_a_home_d_file_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[[devices]]\nid = "x"\ndomain = "lite"\n')
    with pytest.raises(ConfigError, match=r"home.d/a.toml: devices\[0\].domain"):
        load_dir(tmp_path)
    (tmp_path / "a.toml").write_text("[[devices]\n")
    with pytest.raises(LoomdError, match=r"a\.toml"):
        load_dir(tmp_path)


def test_agent_devices_are_a_source_of_their_own() -> None:
    reg = Registry()
    reg.set_source(
        source_from_tables(
            "agent:garden",
            {
                "devices": [
                    {
                        "id": "sprinkler",
                        "name": "sprinkler",
                        "domain": "switch",
                        "capability": "garden.act",
                    }
                ]
            },
        )
    )
    assert reg.get("sprinkler").source == "agent:garden"
    assert reg.drop_source("agent:garden") and not reg.devices
