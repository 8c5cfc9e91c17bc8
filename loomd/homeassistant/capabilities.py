"""Home Assistant's services as capabilities of the action broker (served over the bus with
`serve_capabilities`, as the MCP component does): what the assist, an agent or
`loomctl call` use to switch HA's devices. They need `[homeassistant] url`; a dead HA is
a `capability_error` that says so, at once."""

from __future__ import annotations

from typing import Any

from loomd.agents.broker import CapabilityError
from loomd.agents.capability import capability
from loomd.errors import LoomdError
from loomd.homeassistant.client import HaClient

__all__ = ["HaCapabilities"]


class HaCapabilities:
    def __init__(self, client: HaClient) -> None:
        self.client = client

    @capability("homeassistant.turn_on")
    async def turn_on(self, entity_id: str) -> dict[str, Any]:
        """Turn on a Home Assistant entity (light, switch, fan, ...)."""
        return await self._call("homeassistant.turn_on", entity_id)

    @capability("homeassistant.turn_off")
    async def turn_off(self, entity_id: str) -> dict[str, Any]:
        """Turn off a Home Assistant entity."""
        return await self._call("homeassistant.turn_off", entity_id)

    # any service: lock.unlock and alarm_control_panel.alarm_disarm too, so it is sensitive
    # (the home's own calls come from the daemon; other callers need a rule granting it)
    @capability("homeassistant.call_service", sensitive=True)
    async def call_service(
        self, service: str, entity_id: str, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call a Home Assistant service ("light.toggle", "cover.open_cover", ...) on an
        entity, with the service's data ({"brightness_pct": 30}) if it takes any."""
        return await self._call(service, entity_id, data)

    @capability("homeassistant.state")
    async def state(self, entity_id: str) -> dict[str, Any]:
        """The state of a Home Assistant entity and its attributes."""
        try:
            states = await self.client.call({"type": "get_states"})
        except LoomdError as exc:
            raise CapabilityError(str(exc)) from None
        found = next((s for s in states if s["entity_id"] == entity_id), None)
        if found is None:
            raise ValueError(f"Home Assistant has no entity {entity_id!r}")
        return {"entity_id": entity_id, "state": found["state"],
                "attributes": found.get("attributes", {})}  # fmt: skip

    async def _call(
        self, service: str, entity_id: str, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        domain, _, name = service.partition(".")
        if not name or not domain:
            raise ValueError(f"a service is domain.name, not {service!r}")
        try:
            await self.client.call_service(domain, name, data, target={"entity_id": entity_id})
        except LoomdError as exc:  # HA away, or HA's own refusal: said as it is
            raise CapabilityError(str(exc)) from None
        return {"called": service, "entity_id": entity_id}
