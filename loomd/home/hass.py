"""Home Assistant's exposed entities as a source of the device registry (`ha`), joined with
the devices the config declares. Pure: the home component feeds it HA's snapshot (from the
homeassistant component, over the bus) and keeps what it returns.

The join:
- an HA area is the config's area of the same id or name (case and aliases aside), else
  an area of its own;
- a config device with `entity_id` *is* that entity: its name, aliases, area and domain
  win, HA's name and area fill what it leaves out, HA's aliases are added;
- every other exposed entity of a domain the board knows (`Domain`) becomes a device
  `<domain>_<object id>` (`light_kitchen_lights`) with HA's name, aliases and area;
- entities of other domains (scenes, scripts, buttons) are listed as skipped.
Actions on them are HA services (`ha_service`), called through the `homeassistant.*`
capabilities."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loomd.errors import ConfigError, LoomdError
from loomd.home.registry import Source
from loomd.home.settings import DOMAINS, AreaSettings, DeviceSettings
from loomd.messages import Domain, HaSnapshot

__all__ = ["HA_SOURCE", "HaJoin", "ha_service", "join_ha"]

HA_SOURCE = "ha"
_NOT_ID = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class HaJoin:
    sources: tuple[Source, ...]  # the `ha` source, and the declared ones with HA's blanks filled
    entities: dict[str, str] = field(default_factory=dict)  # entity_id -> device id
    skipped: tuple[str, ...] = ()  # exposed entities of domains the board does not act on


def _slug(text: str) -> str:
    s = _NOT_ID.sub("_", text.lower()).strip("_")
    return s[:64].rstrip("_") or "x"


def join_ha(snap: HaSnapshot, declared: Iterable[Source]) -> HaJoin:
    """HA's snapshot joined with the declared sources (config, home.d files)."""
    declared = list(declared)
    areas: dict[str, str] = {}  # an id or a casefolded name/alias -> the registry's area id
    for s in declared:
        for a in s.areas:
            for key in (a.id, a.title.casefold(), *(x.casefold() for x in a.aliases)):
                areas.setdefault(key, a.id)
    area_of: dict[str, str] = {}  # HA's area id -> the registry's
    new_areas: list[AreaSettings] = []
    for ha in snap.areas:
        known = areas.get(_slug(ha.id)) or areas.get(ha.name.casefold())
        if known is None:
            known = _slug(ha.id)
            aliases = tuple(a[:128] for a in ha.aliases)
            new_areas.append(AreaSettings(id=known, name=ha.name[:128], aliases=aliases))
            areas[known] = known
        area_of[ha.id] = known
    by_entity = {e.entity_id: e for e in snap.entities}
    entities: dict[str, str] = {}
    filled: list[Source] = []
    for s in declared:
        devices = []
        for d in s.devices:
            e = by_entity.get(d.entity_id) if d.entity_id else None
            if e is not None:
                entities[e.entity_id] = d.id
                extra = tuple(a[:128] for a in e.aliases if a not in d.aliases)
                d = dataclasses.replace(
                    d, name=d.name or e.name[:128], area=d.area or area_of.get(e.area_id, ""),
                    aliases=d.aliases + extra,
                )  # fmt: skip
            elif d.entity_id:
                entities[d.entity_id] = d.id  # not exposed (yet): still acted on by its id
            devices.append(d)
        filled.append(dataclasses.replace(s, devices=tuple(devices)))
    taken = {d.id for s in declared for d in s.devices}
    own: list[DeviceSettings] = []
    skipped: list[str] = []
    for e in snap.entities:
        if e.entity_id in entities:
            continue
        if e.domain not in DOMAINS:
            skipped.append(e.entity_id)
            continue
        dev_id = _slug(e.entity_id)
        if dev_id in taken:
            dev_id = _slug("ha_" + e.entity_id)
        if dev_id in taken:
            skipped.append(e.entity_id)
            continue
        try:
            own.append(DeviceSettings(
                id=dev_id, name=e.name[:128], aliases=tuple(a[:128] for a in e.aliases),
                area=area_of.get(e.area_id, ""), domain=e.domain, entity_id=e.entity_id,
            ))  # fmt: skip
        except ConfigError as exc:
            raise LoomdError(f"{HA_SOURCE}: {e.entity_id}: {exc}") from None
        taken.add(dev_id)
        entities[e.entity_id] = dev_id
    mine = Source(HA_SOURCE, tuple(new_areas), tuple(own))
    return HaJoin((mine, *filled), entities, tuple(skipped))


def ha_service(
    domain: Domain, action: str, value: float | None = None
) -> tuple[str, dict[str, Any]]:
    """The HA service (and its data) that does a home action on an entity of `domain`."""
    fixed = {
        "open": ("cover.open_cover", {}),
        "close": ("cover.close_cover", {}),
        "lock": ("lock.lock", {}),
        "unlock": ("lock.unlock", {}),
        "brightness": ("light.turn_on", {"brightness_pct": value}),
        "temperature": ("climate.set_temperature", {"temperature": value}),
        "position": ("cover.set_cover_position", {"position": value}),
    }
    if action in fixed:
        return fixed[action]
    if action in ("turn_on", "turn_off"):
        return f"{domain.value}.{action}", {}
    raise LoomdError(f"no Home Assistant service for {action!r} on a {domain.value}")
