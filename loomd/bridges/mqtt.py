"""The `mqtt` component: MQTT topics <-> bus topics through paho-mqtt, with nothing lost.

A thin component over three rooms: the transport (`loomd.bridges.mqtt_transport`: paho on
the event loop, shaped like aiomqtt, manual acks), the outbox pump
(`loomd.bridges.mqtt_pump`: outbound QoS >= 1 from the LMDB outbox, an entry leaves it only
on the broker's PUBACK/PUBCOMP) and Home Assistant (`loomd.bridges.mqtt_discovery`).
This module maps MQTT topics to bus topics both ways (`[[mqtt.map]]`), reconnects with
jittered backoff, and gives the operator's view (status, metrics, commands).

Inbound QoS >= 1 is acknowledged to the broker only after the bus accepted the event
(journaled first when durable): unacknowledged, the broker redelivers it. Outbound, a map's
bus subscription resumes from its mark after a restart (`loomd.bridges.mqtt_marks`), so a
durable event the bus accepted is not lost if the daemon dies before it reaches the outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

from loomd.bridges.mqtt_discovery import HaDiscovery
from loomd.bridges.mqtt_marks import NAMESPACE as MARKS
from loomd.bridges.mqtt_marks import BusMarks, handled_upto
from loomd.bridges.mqtt_pump import OutboxPump
from loomd.bridges.mqtt_requests import BusRequests
from loomd.bridges.mqtt_status import MapState, MqttStatus, families
from loomd.bridges.mqtt_transport import (
    Message,
    MqttConnectError,
    MqttError,
    MqttTransport,
    TransportParams,
)
from loomd.bridges.outbox import NAMESPACE, Outbox
from loomd.bridges.settings import MqttSettings
from loomd.bridges.topics import CodecError, Translator, decode_payload, encode_payload
from loomd.bus.api import BusSubscription
from loomd.bus.envelope import Event, QoS
from loomd.component import Command, Component
from loomd.config import read_credential
from loomd.errors import LoomdError
from loomd.messages import ErrorCode, MqttLink, Topic
from loomd.metrics import Family

__all__ = ["MqttComponent", "MqttStatus"]

log = logging.getLogger("loomd.mqtt")
HAND_OFF_BURST = 256  # events handed to the bus between turns of its subscribers


def _jitter(delay: float) -> float:
    """Full jitter on the upper half: a fleet restarting together does not reconnect in step."""
    return delay / 2 + random.random() * delay / 2


class MqttComponent(BusRequests, Component[MqttSettings]):
    requires = ("paho.mqtt",)
    extra = "mqtt"
    apt = "python3-paho-mqtt"
    summary = "MQTT bridge: broker topics <-> bus topics, LMDB outbox"

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.device = self.ctx.device_id
        self.client_id = s.client_id or f"loomd-{self.device}"
        self.status_topic = f"loomd/{self.device}/status"
        self.maps = [MapState(i, m, Translator(m.mqtt, m.bus)) for i, m in enumerate(s.map)]
        self.ins = [m for m in self.maps if m.s.direction in ("in", "both")]
        self.outs = [m for m in self.maps if m.s.direction in ("out", "both")]
        self.state = "connecting"
        self.detail = ""
        self.connects = 0
        self.attempts = 0
        self.stopping = False
        self.errors: dict[str, int] = {}
        self.in_pending = 0
        self._route_cache: dict[str, tuple[MapState, str] | None] = {}
        self._inq: deque[tuple[MapState, str, Any, Message]] = deque()
        self._in_task: asyncio.Task[None] | None = None
        self._check_tls_files()
        self.transport = MqttTransport(
            TransportParams(
                s.host, s.port, self.client_id, s.keepalive_s, s.protocol == "5",
                s.persistent_session, s.session_expiry_s, s.username, self._read_password(),
                s.tls, s.ca_file, s.cert_file, s.key_file, will_topic=self.status_topic,
            ),
            self._on_message,
            lambda mid: None,  # the pump's, below
        )  # fmt: skip
        self.outbox = Outbox(
            self.ctx.state.kv(NAMESPACE), s.outbox_max_messages, float(s.outbox_max_age_s)
        )
        left = await asyncio.to_thread(self.outbox.load)
        if left:
            log.info("mqtt: %d messages left in the outbox by the last run", left)
        self.pump = OutboxPump(self.outbox, self.transport, s.max_inflight)
        self.transport.on_acked = self.pump.acked  # per ack: no hop through the component
        self.ha: HaDiscovery | None = None
        if s.discovery:
            self.ha = HaDiscovery(
                s, self.device, self.ctx.bus, self.transport, spawn=self.spawn,
                report=lambda kind, text: self._bad_in(kind, None, text), deliver=self._deliver,
            )  # fmt: skip
            await self.ha.start()
        self.marks = BusMarks(self.ctx.state.kv(MARKS))
        self.subs: dict[int, BusSubscription] = {}
        for m in self.outs:
            self._subscribe_out(m)
            self.spawn(lambda m=m: self._forward(m), f"out{m.index}", restart=True)  # type: ignore[misc]
        self._requests_setup()  # mqtt.publish / mqtt.follow from the bus
        self.spawn(self._connection, "connection", restart=True)
        self.spawn(self.outbox.run_deletes, "outbox", restart=True)
        self.spawn(self._housekeeping, "housekeeping", restart=True)

    @property
    def connected(self) -> bool:
        return self.transport.connected

    @property
    def ha_entities(self) -> dict[str, Any]:
        return self.ha.entities if self.ha is not None else {}

    def _read_password(self) -> str | None:
        secret = read_credential(self.settings.password_credential)
        if secret is not None:
            return secret
        path = self.settings.password_file
        if not path:
            return None
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise LoomdError(f"mqtt.password_file {path}: {exc.strerror or exc}") from None

    def _check_tls_files(self) -> None:
        s = self.settings
        if not s.tls:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(s, key):
                    raise LoomdError(f"mqtt.{key} is set but mqtt.tls is false")
            return
        if bool(s.cert_file) != bool(s.key_file):
            raise LoomdError("mqtt.cert_file and mqtt.key_file go together")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(s, key)
            if path and not Path(path).is_file():
                raise LoomdError(f"mqtt.{key} {path}: no such file")

    async def stop_intake(self) -> None:
        for sub in self.subs.values():
            await sub.close()

    def pending(self) -> int:
        return self.in_pending

    async def stop(self) -> None:
        self.stopping = True
        t = self.transport
        if t.connected:
            try:
                await t.publish(self.status_topic, "offline", 1, True, timeout=1.0)
            except MqttError:
                pass
        await t.disconnect()
        for sub in self.subs.values():
            await sub.close()
        await self.outbox.flush()

    # -- the connection -----------------------------------------------------------------------
    def _set_state(self, state: str, detail: str = "", *, error: str | None = None) -> None:
        """One log line (and one loomd.error for failures) per change, not per attempt."""
        if (state, detail) == (self.state, self.detail):
            return
        self.state, self.detail = state, detail
        where = f"{self.settings.host}:{self.settings.port}"
        if error is not None:
            self.count(error)
            code = ErrorCode(f"mqtt_{error}")
            self.ctx.error(code, f"mqtt {where}: {state}: {detail}", state=state)
        else:
            log.info("mqtt %s: %s%s", where, state, f" ({detail})" if detail else "")

    def count(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n

    async def _connection(self) -> None:
        s = self.settings
        delay = s.reconnect_min_s
        while not self.stopping:
            self.attempts += 1
            try:
                async with self.transport as t:
                    await self._connected()
                    reason = await t.lost()
            except MqttConnectError as exc:
                if exc.kind == "tls":
                    self._set_state(exc.state, exc.detail, error="tls")
                elif exc.kind == "refused":
                    self._set_state(exc.state, exc.detail, error="refused")
                else:
                    self._set_state(exc.state, exc.detail, error="unreachable")
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, s.reconnect_max_s)
                continue
            delay = s.reconnect_min_s
            if self.stopping:
                return
            self._set_state("disconnected", reason)
            await self._event(Topic.MQTT_DISCONNECTED)
            await asyncio.sleep(_jitter(s.reconnect_min_s))

    async def _connected(self) -> None:
        t = self.transport
        self.connects += 1
        self._set_state("connected")
        # MQTT 5 noLocal: the broker does not echo our own publishes back to us.
        t.subscribe([(m.s.mqtt, m.s.qos) for m in self.ins])
        t.publish_nowait(self.status_topic, "online", 1, True)
        self._subscribe_follows()
        if self.ha is not None:
            await self.ha.connected()
        await self._event(Topic.MQTT_CONNECTED)
        self.pump.pump()

    async def _event(self, topic: Topic) -> None:
        broker = f"{self.settings.host}:{self.settings.port}"
        link = MqttLink(broker, self.client_id, self.state, self.detail)
        await link.publish(self.ctx.bus, topic, qos=QoS.REALTIME)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.transport.tick()
            n = self.outbox.expire()
            if n:
                self.ctx.error(ErrorCode.MQTT_OUTBOX_EXPIRED, f"mqtt: {n} outbox messages expired")

    # -- inbound: MQTT -> bus -----------------------------------------------------------------
    def _route_in(self, topic: str) -> tuple[MapState, str] | None:
        hit = self._route_cache.get(topic, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        found: tuple[MapState, str] | None = None
        for m in self.ins:
            bus_topic = m.tr.to_bus(topic)  # may raise CodecError
            if bus_topic is not None:
                found = (m, bus_topic)
                break
        if len(self._route_cache) > 4096:
            self._route_cache.clear()
        self._route_cache[topic] = found
        return found

    def _on_message(self, msg: Message) -> None:
        topic = msg.topic
        if self.ha is not None and self.ha.handles(topic):
            self.ha.on_message(msg)
            return
        if self._followed(topic, msg.payload, msg.retain):
            self.transport.ack(msg)  # state topics: the latest value matters, not each one
            return
        try:
            routed = self._route_in(topic)
        except CodecError as exc:
            self._bad_in("bad_topic", None, str(exc))
            self.transport.ack(msg)
            return
        if routed is None:
            self.count("unmapped")
            self.transport.ack(msg)
            return
        m, bus_topic = routed
        data = msg.payload
        if len(data) > self.settings.max_payload_bytes:
            self._bad_in(
                "oversize", m, f"{topic}: {len(data)} bytes > {self.settings.max_payload_bytes}"
            )
            self.transport.ack(msg)
            return
        try:
            value = decode_payload(m.s.codec, data)
        except CodecError as exc:
            self._bad_in("bad_payload", m, f"{topic}: {exc}")
            self.transport.ack(msg)
            return
        self.in_pending += 1
        if m.s.bus_qos != QoS.RELIABLE:
            # Realtime and batched publishes never wait: one task per burst, not per message.
            self._inq.append((m, bus_topic, value, msg))
            if self._in_task is None or self._in_task.done():
                self._in_task = self.loop.create_task(self._hand_off())
            return
        # Reliable: a task each, so that the journal commits many of them together.
        task = self.loop.create_task(
            self.ctx.bus.publish(bus_topic, value, qos=m.s.bus_qos, meta={"mqtt_topic": topic})
        )
        task.add_done_callback(lambda t: self._in_done(t, m, msg))

    async def _hand_off(self) -> None:
        """Publish what arrived (realtime, batched), in order, in one task per burst."""
        q, bus = self._inq, self.ctx.bus
        n = 0
        while q:
            n += 1
            if n % HAND_OFF_BURST == 0:
                await asyncio.sleep(0)  # let the subscribers fed so far take them
            m, bus_topic, value, msg = q.popleft()
            try:
                await bus.publish(bus_topic, value, qos=m.s.bus_qos, meta={"mqtt_topic": msg.topic})
            except LoomdError as exc:
                self._in_failed(m, exc)
            else:
                m.in_count += 1
                self.transport.ack(msg)
            finally:
                self.in_pending -= 1

    def _in_done(self, t: asyncio.Task[Event], m: MapState, msg: Message) -> None:
        self.in_pending -= 1
        exc = None if t.cancelled() else t.exception()
        if t.cancelled() or exc is not None:
            self._in_failed(m, exc)
            return
        m.in_count += 1
        self.transport.ack(msg)

    def _in_failed(self, m: MapState, exc: BaseException | None) -> None:
        # Not acked: the broker redelivers it on the next session (QoS >= 1).
        m.errors += 1
        self.count("bus_refused")
        self.ctx.error(ErrorCode.MQTT_BUS_REFUSED, f"mqtt: bus refused {m.s.bus}: {exc}")

    def _deliver(self, work: Coroutine[Any, Any, Any], msg: Message) -> None:
        """Run `work` (a bus publish for an MQTT message); ack the message once it is done."""
        self.in_pending += 1
        task = self.loop.create_task(work)
        task.add_done_callback(lambda t: self._delivered(t, msg))

    def _delivered(self, t: asyncio.Task[Any], msg: Message) -> None:
        self.in_pending -= 1
        if t.cancelled() or t.exception() is not None:
            self.count("bus_refused")
            return
        self.transport.ack(msg)

    def _bad_in(self, kind: str, m: MapState | None, text: str) -> None:
        self.count(kind)
        if m is not None:
            m.errors += 1
        text = f"mqtt: {kind.replace('_', ' ')}: {text} (not forwarded)"
        self.ctx.error(ErrorCode(f"mqtt_{kind}"), text)

    # -- outbound: bus -> MQTT ----------------------------------------------------------------
    @staticmethod
    def _mark_key(m: MapState) -> str | None:
        """A map whose events can be replayed (QoS >= 1 over a reliable subscription) has
        a mark, keyed by what it maps; None for the others."""
        if m.s.qos == 0 or m.s.bus_qos != QoS.RELIABLE:
            return None
        return f"{m.s.bus} > {m.s.mqtt}"

    def _subscribe_out(self, m: MapState, *, again: bool = False) -> BusSubscription:
        """The map's bus subscription, from its mark when it has one (the journal replays
        what the last run accepted but never put in the outbox; `again`: what this run
        took but did not handle, before its forwarder failed)."""
        key = self._mark_key(m)
        if key is None:
            since = None
        elif again:
            since = self.marks.done.get(key)
        else:
            since = self.marks.since(key)
        sub: BusSubscription = self.ctx.bus.subscribe(m.s.bus, m.s.bus_qos, since=since)
        if key is not None and since is None:  # the first run: from here on
            self.marks.advance(key, max(0, handled_upto(sub)))
        self.subs[m.index] = sub
        return sub

    async def _forward(self, m: MapState) -> None:
        key = self._mark_key(m)
        sub = self.subs[m.index]
        if m.forwarding or getattr(sub, "closed", False):
            # restarted (it failed, or its subscription was evicted): from the mark again
            await sub.close()
            sub = self._subscribe_out(m, again=True)
        m.forwarding = True
        async for ev in sub:
            if key is None:
                self._out_one(m, ev)
                continue
            if self.outbox.full:  # hold it (and the rest stay in the journal), not drop it
                self.count("outbox_waits")
                await self.outbox.wait_for_room()
            self._out_one(m, ev)
            self.marks.advance(key, handled_upto(sub))

    def _out_one(self, m: MapState, ev: Event) -> None:
        cache = m.out_cache
        if ev.topic in cache:
            topic = cache[ev.topic]
        else:
            topic = m.tr.to_mqtt(ev.topic)
            if len(cache) > 4096:
                cache.clear()
            cache[ev.topic] = topic
        if topic is None:
            return
        meta = ev.meta
        if meta and meta.get("mqtt_topic") == topic:
            m.looped += 1  # it came from this very MQTT topic: never publish it back
            return
        try:
            data = encode_payload(m.s.codec, ev.payload)
        except CodecError as exc:
            self._bad_in("bad_payload", m, f"{ev.topic} -> {topic}: {exc}")
            return
        if len(data) > self.settings.max_payload_bytes:
            self._bad_in(
                "oversize", m, f"{ev.topic}: {len(data)} bytes > {self.settings.max_payload_bytes}"
            )
            return
        m.out_count += 1
        if m.s.qos == 0:
            if self.transport.connected:
                self.transport.publish_nowait(topic, data, 0, m.s.retain)
            else:
                self.count("offline_qos0")
            return
        if self.pump.send(topic, data, m.s.qos, m.s.retain) is None:
            self.count("outbox_overflow")
            self.ctx.error(
                ErrorCode.MQTT_OUTBOX_FULL,
                f"mqtt: outbox full ({self.outbox.max_messages} messages); {topic} dropped",
            )

    async def _forget(self) -> dict[str, Any]:
        if self.ha is None:
            raise LoomdError("mqtt.discovery is off: nothing to clear")
        return await self.ha.forget()

    # -- the operator's view ------------------------------------------------------------------
    def status(self) -> MqttStatus:
        return MqttStatus(
            state=self.state,
            detail=self.detail,
            broker=f"{self.settings.host}:{self.settings.port}",
            client_id=self.client_id,
            connects=self.connects,
            outbox_depth=len(self.outbox),
            outbox_oldest_s=round(self.outbox.oldest_age_s(), 3),
            outbox_overflow=self.outbox.overflow,
            outbox_expired=self.outbox.expired,
            inflight=len(self.pump.inflight),
            connected_at=self.transport.connected_at,
            outbox_emptied_at=self.outbox.emptied_at,
            errors=dict(self.errors),
            maps=[m.view() for m in self.maps],
        )

    def metrics(self) -> Iterable[Family]:
        inflight = len(self.pump.inflight)
        return families(
            self.connected, self.connects, self.outbox, inflight, self.maps, self.errors
        )

    def commands(self) -> Mapping[str, Command]:
        return {
            "status": Command(self._status_cmd, "connection, outbox, per-map counts"),
            "forget": Command(self._forget, "clear this board's Home Assistant discovery"),
        }

    async def _status_cmd(self) -> dict[str, Any]:
        return dataclasses.asdict(self.status())
