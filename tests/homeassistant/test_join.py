"""HA's exposed entities joined into the device registry (pure; no HA needed): areas by id
or name, a config device that names an entity wins and HA fills its blanks, other entities
become devices of their own, unknown domains are skipped, and actions map to services."""

from __future__ import annotations

import pytest

from loomd.errors import ConfigError, LoomdError
from loomd.home.hass import HA_SOURCE, ha_service, join_ha
from loomd.home.registry import Registry, Source
from loomd.home.settings import AreaSettings, DeviceSettings
from loomd.messages import Domain, HaArea, HaEntity, HaSnapshot

SNAP = HaSnapshot(
    areas=(HaArea("kitchen_2", "Kitchen"), HaArea("porch", "Porch", ("front porch",))),
    entities=(
        HaEntity("light.kitchen_lights", "Kitchen Lights", "kitchen_2", state="off"),
        HaEntity("light.porch_lamp", "Porch Lamp", "porch", aliases=("stoop light",)),
        HaEntity("switch.kettle", "Kettle", "kitchen_2", aliases=("tea maker",)),
        HaEntity("scene.movie", "Movie time"),
    ),
)


def _config() -> Source:
    return Source(
        "config",
        (AreaSettings(id="kitchen", name="Kitchen"),),
        (DeviceSettings(id="kettle", aliases=("boiler",), entity_id="switch.kettle"),),
    )


def test_ha_entities_join_the_config() -> None:
    join = join_ha(SNAP, [_config()])
    reg = Registry()
    reg.set_sources(join.sources)
    # HA's "Kitchen" is the config's kitchen (same name); "Porch" is an area of HA's own
    assert sorted(reg.areas) == ["kitchen", "porch"]
    assert reg.sources[HA_SOURCE].areas[0].aliases == ("front porch",)
    light = reg.get("light_kitchen_lights")
    assert (light.source, light.name, light.spec.area, light.domain) == (
        HA_SOURCE, "Kitchen Lights", "kitchen", Domain.LIGHT)  # fmt: skip
    # the config's kettle is HA's switch: its id and aliases kept, HA's name/area/alias added
    kettle = reg.get("kettle")
    assert kettle.source == "config" and kettle.domain == Domain.SWITCH
    assert (kettle.name, kettle.spec.area) == ("Kettle", "kitchen")
    assert kettle.spec.aliases == ("boiler", "tea maker")
    assert "switch_kettle" not in reg.devices
    assert join.entities == {
        "switch.kettle": "kettle",
        "light.kitchen_lights": "light_kitchen_lights",
        "light.porch_lamp": "light_porch_lamp",
    }
    assert join.skipped == ("scene.movie",)
    # joined again (HA reconnected, an entity gone): the ha source is replaced, not added
    reg.set_sources(join_ha(HaSnapshot(areas=SNAP.areas, entities=SNAP.entities[:1]),
                            [_config()]).sources)  # fmt: skip
    assert "light_porch_lamp" not in reg.devices and "light_kitchen_lights" in reg.devices


def test_a_clash_is_refused_and_the_registry_kept() -> None:
    reg = Registry()
    config = Source("config", (), (DeviceSettings(id="lamp", domain="light", capability="x"),))
    reg.set_source(config)
    agent = Source("agent:a", (), (DeviceSettings(id="light_porch_lamp", domain="light",
                                                  capability="y"),))  # fmt: skip
    reg.set_source(agent)
    with pytest.raises(LoomdError, match=r"light_porch_lamp.*declared twice"):
        reg.set_sources(join_ha(SNAP, [config]).sources)
    assert HA_SOURCE not in reg.sources and sorted(reg.devices) == ["lamp", "light_porch_lamp"]


def test_entity_id_settings_and_services() -> None:
    with pytest.raises(ConfigError, match="entity_id"):
        DeviceSettings(id="a", domain="light", entity_id="Kitchen Light")
    with pytest.raises(ConfigError, match="either command_topic or entity_id, not both"):
        DeviceSettings(id="a", entity_id="light.a", command_topic="x/set")
    with pytest.raises(ConfigError, match="domain"):
        DeviceSettings(id="a", entity_id="vacuum.robot")  # no domain the board knows
    assert DeviceSettings(id="a", entity_id="cover.garage").domain == "cover"
    assert ha_service(Domain.LIGHT, "turn_on") == ("light.turn_on", {})
    assert ha_service(Domain.LIGHT, "brightness", 30) == ("light.turn_on", {"brightness_pct": 30})
    assert ha_service(Domain.COVER, "close") == ("cover.close_cover", {})
    assert ha_service(Domain.LOCK, "unlock") == ("lock.unlock", {})


def test_only_the_any_service_capability_is_sensitive() -> None:
    """`homeassistant.call_service` reaches lock.unlock and alarm disarms: closed to callers
    no rule grants `sensitive`; turning an entity on or off and reading a state are not."""
    from loomd.agents.capability import specs_of
    from loomd.homeassistant.capabilities import HaCapabilities

    flags = {spec.name: spec.sensitive for spec, _ in specs_of(HaCapabilities)}
    assert flags == {
        "homeassistant.call_service": True,
        "homeassistant.turn_on": False,
        "homeassistant.turn_off": False,
        "homeassistant.state": False,
    }
