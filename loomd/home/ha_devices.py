"""Home Assistant's entities in the home component: a mixin of `HomeComponent` that joins
HA's snapshot (`ha.changed`, `ha.registry`) into the registry (`loomd/home/hass.py`), turns
`ha.state.<entity_id>` into the devices' `DeviceState`, and acts through HA's services
(`homeassistant.call_service`, over the broker)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from loomd.bus.envelope import QoS
from loomd.errors import LoomdError, RequestTimeout
from loomd.home.hass import ha_service, join_ha
from loomd.home.registry import Device, Registry, Source
from loomd.messages import DeviceState, ErrorCode, HaSnapshot, HaState, Topic

__all__ = ["HaDevices"]


class HaDevices:
    """Needs the component's `ctx`, `log`, `registry`, `declared`, `states`, `_changed`,
    `_set_state` and `_invoke`."""

    ctx: Any
    log: Any
    registry: Registry
    declared: list[Source]
    states: dict[str, DeviceState]
    _changed: Any
    ha_entities: dict[str, str]  # HA entity id -> device id
    ha_skipped: tuple[str, ...]

    async def _set_state(self, st: DeviceState) -> None:
        raise NotImplementedError

    async def _invoke(
        self, d: Device, cap: str, params: dict[str, Any], why: str = ""
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def _by_ha(self, d: Device, action: str, value: float | None) -> dict[str, Any]:
        """Through Home Assistant's services (the homeassistant component's capability); a
        dead HA is its error at once, never a wait."""
        service, data = ha_service(d.domain, action, value)
        params: dict[str, Any] = {"service": service, "entity_id": d.spec.entity_id}
        if data:
            params["data"] = data
        return await self._invoke(d, "homeassistant.call_service", params, f"{d.name}: ")

    async def _ha_devices(self) -> None:
        """HA's exposed entities (the homeassistant component's `ha.changed`, asked once at
        start) joined into the registry; kept while HA is away, so a command to one of them
        fails with HA's reason instead of "no such device"."""
        changed = self.ctx.receive(
            HaSnapshot, Topic.HA_CHANGED, code=ErrorCode.HOME_HA_DEVICES, qos=QoS.RELIABLE
        )
        async with changed:
            await changed.ready()
            with contextlib.suppress(RequestTimeout):
                ev = await self.ctx.bus.request(Topic.HA_REGISTRY, None, timeout=2.0)
                self._join_ha(HaSnapshot.from_payload(ev.payload))
            async for snap, _ev in changed:
                self._join_ha(snap)

    def _join_ha(self, snap: HaSnapshot) -> None:
        if not snap.connected:
            return  # nothing known yet
        before = dict(self.registry.sources)
        try:
            join = join_ha(snap, self.declared)
            self.registry.set_sources(join.sources)
        except LoomdError as exc:
            self.ctx.error(ErrorCode.HOME_HA_DEVICES, f"home: Home Assistant's entities: {exc}")
            return
        self.ha_entities, self.ha_skipped = join.entities, join.skipped
        for e in snap.entities:
            dev = join.entities.get(e.entity_id)
            old = self.states.get(dev or "")
            if dev is not None and e.state and (old is None or old.state != e.state):
                self.states[dev] = DeviceState(dev, e.state, {}, time.time())
        if self.registry.sources == before:
            return  # the same HA again (a reconnect): nothing to offer anew
        self.log.info("home: %d Home Assistant entities joined (%d skipped)",
                      len(join.entities), len(join.skipped))  # fmt: skip
        self._changed.set()

    async def _ha_states(self) -> None:
        states = self.ctx.receive(
            HaState, f"{Topic.HA_STATE}.#", code=ErrorCode.HOME_BAD_STATE, qos=QoS.RELIABLE
        )
        async for st, _ev in states:
            dev = self.ha_entities.get(st.entity_id)
            if dev is not None:
                await self._set_state(DeviceState(dev, st.state, st.attributes, st.at))
