"""The `mqtt` component: MQTT topics <-> bus topics through paho-mqtt, with nothing lost.

The paho client is driven by the asyncio loop itself (paho's "external event loop" mode):
its socket is watched with `add_reader`/`add_writer`, `loop_read`/`loop_write` never block
(the socket is non-blocking), and `loop_misc` runs once a second for keepalives. Only the
TCP connect and the TLS handshake block, so they run in a worker thread. Every paho
callback therefore runs on the event loop thread: no locks, no thread hops per message.

Outbound (bus -> MQTT) at QoS >= 1 goes through an LMDB outbox (`loomd.bridges.outbox`): an
entry leaves it only when paho reports the PUBACK/PUBCOMP. Entries are handed to paho at
most `max_inflight` at a time while connected; paho re-sends the handed ones after a
reconnect, the rest follow in order. Inbound QoS >= 1 uses paho's manual acks: the PUBACK
goes to the broker only after the bus accepted the event (journaled first when durable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loomd.bridges import homeassistant as ha
from loomd.bridges.mqtt_requests import BusRequests
from loomd.bridges.outbox import NAMESPACE, Entry, Outbox
from loomd.bridges.settings import MapSettings, MqttSettings
from loomd.bridges.topics import CodecError, Translator, decode_payload, encode_payload
from loomd.bus.api import BusSubscription
from loomd.bus.envelope import Event, QoS
from loomd.component import Command, Component, StatusBlock
from loomd.config import read_credential
from loomd.errors import LoomdError
from loomd.messages import (
    ErrorCode,
    SayRequest,
    Topic,
    Transcript,
    VoiceMute,
    VoiceStateEvent,
)
from loomd.metrics import Family

__all__ = ["MqttComponent", "MqttStatus"]

log = logging.getLogger("loomd.mqtt")

CONNACK_TIMEOUT_S = 10.0
READ_SLICE_S = 0.002  # longest the reader keeps the loop before letting others run


def _jitter(delay: float) -> float:
    """Full jitter on the upper half: a fleet restarting together does not reconnect in step."""
    return delay / 2 + random.random() * delay / 2


@dataclass
class MapState:
    index: int
    s: MapSettings
    tr: Translator
    in_count: int = 0
    out_count: int = 0
    errors: int = 0
    looped: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "direction": self.s.direction,
            "mqtt": self.s.mqtt,
            "bus": self.s.bus,
            "in": self.in_count,
            "out": self.out_count,
            "errors": self.errors,
            "looped": self.looped,
        }


@dataclass(frozen=True)
class MqttStatus(StatusBlock):
    state: str
    detail: str
    broker: str
    client_id: str
    connects: int
    outbox_depth: int
    outbox_oldest_s: float
    outbox_overflow: int
    outbox_expired: int
    inflight: int
    connected_at: float  # time.time() of the last CONNACK (0: never)
    outbox_emptied_at: float  # time.time() when the outbox last became empty
    errors: dict[str, int] = field(default_factory=dict)
    maps: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"{self.state} {self.broker} as {self.client_id}"
            + (f" ({self.detail})" if self.detail else "")
            + f", {self.connects} connects",
            f"outbox {self.outbox_depth} (oldest {self.outbox_oldest_s:.1f} s), "
            f"{self.inflight} in flight, {self.outbox_overflow} overflowed, "
            f"{self.outbox_expired} expired",
        ]
        if self.errors:
            out.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())))
        arrows = {"both": "<->", "in": "->", "out": "<-"}
        for m in self.maps:
            out.append(
                f"map {m['mqtt']} {arrows[m['direction']]} {m['bus']}: in {m['in']}, "
                f"out {m['out']}, errors {m['errors']}, looped {m['looped']}"
            )
        return out


class MqttComponent(BusRequests, Component[MqttSettings]):
    name = "mqtt"
    Settings = MqttSettings
    requires = ("paho.mqtt",)
    extra = "mqtt"
    apt = "python3-paho-mqtt"
    summary = "MQTT bridge: broker topics <-> bus topics, LMDB outbox"

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        import paho.mqtt.client as mqtt

        s = self.settings
        self.mqtt = mqtt
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.device = self.ctx.device_id
        self.client_id = s.client_id or f"loomd-{self.device}"
        self.status_topic = f"loomd/{self.device}/status"
        self.v5 = s.protocol == "5"
        self.maps = [MapState(i, m, Translator(m.mqtt, m.bus)) for i, m in enumerate(s.map)]
        self.ins = [m for m in self.maps if m.s.direction in ("in", "both")]
        self.outs = [m for m in self.maps if m.s.direction in ("out", "both")]
        self.state = "connecting"
        self.detail = ""
        self.connects = 0
        self.attempts = 0
        self.connected_at = 0.0
        self.connected = False
        self.stopping = False
        self.errors: dict[str, int] = {}
        self.in_pending = 0
        self.inflight: dict[int, Entry] = {}  # paho mid -> outbox entry
        self._gen = 0  # connection generation: acks for an older connection are dropped
        self._fd: int | None = None
        self._lost = asyncio.Event()
        self._offline_mid = -1
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._offline_acked = asyncio.Event()
        self._connack: asyncio.Future[Any] | None = None
        self._route_cache: dict[str, tuple[MapState, str] | None] = {}
        self._password = self._read_password()
        self._check_tls_files()

        self.outbox = Outbox(
            self.ctx.state.kv(NAMESPACE), s.outbox_max_messages, float(s.outbox_max_age_s)
        )
        left = await asyncio.to_thread(self.outbox.load)
        if left:
            log.info("mqtt: %d messages left in the outbox by the last run", left)
        self.client = self._make_client()
        await self._ha_setup()
        self.subs: list[tuple[MapState, BusSubscription]] = [
            (m, self.ctx.bus.subscribe(m.s.bus, m.s.bus_qos)) for m in self.outs
        ]
        for m, sub in self.subs:
            self.spawn(lambda m=m, sub=sub: self._forward(m, sub), f"out{m.index}", restart=True)  # type: ignore[misc]
        self._requests_setup()  # mqtt.publish / mqtt.follow from the bus
        self.spawn(self._connection, "connection", restart=True)
        self.spawn(self.outbox.run_deletes, "outbox", restart=True)
        self.spawn(self._housekeeping, "housekeeping", restart=True)

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

    def _make_client(self) -> Any:
        mqtt, s = self.mqtt, self.settings
        kw: dict[str, Any] = {}
        if not self.v5:
            kw["clean_session"] = not s.persistent_session
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            manual_ack=True,
            **kw,
        )
        c.enable_logger(logging.getLogger("loomd.mqtt.paho"))
        if s.username:
            c.username_pw_set(s.username, self._password)
        if s.tls:
            ctx = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and host name
            if s.ca_file:
                ctx.load_verify_locations(s.ca_file)
            else:
                ctx.load_default_certs()
            self._tls_ctx: _TrackingContext | None = ctx
            if s.cert_file:
                ctx.load_cert_chain(s.cert_file, s.key_file)
            ctx.check_hostname = True  # no insecure mode: a mismatch is an error
            c.tls_set_context(ctx)
        # 0 = unlimited in paho: `_pump` keeps the window itself. With a limit, paho rescans
        # every pending message on each PUBACK (O(window) per ack: 0.2 ms at 256 in flight).
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        if not s.tls:
            self._tls_ctx = None
        return c

    async def stop_intake(self) -> None:
        for _, sub in self.subs:
            await sub.close()

    def pending(self) -> int:
        return self.in_pending

    async def stop(self) -> None:
        self.stopping = True
        if self.connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            self._offline_mid = info.mid
            with _suppress_timeout():
                async with asyncio.timeout(1.0):
                    await self._offline_acked.wait()
            self.client.disconnect()
            try:
                async with asyncio.timeout(1.0):
                    await self._lost.wait()
            except TimeoutError:
                pass
        self._unwatch()
        for _, sub in self.subs:
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

    def _connect_blocking(self) -> None:
        try:
            self._connect_paho()
        except BaseException:
            # paho leaves the TLS socket of a failed handshake open: close it here.
            if self._tls_ctx is not None and self._tls_ctx.last is not None:
                self._tls_ctx.last.close()
            raise
        finally:
            if self._tls_ctx is not None:
                self._tls_ctx.last = None

    def _connect_paho(self) -> None:
        s = self.settings
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if s.persistent_session:
                props.SessionExpiryInterval = s.session_expiry_s
            self.client.connect(
                s.host, s.port, s.keepalive_s, clean_start=not s.persistent_session,
                properties=props,
            )  # fmt: skip
        else:
            self.client.connect(s.host, s.port, s.keepalive_s)

    async def _connection(self) -> None:
        s = self.settings
        delay = s.reconnect_min_s
        while not self.stopping:
            self._lost.clear()
            self._connack = self.loop.create_future()
            self.attempts += 1
            try:
                await asyncio.to_thread(self._connect_blocking)
            except ssl.SSLError as exc:
                self._set_state("tls error", _ssl_text(exc), error="tls")
            except OSError as exc:
                self._set_state("unreachable", exc.strerror or str(exc), error="unreachable")
            else:
                reason = await self._await_connack()
                if reason is None:
                    await self._connected()
                    delay = s.reconnect_min_s
                    if self.stopping:
                        return
                    await asyncio.sleep(_jitter(s.reconnect_min_s))
                    continue
                self._set_state("refused", reason, error="refused")
                self.client.disconnect()
                with _suppress_timeout():
                    async with asyncio.timeout(1.0):
                        await self._lost.wait()
                self._unwatch()
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, s.reconnect_max_s)

    async def _await_connack(self) -> str | None:
        """None when the broker accepted us, else why not."""
        assert self._connack is not None
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                (self._connack, lost), timeout=CONNACK_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
        finally:
            lost.cancel()
        if self._connack in done:
            rc = self._connack.result()
            return f"{rc}" if rc.is_failure else None
        return "connection closed before CONNACK" if done else "no CONNACK in time"

    async def _connected(self) -> None:
        self.connects += 1
        self._set_state("connected")
        subs = [(m.s.mqtt, m.s.qos) for m in self.ins]
        if subs:
            if self.v5:
                from paho.mqtt.subscribeoptions import SubscribeOptions

                # noLocal: the broker does not echo our own publishes back to us.
                self.client.subscribe([(f, SubscribeOptions(qos=q, noLocal=True)) for f, q in subs])
            else:
                self.client.subscribe(subs)
        self.client.publish(self.status_topic, "online", qos=1, retain=True)
        self._subscribe_follows()
        if self.settings.discovery:
            self.client.subscribe([(t, 1) for t in self._ha_topics])
            self._announce()
            await self._publish_state()
        await self._event("loomd.mqtt.connected")
        self._pump()
        await self._lost.wait()
        self.connected = False
        if not self.stopping:
            self._set_state("disconnected", self._lost_reason)
            await self._event("loomd.mqtt.disconnected")

    async def _event(self, topic: str) -> None:
        payload = {
            "broker": f"{self.settings.host}:{self.settings.port}",
            "client_id": self.client_id,
            "state": self.state,
            "detail": self.detail,
        }
        await self.ctx.bus.publish(topic, payload, qos=QoS.REALTIME)

    # paho callbacks (on the loop thread, except socket_open/register_write during connect)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            # Here, not in _connected(): messages the broker re-sends may be read in this very
            # batch, and their acks must count for this connection.
            self._gen += 1
            self.connected = True
            self.connected_at = time.time()
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)

    _lost_reason = ""

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._lost_reason = str(rc)
        self.connected = False
        self._lost.set()

    def _on_loop(self, fn: Any, *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # Without TCP_NODELAY a QoS 1 round trip waits ~40 ms for delayed ACKs (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_loop(self._watch, sock.fileno())

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, True)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._want_write, False)

    def _watch(self, fd: int) -> None:
        self._unwatch()
        self._fd = fd
        self.loop.add_reader(fd, self._readable)
        if self.client.want_write():
            self._want_write(True)

    def _unwatch(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
            self._fd = None
            self._writer_on = False

    _flush_due = False
    _writer_on = False

    def _want_write(self, on: bool) -> None:
        """paho has packets to send: flush them once at the end of this loop iteration (all
        publishes made meanwhile go out corked together), not one epoll round per packet."""
        if self._fd is None:
            return
        if on:
            if not self._flush_due and not self._writer_on:
                self._flush_due = True
                self.loop.call_soon(self._flush)
        elif self._writer_on:
            self.loop.remove_writer(self._fd)
            self._writer_on = False

    def _flush(self) -> None:
        self._flush_due = False
        sock = self.client.socket()
        if self._fd is None or sock is None:
            return
        plain = not isinstance(sock, ssl.SSLSocket)
        if plain:  # one segment for the batch; uncorking sends it at once (with NODELAY)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            self.client.loop_write()
        finally:
            if plain and self.client.socket() is sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        if self._fd is not None and self.client.want_write() and not self._writer_on:
            self.loop.add_writer(self._fd, self._writable)  # the socket is full: wait for room
            self._writer_on = True

    def _writable(self) -> None:
        self.client.loop_write()
        if not self.client.want_write() and self._writer_on and self._fd is not None:
            self.loop.remove_writer(self._fd)
            self._writer_on = False

    def _readable(self) -> None:
        """Read what is there, for up to READ_SLICE_S: paho's loop_read takes one packet when
        nothing is in flight (QoS 0) and up to one per in-flight message otherwise."""
        c = self.client
        until = time.perf_counter() + READ_SLICE_S
        while True:
            c.loop_read()
            sock = c.socket()
            if sock is None:
                return
            if isinstance(sock, ssl.SSLSocket):
                if not sock.pending():
                    return  # the fd signals again when more arrives
            else:
                try:
                    if not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        continue  # EOF: the next loop_read notices and closes
                except OSError:  # BlockingIOError: nothing more for now
                    return
            if time.perf_counter() > until:
                break
        self.loop.call_soon(self._readable)  # more waiting: let others run first

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._fd is not None:
                self.client.loop_misc()  # keepalive pings, ping timeouts
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

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        gen, mid, qos, topic = self._gen, msg.mid, msg.qos, msg.topic
        if topic in self._ha_topics:
            self._on_ha(topic, msg.payload, gen, mid, qos)
            return
        if self._followed(topic, msg.payload, msg.retain):
            self._ack(gen, mid, qos)  # state topics: the latest value matters, not each one
            return
        try:
            routed = self._route_in(topic)
        except CodecError as exc:
            self._bad_in("bad_topic", None, str(exc))
            self._ack(gen, mid, qos)
            return
        if routed is None:
            self.count("unmapped")
            self._ack(gen, mid, qos)
            return
        m, bus_topic = routed
        data = msg.payload
        if len(data) > self.settings.max_payload_bytes:
            self._bad_in(
                "oversize", m, f"{topic}: {len(data)} bytes > {self.settings.max_payload_bytes}"
            )
            self._ack(gen, mid, qos)
            return
        try:
            value = decode_payload(m.s.codec, data)
        except CodecError as exc:
            self._bad_in("bad_payload", m, f"{topic}: {exc}")
            self._ack(gen, mid, qos)
            return
        self.in_pending += 1
        task = self.loop.create_task(
            self.ctx.bus.publish(bus_topic, value, qos=m.s.bus_qos, meta={"mqtt_topic": topic})
        )
        task.add_done_callback(lambda t: self._in_done(t, m, gen, mid, qos))

    def _in_done(self, t: asyncio.Task[Event], m: MapState, gen: int, mid: int, qos: int) -> None:
        self.in_pending -= 1
        exc = None if t.cancelled() else t.exception()
        if t.cancelled() or exc is not None:
            # Not acked: the broker redelivers it on the next session.
            m.errors += 1
            self.count("bus_refused")
            self.ctx.error(ErrorCode.MQTT_BUS_REFUSED, f"mqtt: bus refused {m.s.bus}: {exc}")
            return
        m.in_count += 1
        self._ack(gen, mid, qos)

    def _ack(self, gen: int, mid: int, qos: int) -> None:
        if qos and gen == self._gen and self.connected:
            self.client.ack(mid, qos)

    def _bad_in(self, kind: str, m: MapState | None, text: str) -> None:
        self.count(kind)
        if m is not None:
            m.errors += 1
        text = f"mqtt: {kind.replace('_', ' ')}: {text} (not forwarded)"
        self.ctx.error(ErrorCode(f"mqtt_{kind}"), text)

    # -- outbound: bus -> MQTT ----------------------------------------------------------------
    async def _forward(self, m: MapState, sub: BusSubscription) -> None:
        async for ev in sub:
            self._out_one(m, ev)

    def _out_one(self, m: MapState, ev: Event) -> None:
        topic = m.tr.to_mqtt(ev.topic)
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
            if self.connected:
                self.client.publish(topic, data, 0, m.s.retain)
            else:
                self.count("offline_qos0")
            return
        if self.outbox.add(topic, data, m.s.qos, m.s.retain) is None:
            self.count("outbox_overflow")
            self.ctx.error(
                ErrorCode.MQTT_OUTBOX_FULL,
                f"mqtt: outbox full ({self.outbox.max_messages} messages); {topic} dropped",
            )
            return
        if self.connected:
            self._pump()

    def _pump(self) -> None:
        """Hand queued outbox entries to paho, in order, up to the in-flight window."""
        unsent, window = self.outbox.unsent, self.settings.max_inflight
        ok = (self.mqtt.MQTT_ERR_SUCCESS, self.mqtt.MQTT_ERR_NO_CONN)
        while self.connected and unsent and len(self.inflight) < window:
            seq, e = unsent.popitem(last=False)
            info = self.client.publish(e.topic, e.payload, e.qos, e.retain)
            if info.rc not in ok:
                unsent[seq] = e
                unsent.move_to_end(seq, last=False)
                log.warning("mqtt: paho refused a publish: %s", info.rc)
                return
            e.mid = info.mid
            self.inflight[info.mid] = e

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        e = self.inflight.pop(mid, None)
        if e is None:
            if mid == self._offline_mid:
                self._offline_acked.set()
            fut = self._waiting.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        self.outbox.remove(e.seq)
        self._pump()

    # -- Home Assistant -----------------------------------------------------------------------
    async def _ha_setup(self) -> None:
        s, b = self.settings, ha.base_topic(self.device)
        self.ha_entities: dict[str, ha.Entity] = {}
        self._ha_topics: frozenset[str] = frozenset()
        self.muted = False
        if not s.discovery:
            return
        self.ha_entities = {e.key: e for e in ha.default_entities(self.device)}
        self._ha_birth = f"{s.discovery_prefix}/status"
        self._ha_say, self._ha_mute = f"{b}/say", f"{b}/mute/set"
        self._ha_topics = frozenset((self._ha_birth, self._ha_say, self._ha_mute))
        self._last_events = (time.monotonic(), (await self.ctx.bus.stats()).events_in)
        bus = self.ctx.bus
        mirrors = (
            (Topic.VOICE_STATE, f"{b}/voice/state", lambda e: VoiceStateEvent.from_event(e).state),
            (
                Topic.VOICE_TRANSCRIPT,
                f"{b}/voice/transcript",
                lambda e: Transcript.from_event(e).text,
            ),
        )
        for topic, mqtt_topic, pick in mirrors:
            sub = bus.subscribe(str(topic), QoS.RELIABLE)
            self.spawn(
                lambda sub=sub, t=mqtt_topic, pick=pick: self._mirror(sub, t, pick),  # type: ignore[misc]
                f"ha-{topic}",
                restart=True,
            )
        entities = bus.subscribe(ha.ENTITY_TOPIC, QoS.RELIABLE)
        self.spawn(lambda: self._agent_entities(entities), "ha-entities", restart=True)
        self.spawn(self._ha_state_loop, "ha-state", restart=True)

    def _announce(self) -> None:
        """Retained discovery configs for every entity (on connect and on HA's birth)."""
        if not self.connected:
            return
        prefix = self.settings.discovery_prefix
        for e in self.ha_entities.values():
            payload = json.dumps(ha.config_payload(self.device, e), separators=(",", ":"))
            self.client.publish(ha.config_topic(prefix, self.device, e), payload, 1, True)
        self.client.publish(f"{ha.base_topic(self.device)}/mute", "ON" if self.muted else "OFF",
                            1, True)  # fmt: skip

    async def _forget(self) -> dict[str, Any]:
        if not self.connected:
            raise LoomdError("mqtt is not connected: nothing can be cleared now")
        prefix = self.settings.discovery_prefix
        waits = []
        for e in self.ha_entities.values():
            info = self.client.publish(ha.config_topic(prefix, self.device, e), b"", 1, True)
            waits.append(self._acked(info.mid))
        try:
            async with asyncio.timeout(5.0):
                await asyncio.gather(*waits)  # cleared on the broker when this returns
        except TimeoutError:
            raise LoomdError("the broker did not acknowledge the clears within 5 s") from None
        n = len(self.ha_entities)
        self.ha_entities = {}  # until the next start: a birth message must not bring them back
        return {"cleared": n}

    def _acked(self, mid: int) -> asyncio.Future[None]:
        """Resolves on the broker's PUBACK for a publish made outside the outbox."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiting[mid] = fut
        return fut

    async def _publish_state(self) -> None:
        if not self.connected:
            return
        stats = await self.ctx.bus.stats()
        now, events = time.monotonic(), stats.events_in
        then, before = self._last_events
        self._last_events = (now, events)
        drops = sum(stats.drops.values())
        state = {
            "events_per_s": round((events - before) / (now - then), 1) if now > then else 0.0,
            "drops": drops,
            "cpu_temperature": _cpu_temperature(),
        }
        self.client.publish(f"{ha.base_topic(self.device)}/state", json.dumps(state), 0, True)

    async def _ha_state_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.state_interval_s)
            await self._publish_state()

    async def _mirror(self, sub: BusSubscription, mqtt_topic: str, pick: Any) -> None:
        async for ev in sub:
            try:
                text = str(pick(ev))
            except LoomdError as exc:
                self._bad_in("bad_payload", None, f"{ev.topic}: {exc}")
                continue
            if self.connected:
                self.client.publish(mqtt_topic, text, 1, True)

    async def _agent_entities(self, sub: BusSubscription) -> None:
        async for ev in sub:
            try:
                e = ha.agent_entity(self.device, ev.payload)
            except ValueError as exc:
                self._bad_in("bad_entity", None, f"{ha.ENTITY_TOPIC}: {exc}")
                continue
            new = e.key not in self.ha_entities
            self.ha_entities[e.key] = e
            self._announce()
            if new:
                state = self.ctx.bus.subscribe(e.bus, QoS.RELIABLE)
                t = str(e.extra["state_topic"])
                self.spawn(lambda s=state, t=t: self._mirror_raw(s, t), f"ha-{e.key}", restart=True)  # type: ignore[misc]

    async def _mirror_raw(self, sub: BusSubscription, mqtt_topic: str) -> None:
        async for ev in sub:
            if self.connected:
                p = ev.payload
                data = (
                    p
                    if isinstance(p, bytes)
                    else p.encode()
                    if isinstance(p, str)
                    else json.dumps(p)
                )
                self.client.publish(mqtt_topic, data, 1, True)

    def _on_ha(self, topic: str, data: bytes, gen: int, mid: int, qos: int) -> None:
        text = bytes(data).decode("utf-8", "replace").strip()
        if topic == self._ha_birth:
            if text == "online":
                self._announce()  # Home Assistant (re)started: it forgot non-retained state
            self._ack(gen, mid, qos)
            return
        if topic == self._ha_say:
            if not text:
                self._ack(gen, mid, qos)
                return
            coro = self.ctx.bus.publish(str(Topic.VOICE_SAY), SayRequest(text=text).to_payload())
        else:
            if text not in ("ON", "OFF"):
                self._bad_in("bad_payload", None, f"{topic}: {text[:32]!r} is not ON or OFF")
                self._ack(gen, mid, qos)
                return
            self.muted = text == "ON"
            self.client.publish(f"{ha.base_topic(self.device)}/mute", text, 1, True)
            coro = VoiceMute(self.muted).publish(self.ctx.bus)
        self.in_pending += 1
        task = self.loop.create_task(coro)
        task.add_done_callback(lambda t: self._ha_done(t, gen, mid, qos))

    def _ha_done(self, t: asyncio.Task[Event], gen: int, mid: int, qos: int) -> None:
        self.in_pending -= 1
        if t.cancelled() or t.exception() is not None:
            self.count("bus_refused")
            return
        self._ack(gen, mid, qos)

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
            inflight=len(self.inflight),
            connected_at=self.connected_at,
            outbox_emptied_at=self.outbox.emptied_at,
            errors=dict(self.errors),
            maps=[m.view() for m in self.maps],
        )

    def metrics(self) -> Iterable[Family]:
        def one(name: str, kind: str, help: str, value: float) -> Family:
            return Family(f"loomd_mqtt_{name}", kind, help, [({}, float(value))])

        yield one("connected", "gauge", "1 while connected to the broker.", self.connected)
        yield one("connects_total", "counter", "Successful connections.", self.connects)
        yield one("outbox_depth", "gauge", "Messages in the outbox.", len(self.outbox))
        yield one(
            "outbox_oldest_seconds", "gauge", "Age of the oldest.", self.outbox.oldest_age_s()
        )
        yield one("outbox_overflow_total", "counter", "Refused: outbox full.", self.outbox.overflow)
        yield one("outbox_expired_total", "counter", "Expired unsent.", self.outbox.expired)
        yield one("inflight", "gauge", "Published, not yet acknowledged.", len(self.inflight))
        yield one(
            "outbox_write_errors_total", "counter", "LMDB writes that failed.",
            self.outbox.write_errors,
        )  # fmt: skip
        yield Family(
            "loomd_mqtt_messages_total",
            "counter",
            "Messages carried, per mapping and direction.",
            [({"map": str(m.index), "dir": "in"}, float(m.in_count)) for m in self.maps]
            + [({"map": str(m.index), "dir": "out"}, float(m.out_count)) for m in self.maps],
        )
        yield Family(
            "loomd_mqtt_errors_total",
            "counter",
            "Errors by kind.",
            [({"kind": k}, float(v)) for k, v in sorted(self.errors.items())],
        )

    def commands(self) -> Mapping[str, Command]:
        return {
            "status": Command(self._status_cmd, "connection, outbox, per-map counts"),
            "forget": Command(self._forget, "clear this board's Home Assistant discovery"),
        }

    async def _status_cmd(self) -> dict[str, Any]:
        return dataclasses.asdict(self.status())


def _ssl_text(exc: ssl.SSLError) -> str:
    return getattr(exc, "verify_message", None) or exc.reason or str(exc)


def _cpu_temperature() -> float | None:
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None


class _TrackingContext(ssl.SSLContext):
    """Remembers the socket it wrapped last, so a failed handshake's socket can be closed."""

    last: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kw: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kw)
        self.last = sock
        return sock


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: object, exc: object, tb: object) -> bool:
        return tp is TimeoutError
