"""Home Assistant over MQTT, at run time: discovery, state, and commands from HA.

The entity definitions are in `loomd.bridges.homeassistant` (pure); this room keeps them
announced (retained, on every connect and on HA's birth message `<prefix>/status` =
`online`), mirrors the board's state (bus stats, voice state, the last transcript, mute),
and turns HA's commands into typed bus traffic:

- the "Say" text publishes a `SayRequest` on `voice.say`;
- the "Mute" switch publishes a `VoiceMute` on `voice.mute`; the switch's state follows
  `voice.mute` on the bus, whoever muted (HA, the CLI, an agent);
- an agent's entity (`MqttEntity` on `Topic.MQTT_ENTITY`) that HA commands (switch, text,
  number, button, select) gets each command as an `EntityCommand` on its `command` bus topic
  and/or as a call of its `capability` with `{"value": ...}`; its state follows the command
  once accepted, unless the entity's `bus` topic gives the state.

Availability follows the daemon: the transport's last will sets `loomd/<device>/status`
to `offline` when the board goes away, the component publishes `online` on every connect.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from loomd.bridges import homeassistant as ha
from loomd.bridges.mqtt_transport import Message, MqttError, MqttTransport
from loomd.bridges.settings import MqttSettings
from loomd.bus.api import Bus, BusSubscription
from loomd.bus.envelope import Event, QoS
from loomd.component import Inbox
from loomd.errors import LoomdError, RequestTimeout
from loomd.messages import (
    CapInvoke,
    CapResult,
    EntityCommand,
    HaComponent,
    MqttEntity,
    SayRequest,
    Topic,
    Transcript,
    VoiceMute,
    VoiceStateEvent,
)
from loomd.messages.base import _Payload

__all__ = ["HaDiscovery"]

P = TypeVar("P", bound=_Payload)

COMMAND_TIMEOUT_S = 10.0

Spawn = Callable[..., Any]
Report = Callable[[str, str], None]  # (kind, text): counted, logged, a loomd.error
Deliver = Callable[[Coroutine[Any, Any, Any], Message], None]  # ack the message once it is done


class HaDiscovery:
    def __init__(
        self,
        settings: MqttSettings,
        device: str,
        bus: Bus,
        transport: MqttTransport,
        *,
        spawn: Spawn,
        report: Report,
        deliver: Deliver,
    ) -> None:
        self.s, self.device, self.bus, self.t = settings, device, bus, transport
        self.spawn, self.report, self.deliver = spawn, report, deliver
        b = self.base = ha.base_topic(device)
        self.entities: dict[str, ha.Entity] = {}
        self.muted = False
        self.birth = f"{settings.discovery_prefix}/status"
        self.say, self.mute = f"{b}/say", f"{b}/mute/set"
        self.topics = frozenset((self.birth, self.say, self.mute))
        self.commands_filter = f"{b}/entity/+/set"
        self._entity_prefix = f"{b}/entity/"
        self._last_events = (time.monotonic(), 0)

    def handles(self, topic: str) -> bool:
        """Called for every inbound message: one set lookup and one prefix test."""
        return topic in self.topics or topic.startswith(self._entity_prefix)

    async def start(self) -> None:
        self.entities = {e.key: e for e in ha.default_entities(self.device)}
        self._last_events = (time.monotonic(), (await self.bus.stats()).events_in)
        b = self.base
        mirrors: tuple[tuple[type[Any], str, Callable[[Any], str]], ...] = (
            (VoiceStateEvent, f"{b}/voice/state", lambda m: m.state),
            (Transcript, f"{b}/voice/transcript", lambda m: m.text),
            (VoiceMute, f"{b}/mute", self._muted),
        )
        for cls, mqtt_topic, pick in mirrors:
            inbox = self._receive(cls, "bad_payload")
            self.spawn(
                lambda i=inbox, t=mqtt_topic, pick=pick: self._mirror(i, t, pick),
                f"ha-{cls.TOPIC}",
                restart=True,
            )
        entities = self._receive(MqttEntity, "bad_entity")
        self.spawn(lambda: self._agent_entities(entities), "ha-entities", restart=True)

    def _receive(self, cls: type[P], kind: str) -> Inbox[P]:
        """`cls`'s topic, subscribed now; a malformed payload is the bridge's `kind` error."""

        def report(ev: Event, exc: LoomdError) -> None:
            self._bad_in(kind, f"{ev.topic}: {exc}")

        return Inbox(self.bus, cls, report, qos=QoS.RELIABLE).open()
        self.spawn(self._state_loop, "ha-state", restart=True)

    def _muted(self, m: VoiceMute) -> str:
        self.muted = m.muted
        return "ON" if self.muted else "OFF"

    async def connected(self) -> None:
        """On every connect: listen for HA, announce everything, publish the state."""
        self.t.subscribe([(t, 1) for t in self.topics] + [(self.commands_filter, 1)],
                         no_local=False)  # fmt: skip
        self.announce()
        await self.publish_state()

    def announce(self) -> None:
        """Retained discovery configs for every entity (on connect and on HA's birth)."""
        if not self.t.connected:
            return
        for e in self.entities.values():
            self._config(e)
        self.t.publish_nowait(f"{self.base}/mute", "ON" if self.muted else "OFF", 1, True)

    def _config(self, e: ha.Entity) -> None:
        payload = json.dumps(ha.config_payload(self.device, e), separators=(",", ":"))
        topic = ha.config_topic(self.s.discovery_prefix, self.device, e)
        self.t.publish_nowait(topic, payload, 1, True)

    async def forget(self) -> dict[str, Any]:
        if not self.t.connected:
            raise LoomdError("mqtt is not connected: nothing can be cleared now")
        prefix = self.s.discovery_prefix
        clears = [self.t.publish(ha.config_topic(prefix, self.device, e), b"", 1, True)
                  for e in self.entities.values()]  # fmt: skip
        try:
            await asyncio.gather(*clears)  # cleared on the broker when this returns
        except MqttError:
            raise LoomdError("the broker did not acknowledge the clears within 5 s") from None
        n = len(self.entities)
        self.entities = {}  # until the next start: a birth message must not bring them back
        return {"cleared": n}

    # -- state ------------------------------------------------------------------------------
    async def publish_state(self) -> None:
        if not self.t.connected:
            return
        stats = await self.bus.stats()
        now, events = time.monotonic(), stats.events_in
        then, before = self._last_events
        self._last_events = (now, events)
        state = {
            "events_per_s": round((events - before) / (now - then), 1) if now > then else 0.0,
            "drops": sum(stats.drops.values()),
            "cpu_temperature": _cpu_temperature(),
        }
        self.t.publish_nowait(f"{self.base}/state", json.dumps(state), 0, True)

    async def _state_loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.state_interval_s)
            await self.publish_state()

    async def _mirror(self, inbox: Inbox[Any], mqtt_topic: str, pick: Any) -> None:
        async for msg, _ev in inbox:
            text = str(pick(msg))
            if self.t.connected:
                self.t.publish_nowait(mqtt_topic, text, 1, True)

    async def _mirror_raw(self, sub: BusSubscription, mqtt_topic: str) -> None:
        async for ev in sub:
            if self.t.connected:
                self.t.publish_nowait(mqtt_topic, _as_bytes(ev.payload), 1, True)

    def _bad_in(self, kind: str, text: str) -> None:
        self.report(kind, text)

    # -- agents' entities -------------------------------------------------------------------
    async def _agent_entities(self, entities: Inbox[MqttEntity]) -> None:
        async for m, _ev in entities:
            e = ha.agent_entity(self.device, m)
            old = self.entities.get(e.key)
            self.entities[e.key] = e
            if self.t.connected:
                self._config(e)  # (the others are announced already)
            if m.bus and (old is None or old.bus != m.bus):
                state = self.bus.subscribe(m.bus, QoS.RELIABLE)
                t = str(e.extra["state_topic"])
                self.spawn(lambda s=state, t=t: self._mirror_raw(s, t), f"ha-{e.key}-{m.bus}",
                           restart=True)  # fmt: skip

    # -- commands from Home Assistant -------------------------------------------------------
    def on_message(self, msg: Message) -> None:
        topic = msg.topic
        text = bytes(msg.payload).decode("utf-8", "replace").strip()
        if topic == self.birth:
            if text == "online":
                self.announce()  # Home Assistant (re)started: it forgot non-retained state
            self.t.ack(msg)
            return
        if topic == self.say:
            if not text:
                self.t.ack(msg)
                return
            self.deliver(SayRequest(text=text).publish(self.bus), msg)
            return
        if topic == self.mute:
            if text not in ("ON", "OFF"):
                self._bad_in("bad_payload", f"{topic}: {text[:32]!r} is not ON or OFF")
                self.t.ack(msg)
                return
            self.deliver(VoiceMute(text == "ON").publish(self.bus), msg)
            return
        key = ha.command_key(self.device, topic)
        e = self.entities.get(f"agent_{key}")
        if e is None or e.source is None or not e.source.kind.commands:
            self._bad_in("bad_topic", f"{topic}: no entity of this board takes commands there")
            self.t.ack(msg)
            return
        try:
            value = ha.command_value(e.source.kind, text, e.extra)
        except ValueError as exc:
            self._bad_in("bad_payload", f"{topic}: {exc}")
            self.t.ack(msg)
            return
        self.deliver(self._command(e, e.source, value, text), msg)

    async def _command(self, e: ha.Entity, m: MqttEntity, value: Any, text: str) -> None:
        if m.command:
            await EntityCommand(m.key, value).publish(self.bus, m.command)
        if m.capability:
            body = CapInvoke(m.capability, {"value": value}, COMMAND_TIMEOUT_S).to_payload()
            try:
                ev = await self.bus.request(
                    Topic.CAPS_INVOKE, body, timeout=COMMAND_TIMEOUT_S + 1.0
                )
                r = CapResult.from_payload(ev.payload)
                why = "" if r.ok else f"{r.code}: {r.error}"
            except RequestTimeout:
                why = "no answer"
            if why:
                self._bad_in("command_failed", f"{m.key}: {m.capability}: {why}")
                return  # the state stays what it was: HA shows the command did not take
        if not m.bus and m.kind is not HaComponent.BUTTON and self.t.connected:
            self.t.publish_nowait(str(e.extra["state_topic"]), text, 1, True)


def _as_bytes(p: Any) -> bytes | str:
    return p if isinstance(p, bytes | str) else json.dumps(p)


def _cpu_temperature() -> float | None:
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None
