"""MQTT from the bus, typed: `mqtt.publish` (one message out, answered once it is safe) and
`mqtt.follow` (MQTT topic filters whose messages come back as `MqttMessage` events).

A mixin of `MqttComponent`, kept apart from the mapping code: the home registry publishes a
device's command and follows its state topic through these two requests, without a
`[[mqtt.map]]` entry per device and without parsing the bridge's dicts."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from loomd.bridges.mqtt_pump import OutboxPump
from loomd.bridges.mqtt_transport import MqttTransport
from loomd.bus.envelope import Event, QoS
from loomd.errors import LoomdError
from loomd.messages import ErrorCode, MqttAck, MqttFollow, MqttMessage, MqttPublish

__all__ = ["BusRequests"]

log = logging.getLogger("loomd.mqtt")

DURABLE_TIMEOUT_S = 5.0


def _filter_problem(flt: str) -> str | None:
    levels = flt.split("/")
    if not flt or "\0" in flt:
        return f"bad MQTT filter {flt!r}"
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"bad MQTT filter {flt!r}: '#' is a whole last level"
        if "+" in level and level != "+":
            return f"bad MQTT filter {flt!r}: '+' is a whole level"
    return None


def _refused(exc: LoomdError, req: Event) -> MqttAck:
    return MqttAck(False, str(exc))


@dataclass(frozen=True)
class _Follow:
    filters: tuple[str, ...]
    bus_topic: str
    qos: int


class BusRequests:
    """Serves `mqtt.publish` and `mqtt.follow`. Needs the component's `ctx`, `transport`,
    `pump`, `spawn` and `count`."""

    ctx: Any
    transport: MqttTransport
    pump: OutboxPump
    loop: asyncio.AbstractEventLoop

    def _requests_setup(self) -> None:
        self.follows: dict[str, _Follow] = {}
        self.published = 0
        self.followed_in = 0
        self.spawn(self._serve_publish, "publish-requests", restart=True)  # type: ignore[attr-defined]
        self.spawn(self._serve_follow, "follow-requests", restart=True)  # type: ignore[attr-defined]

    async def _serve_publish(self) -> None:
        asks = self.ctx.receive(
            MqttPublish, code=ErrorCode.MQTT_BAD_PAYLOAD, qos=QoS.RELIABLE, answer=_refused,
            on_bad=lambda ev, exc: self.count("bad_publish"),  # type: ignore[attr-defined]
        )  # fmt: skip
        async for msg, req in asks:
            task = self.loop.create_task(self._publish_one(msg, req))
            self._request_tasks.add(task)
            task.add_done_callback(self._request_tasks.discard)

    @property
    def _request_tasks(self) -> set[asyncio.Task[None]]:
        tasks: set[asyncio.Task[None]] | None = getattr(self, "_req_tasks", None)
        if tasks is None:
            tasks = set()
            self._req_tasks: set[asyncio.Task[None]] = tasks
        return tasks

    async def _publish_one(self, msg: MqttPublish, req: Event) -> None:
        try:
            await self.publish(msg)
            ack = MqttAck(True)
        except LoomdError as exc:
            self.count("bad_publish")  # type: ignore[attr-defined]
            ack = MqttAck(False, str(exc))
        if req.reply_to:
            await self.ctx.bus.reply(req, ack.to_payload(), wait=False)

    async def publish(self, msg: MqttPublish) -> None:
        """QoS 0: handed to paho now (an error when offline). QoS >= 1: returns once the
        message is durable in the outbox (sent from there, in order, across outages)."""
        if len(msg.payload) > self.ctx.settings.max_payload_bytes:
            raise LoomdError(f"{msg.topic}: {len(msg.payload)} bytes is over max_payload_bytes")
        if msg.qos == 0:
            if not self.transport.connected:
                raise LoomdError("mqtt is not connected (a QoS 0 message is not kept)")
            self.transport.publish_nowait(msg.topic, msg.payload, 0, msg.retain)
            self.published += 1
            return
        entry = self.pump.send(msg.topic, msg.payload, msg.qos, msg.retain)
        if entry is None:
            self.count("outbox_overflow")  # type: ignore[attr-defined]
            raise LoomdError(f"the MQTT outbox is full; {msg.topic} dropped")
        self.published += 1
        written = entry.written
        if written is not None:
            try:
                async with asyncio.timeout(DURABLE_TIMEOUT_S):
                    await asyncio.shield(written)
            except TimeoutError:
                raise LoomdError(f"{msg.topic}: the outbox write took over 5 s") from None
            except Exception as exc:  # LMDB refused: it is still sent from memory
                raise LoomdError(f"{msg.topic}: not durable ({exc}); sent from memory") from None

    # -- follow ---------------------------------------------------------------------------------
    async def _serve_follow(self) -> None:
        asks = self.ctx.receive(
            MqttFollow, code=ErrorCode.MQTT_BAD_PAYLOAD, qos=QoS.RELIABLE, answer=_refused
        )
        async for f, req in asks:
            try:
                self._follow(f)
                ack = MqttAck(True)
            except LoomdError as exc:
                ack = MqttAck(False, str(exc))
            if req.reply_to:
                await self.ctx.bus.reply(req, ack.to_payload(), wait=False)

    def _follow(self, f: MqttFollow) -> None:
        for flt in f.filters:
            why = _filter_problem(flt)
            if why:
                raise LoomdError(f"mqtt.follow {f.owner}: {why}")
        if f.qos not in (0, 1, 2):
            raise LoomdError(f"mqtt.follow {f.owner}: qos {f.qos} is not 0, 1 or 2")
        old = self.follows.get(f.owner)
        self.follows[f.owner] = _Follow(f.filters, f.bus_topic, f.qos)
        if old is not None:
            self.transport.unsubscribe(sorted(set(old.filters) - self._followed_filters()))
        self._subscribe_follows()

    def _followed_filters(self) -> set[str]:
        return {flt for f in self.follows.values() for flt in f.filters}

    def _subscribe_follows(self) -> None:
        """On every connect and on every new follow (the broker forgets clean sessions)."""
        if not self.transport.connected or not self.follows:
            return
        subs: dict[str, int] = {}
        for f in self.follows.values():
            for flt in f.filters:
                subs[flt] = max(subs.get(flt, 0), f.qos)
        self.transport.subscribe(subs.items())

    def _followed(self, topic: str, data: bytes, retain: bool) -> bool:
        """Publish a message that matches a follow on its bus topic; True if it did."""
        if not self.follows:
            return False
        matches = self.transport.matches
        targets = {
            f.bus_topic
            for f in self.follows.values()
            if any(matches(flt, topic) for flt in f.filters)
        }
        if not targets:
            return False
        payload = MqttMessage(topic, bytes(data), bool(retain)).to_payload()
        for bus_topic in targets:
            self.followed_in += 1
            task = self.loop.create_task(
                self.ctx.bus.publish(bus_topic, payload, qos=QoS.RELIABLE, wait=False)
            )
            self._request_tasks.add(task)
            task.add_done_callback(self._request_tasks.discard)
        return True
