"""Intents to device actions: which devices a match means and which capability acts on
each. Pure (a match and the home in, broker calls out), so the bench and the tests judge
the same plan the component runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from loomd.messages import ActionRecord, Domain, HomeDevice

if TYPE_CHECKING:
    from loomd.assist.matcher import Match

__all__ = ["ACTING", "plan_actions", "targets"]

# Intents that change the world; the rest read it or answer from the board.
ACTING = frozenset(
    {"HassTurnOn", "HassTurnOff", "HassLightSet", "HassClimateSetTemperature", "HassSetPosition"}
)
READ_ONLY = (Domain.SENSOR, Domain.BINARY_SENSOR)


def targets(m: Match, devices: Iterable[HomeDevice], *domains: Domain) -> list[HomeDevice]:
    """A named device; else every device of the sentence's domain (or `domains`) in its
    area. Nothing when the sentence names neither a device nor an area nor a domain."""
    devs = list(devices)
    if "name" in m.slots:
        return [d for d in devs if d.id == str(m.slots["name"])]
    domain = m.slots.get("domain")
    want = {Domain(str(domain))} if domain in Domain.__members__.values() else set(domains)
    area = m.slots.get("area")
    if area is None and not want:
        return []
    return [d for d in devs if (not want or d.domain in want) and (area is None or d.area == area)]


def plan_actions(
    m: Match, devices: Iterable[HomeDevice]
) -> tuple[list[ActionRecord], list[HomeDevice]]:
    """The broker calls an acting intent means, and the devices they act on."""
    devs: list[HomeDevice] = []
    plans: list[ActionRecord] = []
    if m.intent in ("HassTurnOn", "HassTurnOff"):
        on = m.intent == "HassTurnOn"
        devs = [d for d in targets(m, devices) if d.domain not in READ_ONLY]
        for d in devs:
            if d.domain == Domain.LOCK:
                cap = "home.lock" if on else "home.unlock"
            else:
                cap = "home.turn_on" if on else "home.turn_off"
            plans.append(ActionRecord(cap, {"device": d.id}))
    elif m.intent == "HassLightSet" and "brightness" in m.slots:
        devs = [d for d in targets(m, devices, Domain.LIGHT) if d.domain == Domain.LIGHT]
        level = int(m.slots["brightness"])
        plans = [ActionRecord("home.light_set", {"device": d.id, "brightness": level})
                 for d in devs]  # fmt: skip
    elif m.intent == "HassClimateSetTemperature" and "temperature" in m.slots:
        devs = [d for d in targets(m, devices, Domain.CLIMATE) if d.domain == Domain.CLIMATE]
        degrees = float(m.slots["temperature"])
        plans = [ActionRecord("home.climate_set_temperature",
                              {"device": d.id, "temperature": degrees}) for d in devs]  # fmt: skip
    elif m.intent == "HassSetPosition" and "position" in m.slots:
        devs = [d for d in targets(m, devices, Domain.COVER) if d.domain == Domain.COVER]
        pos = int(m.slots["position"])
        plans = [ActionRecord("home.cover_set_position", {"device": d.id, "position": pos})
                 for d in devs]  # fmt: skip
    return plans, devs
