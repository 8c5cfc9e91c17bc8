"""The `home` component: owns the device registry and offers device actions to the action
broker as capabilities (`home.turn_on`, `home.light_set`, `home.unlock`, ...), whose JSON
schemas name the real device ids. MQTT devices are commanded through the MQTT bridge
(`mqtt.publish`) and read back through it (`mqtt.follow`); a device with a `capability`
is acted on by that capability (`caps.invoke`). State becomes `home.state.<device>` events
and is kept for `loomctl home`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loomd.agents.broker import ActionBroker, CapabilityError, LocalProvider
from loomd.agents.capability import CapabilitySpec
from loomd.bus.envelope import QoS
from loomd.component import Command, Component, StatusBlock
from loomd.errors import LoomdError, RequestTimeout
from loomd.home.ha_devices import HaDevices
from loomd.home.hass import HA_SOURCE
from loomd.home.registry import Device, Registry, Source, load_dir, source_from_tables
from loomd.home.settings import READ_ONLY, HomeSettings
from loomd.messages import (
    CapInvoke,
    CapResult,
    CapsList,
    DeviceState,
    Domain,
    ErrorCode,
    HomeSnapshot,
    MqttAck,
    MqttFollow,
    MqttMessage,
    MqttPublish,
    Topic,
)
from loomd.metrics import Family

__all__ = ["HomeComponent", "HomeStatus"]

FOLLOW_TOPIC = "home.mqtt"  # where the bridge publishes our devices' state messages
SWITCHABLE = (
    Domain.LIGHT,
    Domain.SWITCH,
    Domain.FAN,
    Domain.MEDIA_PLAYER,
    Domain.CLIMATE,
    Domain.COVER,
)


@dataclass(frozen=True)
class HomeStatus(StatusBlock):
    areas: int
    devices: int
    sources: dict[str, int] = field(default_factory=dict)
    actions: int = 0
    failed: int = 0
    states: int = 0
    following: str = ""
    home_assistant: str = ""  # HA's entities joined: how many, and those skipped


def _fill(template: str, value: float) -> str:
    text = str(int(value)) if float(value).is_integer() else f"{value:g}"
    return template.replace("{value}", text)


class HomeComponent(HaDevices, Component[HomeSettings]):
    summary = "the device registry: devices and areas, acted on through MQTT or capabilities"

    async def start(self) -> None:
        self.registry = Registry()
        self.states: dict[str, DeviceState] = {}
        self.counts = {"actions": 0, "failed": 0, "states": 0}
        self.following: tuple[str, ...] = ()
        self._changed = asyncio.Event()
        self.ha_entities: dict[str, str] = {}  # HA entity id -> device id
        self.ha_skipped: tuple[str, ...] = ()
        self._load_config()
        self.spawn(self._offer, "offer", restart=True)
        self.spawn(self._follow_states, "states", restart=True)
        self.spawn(self._keep_following, "follow", restart=True)
        self.spawn(self._serve_registry, "registry", restart=True)
        self.spawn(self._agent_devices, "agent-devices", restart=True)
        self.spawn(self._ha_devices, "ha-devices", restart=True)
        self.spawn(self._ha_states, "ha-states", restart=True)

    def _home_dir(self) -> Path | None:
        if self.settings.dir:
            return Path(self.settings.dir)
        cfg = self.ctx.config_path
        return cfg.parent / "home.d" if cfg else None

    def _load_config(self) -> None:
        """The config's own tables, then each home.d file; any error stops the start."""
        s = self.settings
        self.declared = [Source("config", s.areas, s.devices)]  # as declared, before HA's join
        folder = self._home_dir()
        if folder is not None:
            self.declared += load_dir(folder)
        for src in self.declared:
            self.registry.set_source(src)
        self.log.info(
            "home: %d devices in %d areas from %s",
            len(self.registry.devices),
            len(self.registry.areas),
            ", ".join(self.registry.sources),
        )

    # -- capabilities ---------------------------------------------------------------------------
    def _broker(self) -> ActionBroker:
        reg = self.registry
        broker = ActionBroker()
        prov = LocalProvider("home")

        def offer(
            name: str,
            fn: Any,
            desc: str,
            ids: list[str],
            extra: dict[str, Any] | None = None,
            *,
            confirm: bool = False,
            sensitive: bool = False,
        ) -> None:
            if not ids:
                return
            props: dict[str, Any] = {"device": {"enum": ids, "description": "the device id"}}
            props.update(extra or {})
            schema = {
                "type": "object",
                "properties": props,
                "required": list(props),
                "additionalProperties": False,
            }
            spec = CapabilitySpec(name, 1, desc, schema, confirm=confirm, sensitive=sensitive)
            broker.register(spec, prov)
            prov.add(spec, fn)

        actable = [i for i, d in reg.devices.items() if d.domain not in READ_ONLY]
        offer(
            "home.turn_on",
            self.turn_on,
            "Turn a device on (a cover opens, a lock locks)",
            sorted(actable),
        )
        offer(
            "home.turn_off",
            self.turn_off,
            "Turn a device off (a cover closes)",
            sorted(i for i in actable if reg.devices[i].domain != Domain.LOCK),
        )
        offer(
            "home.light_set",
            self.light_set,
            "Set a light's brightness (percent)",
            reg.ids(Domain.LIGHT),
            {"brightness": {"type": "integer", "minimum": 0, "maximum": 100}},
        )
        offer(
            "home.climate_set_temperature",
            self.climate_set_temperature,
            "Set a thermostat's target temperature",
            reg.ids(Domain.CLIMATE),
            {"temperature": {"type": "number"}},
        )
        offer(
            "home.cover_set_position",
            self.cover_set_position,
            "Set a cover's position (percent open)",
            reg.ids(Domain.COVER),
            {"position": {"type": "integer", "minimum": 0, "maximum": 100}},
        )
        offer("home.lock", self.lock, "Lock a lock", reg.ids(Domain.LOCK))
        offer(
            "home.unlock",
            self.unlock,
            "Unlock a lock",
            reg.ids(Domain.LOCK),
            confirm=True,
            sensitive=True,
        )
        offer("home.get_state", self.get_state, "A device's last known state", reg.ids())
        return broker

    async def _offer(self) -> None:
        from loomd.agents.sdk import serve_capabilities

        while True:
            self._changed.clear()
            async with serve_capabilities(self.ctx.bus, "home", self._broker()):
                await self._publish_changed()
                await self._changed.wait()

    async def turn_on(self, device: str) -> dict[str, Any]:
        d = self._device(device)
        action = {Domain.COVER: "open", Domain.LOCK: "lock"}.get(d.domain, "turn_on")
        return await self._act(d, action)

    async def turn_off(self, device: str) -> dict[str, Any]:
        d = self._device(device)
        if d.domain == Domain.LOCK:
            raise CapabilityError(f"{device} is a lock: home.unlock opens it (asked back first)")
        return await self._act(d, "close" if d.domain == Domain.COVER else "turn_off")

    async def light_set(self, device: str, brightness: int) -> dict[str, Any]:
        if not 0 <= brightness <= 100:
            raise CapabilityError(f"brightness {brightness}: 0 to 100")
        return await self._act(self._device(device, Domain.LIGHT), "brightness", brightness)

    async def climate_set_temperature(self, device: str, temperature: float) -> dict[str, Any]:
        if not -30 <= temperature <= 60:
            raise CapabilityError(f"temperature {temperature}: -30 to 60")
        return await self._act(self._device(device, Domain.CLIMATE), "temperature", temperature)

    async def cover_set_position(self, device: str, position: int) -> dict[str, Any]:
        if not 0 <= position <= 100:
            raise CapabilityError(f"position {position}: 0 to 100")
        return await self._act(self._device(device, Domain.COVER), "position", position)

    async def lock(self, device: str) -> dict[str, Any]:
        return await self._act(self._device(device, Domain.LOCK), "lock")

    async def unlock(self, device: str) -> dict[str, Any]:
        return await self._act(self._device(device, Domain.LOCK), "unlock")

    async def get_state(self, device: str) -> dict[str, Any]:
        d = self._device(device)
        st = self.states.get(d.id)
        return {
            "device": d.id,
            "name": d.name,
            "domain": d.domain.value,
            "area": d.spec.area,
            "state": st.state if st else "",
            "unit": d.spec.unit,
            "attributes": dict(st.attributes) if st else {},
        }

    def _device(self, device_id: str, *domains: Domain) -> Device:
        try:
            d = self.registry.get(device_id)
        except LoomdError as exc:
            raise CapabilityError(str(exc)) from None
        if domains and d.domain not in domains:
            raise CapabilityError(f"{device_id} is a {d.domain.value}, not a {domains[0].value}")
        return d

    async def _act(self, d: Device, action: str, value: float | None = None) -> dict[str, Any]:
        self.counts["actions"] += 1
        try:
            if d.spec.entity_id:
                out = await self._by_ha(d, action, value)
            elif d.spec.capability:
                out = await self._by_capability(d, action, value)
            else:
                out = await self._by_mqtt(d, action, value)
        except CapabilityError:
            self.counts["failed"] += 1
            raise
        if not d.spec.state_topic and not d.spec.entity_id:  # nothing reports: keep what was asked
            guess = {
                "turn_on": "on",
                "turn_off": "off",
                "open": "open",
                "close": "closed",
                "lock": "locked",
                "unlock": "unlocked",
            }.get(action)
            if guess is not None:
                await self._set_state(DeviceState(d.id, guess, {}, time.time()))
        return {"device": d.id, "action": action, **out}

    async def _by_mqtt(self, d: Device, action: str, value: float | None) -> dict[str, Any]:
        s = d.spec
        if value is None:
            payload = getattr(s, f"payload_{action.removeprefix('turn_')}")
        else:
            template = getattr(s, f"{action}_template")
            if not template:
                raise CapabilityError(f"{d.id} has no {action}_template: it cannot set {action}")
            payload = _fill(template, value)
        msg = MqttPublish(s.command_topic, payload.encode(), s.qos, s.retain)
        if not await self.ctx.bus.listeners(Topic.MQTT_PUBLISH):  # say so now, not at timeout
            raise CapabilityError(
                f"{d.id}: no MQTT bridge runs to reach {s.command_topic}: enable [mqtt]"
            )
        try:
            ev = await self.ctx.bus.request(
                Topic.MQTT_PUBLISH, msg.to_payload(), timeout=self.settings.action_timeout_s
            )
        except RequestTimeout:
            raise CapabilityError(
                f"{d.id}: the MQTT bridge did not answer (is [mqtt] enabled?)"
            ) from None
        ack = MqttAck.from_payload(ev.payload)
        if not ack.ok:
            raise CapabilityError(f"{d.id}: {ack.error}")
        return {"topic": s.command_topic, "payload": payload}

    async def _by_capability(self, d: Device, action: str, value: float | None) -> dict[str, Any]:
        params: dict[str, Any] = {"device": d.id, "action": action}
        if value is not None:
            params["value"] = value
        return await self._invoke(d, d.spec.capability, params)

    async def _invoke(
        self, d: Device, cap: str, params: dict[str, Any], why: str = ""
    ) -> dict[str, Any]:
        t = self.settings.action_timeout_s
        body = CapInvoke(cap, params, t).to_payload()
        try:
            ev = await self.ctx.bus.request(Topic.CAPS_INVOKE, body, timeout=t + 1.0)
        except RequestTimeout:
            raise CapabilityError(f"{d.id}: {cap} gave no answer") from None
        r = CapResult.from_payload(ev.payload)
        if not r.ok:
            raise CapabilityError((why or f"{d.id}: {cap}: {r.code}: ") + str(r.error))
        return {"capability": cap, "result": r.value}

    # -- state ------------------------------------------------------------------------------------
    def _state_topics(self) -> tuple[str, ...]:
        return tuple(
            sorted(
                {d.spec.state_topic for d in self.registry.devices.values() if d.spec.state_topic}
            )
        )

    async def _keep_following(self) -> None:
        """Ask the bridge to follow the state topics, again after each (re)connect of the
        bridge and whenever the registry changes; retried while nobody answers."""
        async with self.ctx.bus.subscribe(Topic.MQTT_CONNECTED, QoS.RELIABLE) as connected:
            await connected.ready()
            while True:
                topics = self._state_topics()
                if topics and topics != self.following:
                    req = MqttFollow("home", topics, FOLLOW_TOPIC)
                    try:
                        ev = await self.ctx.bus.request(
                            Topic.MQTT_FOLLOW, req.to_payload(), timeout=2.0
                        )
                        ack = MqttAck.from_payload(ev.payload)
                        if ack.ok:
                            self.following = topics
                        else:
                            self.ctx.error(
                                ErrorCode.HOME_FOLLOW, f"home: the bridge refused: {ack.error}"
                            )
                    except RequestTimeout:
                        pass  # no bridge (yet): ask again below
                wait = [
                    asyncio.ensure_future(connected.get()),
                    asyncio.ensure_future(self._changed.wait()),
                ]
                try:
                    done, _ = await asyncio.wait(
                        wait,
                        timeout=None if self.following or not topics else 2.0,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for p in wait:
                        p.cancel()
                if wait[0] in done:
                    if wait[0].exception() is not None:
                        return  # the subscription closed (stopping)
                    self.following = ()  # a new bridge session: subscribe again

    async def _follow_states(self) -> None:
        follows = self.ctx.receive(
            MqttMessage, FOLLOW_TOPIC, code=ErrorCode.HOME_BAD_STATE, qos=QoS.RELIABLE
        )
        async for msg, _ev in follows:
            for d in self.registry.devices.values():
                if d.spec.state_topic == msg.topic:
                    st = self._parse_state(d, msg.payload)
                    if st is not None:
                        await self._set_state(st)

    def _parse_state(self, d: Device, data: bytes) -> DeviceState | None:
        text = data.decode("utf-8", "replace").strip()
        attrs: dict[str, Any] = {}
        value: Any = text
        if d.spec.state_key or text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                attrs = obj
                if d.spec.state_key:
                    value = obj
                    for part in d.spec.state_key.split("."):
                        value = value.get(part) if isinstance(value, dict) else None
                    if value is None:
                        self.ctx.error(
                            ErrorCode.HOME_BAD_STATE,
                            f"home: {d.id}: no {d.spec.state_key!r} in {text[:80]!r}",
                        )
                        return None
        s = str(value)
        known = {d.spec.payload_on: "on", d.spec.payload_off: "off"}
        if d.domain == Domain.LOCK:
            known = {
                "LOCKED": "locked",
                "UNLOCKED": "unlocked",
                d.spec.payload_lock: "locked",
                d.spec.payload_unlock: "unlocked",
            }
        elif d.domain == Domain.COVER:
            known = {
                "OPEN": "open",
                "CLOSED": "closed",
                d.spec.payload_open: "open",
                d.spec.payload_close: "closed",
            }
        return DeviceState(d.id, known.get(s, s.lower() if s.isalpha() else s), attrs, time.time())

    async def _set_state(self, st: DeviceState) -> None:
        self.states[st.device] = st
        self.counts["states"] += 1
        await self.ctx.bus.publish(
            f"{Topic.HOME_STATE}.{st.device}", st.to_payload(), qos=QoS.RELIABLE, wait=False
        )

    # -- the registry on the bus ----------------------------------------------------------------
    def snapshot(self) -> HomeSnapshot:
        return self.registry.snapshot(self.states)

    async def _serve_registry(self) -> None:
        async with self.ctx.bus.subscribe(Topic.HOME_REGISTRY, QoS.RELIABLE) as sub:
            async for req in sub:
                if req.reply_to:
                    await self.ctx.bus.reply(req, self.snapshot().to_payload(), wait=False)

    async def _publish_changed(self) -> None:
        await self.ctx.bus.publish(Topic.HOME_CHANGED, self.snapshot().to_payload(), wait=False)

    async def _agent_devices(self) -> None:
        """Capabilities that declare `devices` contribute them (source `agent:<provider>`):
        read when the catalogue says it changed (`caps.changed`), and every `agent_poll_s`."""
        async with self.ctx.bus.subscribe(Topic.CAPS_CHANGED, QoS.REALTIME) as changed:
            await changed.ready()
            while True:
                try:
                    ev = await self.ctx.bus.request(Topic.CAPS_LIST, None, timeout=2.0)
                    listed = CapsList.from_payload(ev.payload).caps
                    self._merge_agent_devices([dataclasses.asdict(c) for c in listed])
                except RequestTimeout:
                    pass
                with contextlib.suppress(TimeoutError, RequestTimeout):
                    await changed.get(timeout=self.settings.agent_poll_s)

    def _merge_agent_devices(self, caps: list[Any]) -> None:
        found: dict[str, list[dict[str, Any]]] = {}
        for c in caps:
            if not isinstance(c, Mapping) or not c.get("devices") or c.get("provider") == "home":
                continue
            src = f"agent:{c.get('provider')}"
            for dev in c["devices"]:
                if isinstance(dev, Mapping):
                    found.setdefault(src, []).append({**dev, "capability": str(c["name"])})
        changed = False
        for name in [n for n in self.registry.sources if n.startswith("agent:")]:
            if name not in found:
                changed |= self.registry.drop_source(name)
        for name, devices in found.items():
            try:
                source = source_from_tables(name, {"devices": devices})
            except LoomdError as exc:
                self.ctx.error(ErrorCode.HOME_AGENT_DEVICES, f"home: {exc}")
                continue
            if self.registry.sources.get(name) == source:
                continue
            try:
                self.registry.set_source(source)
                changed = True
            except LoomdError as exc:
                self.ctx.error(ErrorCode.HOME_AGENT_DEVICES, f"home: {exc}")
        if changed:
            self._changed.set()

    # -- operator --------------------------------------------------------------------------------
    def status(self) -> HomeStatus:
        per: dict[str, int] = {}
        for d in self.registry.devices.values():
            per[d.source] = per.get(d.source, 0) + 1
        return HomeStatus(
            len(self.registry.areas),
            len(self.registry.devices),
            per,
            self.counts["actions"],
            self.counts["failed"],
            self.counts["states"],
            f"{len(self.following)} state topics",
            (f"{len(self.ha_entities)} entities" + (f", {len(self.ha_skipped)} skipped"
             if self.ha_skipped else "")) if HA_SOURCE in self.registry.sources else "",
        )  # fmt: skip

    def metrics(self) -> Iterable[Family]:
        yield Family(
            "loomd_home_devices",
            "gauge",
            "Devices in the registry.",
            [({}, float(len(self.registry.devices)))],
        )
        yield Family(
            "loomd_home_actions_total",
            "counter",
            "Device actions run.",
            [({}, float(self.counts["actions"]))],
        )
        yield Family(
            "loomd_home_action_failures_total",
            "counter",
            "Device actions that failed.",
            [({}, float(self.counts["failed"]))],
        )

    def commands(self) -> Mapping[str, Command]:
        return {"list": Command(self._cmd_list, "areas, devices and their state")}

    async def _cmd_list(self) -> dict[str, Any]:
        return {"home": self.snapshot().to_payload()}
