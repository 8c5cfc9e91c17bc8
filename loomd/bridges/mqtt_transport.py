"""An MQTT client shaped like aiomqtt, over paho-mqtt, driven by the asyncio loop itself.

    transport = MqttTransport(params, on_message, on_acked)
    while True:
        try:
            async with transport:            # one connection: CONNECT ... CONNACK
                transport.subscribe([("a/#", 1)])
                reason = await transport.lost()
        except MqttConnectError as exc:      # exc.kind: unreachable, tls or refused
            ...

One paho client for the transport's whole life, so a persistent session (the messages in
flight, paho's re-sends after a reconnect) spans connections; each `async with` is one
connection. paho runs in its "external event loop" mode: the socket is watched with
`add_reader`/`add_writer`, `loop_read`/`loop_write` never block (the socket is
non-blocking), and `tick()` (once a second) runs `loop_misc` for keepalives. Only the TCP
connect and the TLS handshake block, so they run in a worker thread. Every callback
therefore runs on the event loop thread: no locks, no thread hops per message.

Manual acks: an inbound QoS >= 1 message is acknowledged only when its receiver calls
`ack(message)`; an ack for a message of an older connection is dropped (the broker
redelivers it). `publish_nowait()` returns paho's message id, `on_acked(mid)` reports the
PUBACK/PUBCOMP; `await publish()` waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, NamedTuple

from loomd.errors import LoomdError

__all__ = ["Message", "MqttConnectError", "MqttError", "MqttTransport", "TransportParams"]

log = logging.getLogger("loomd.mqtt")

CONNACK_TIMEOUT_S = 10.0
READ_SLICE_S = 0.002  # longest the reader keeps the loop before letting others run


class MqttError(LoomdError):
    """Anything the transport could not do."""


class MqttConnectError(MqttError):
    """A connection that did not come up: `kind` is unreachable, tls or refused."""

    STATES: ClassVar[dict[str, str]] = {
        "unreachable": "unreachable", "tls": "tls error", "refused": "refused"
    }  # fmt: skip

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{self.STATES[kind]}: {detail}")
        self.kind, self.detail = kind, detail

    @property
    def state(self) -> str:
        return self.STATES[self.kind]


@dataclass(frozen=True)
class TransportParams:
    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    v5: bool = True
    persistent_session: bool = True
    session_expiry_s: int = 86400
    username: str = ""
    password: str | None = None
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    will_topic: str = ""  # the last will: "offline", QoS 1, retained


class Message(NamedTuple):
    """One inbound message; `gen` is the connection it came on (for the manual ack). A
    named tuple: one is made per message on the hot path (a frozen dataclass costs ~4x)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    gen: int


class MqttTransport:
    def __init__(
        self,
        p: TransportParams,
        on_message: Callable[[Message], None],
        on_acked: Callable[[int], None],
    ) -> None:
        import paho.mqtt.client as mqtt

        self.p = p
        self.mqtt = mqtt
        self.on_message = on_message
        self.on_acked = on_acked
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.connected = False
        self.connected_at = 0.0  # time.time() of the last CONNACK (0: never)
        self.gen = 0  # connection generation: acks for an older connection are dropped
        self.lost_reason = ""
        self._fd: int | None = None
        self._lost = asyncio.Event()
        self._connack: asyncio.Future[Any] | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._flush_due = False
        self._writer_on = False
        self._tls_ctx: _TrackingContext | None = None
        self.client = self._make_client()
        self._ok = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)

    def _make_client(self) -> Any:
        from loomd.bridges import mqtt_lean

        mqtt, p = self.mqtt, self.p
        kw: dict[str, Any] = {}
        if not p.v5:
            kw["clean_session"] = not p.persistent_session
        self.lean = mqtt_lean.SUPPORTED
        if self.lean:  # paho, with the per-message objects taken off the data path
            kw["sink"] = self._on_lean_message
        c = (mqtt_lean.LeanClient if self.lean else mqtt.Client)(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=p.client_id,
            protocol=mqtt.MQTTv5 if p.v5 else mqtt.MQTTv311,
            manual_ack=True,
            **kw,
        )
        c.enable_logger(logging.getLogger("loomd.mqtt.paho"))
        if p.username:
            c.username_pw_set(p.username, p.password)
        if p.tls:
            ctx = _TrackingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and host name
            if p.ca_file:
                ctx.load_verify_locations(p.ca_file)
            else:
                ctx.load_default_certs()
            if p.cert_file:
                ctx.load_cert_chain(p.cert_file, p.key_file)
            ctx.check_hostname = True  # no insecure mode: a mismatch is an error
            c.tls_set_context(ctx)
            self._tls_ctx = ctx
        # 0 = unlimited in paho: the outbox pump keeps the window itself. With a limit, paho
        # rescans every pending message on each PUBACK (O(window) per ack).
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        if p.will_topic:
            c.will_set(p.will_topic, "offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        return c

    # -- one connection ---------------------------------------------------------------------
    async def __aenter__(self) -> MqttTransport:
        self._lost.clear()
        self._connack = self.loop.create_future()
        try:
            await asyncio.to_thread(self._connect_blocking)
        except ssl.SSLError as exc:
            raise MqttConnectError("tls", _ssl_text(exc)) from None
        except OSError as exc:
            raise MqttConnectError("unreachable", exc.strerror or str(exc)) from None
        reason = await self._await_connack()
        if reason is not None:
            await self._close()
            raise MqttConnectError("refused", reason)
        return self

    async def __aexit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def disconnect(self) -> None:
        """End the connection if there is one (the `async with` block sees `lost()`)."""
        if self.connected:
            await self._close()
        else:
            self._unwatch()

    async def _close(self) -> None:
        if not self._lost.is_set():
            self.client.disconnect()
            try:
                async with asyncio.timeout(1.0):
                    await self._lost.wait()
            except TimeoutError:
                pass
        self.connected = False
        self._unwatch()

    async def lost(self) -> str:
        """Wait until the connection is gone; why it went."""
        await self._lost.wait()
        return self.lost_reason

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
        p = self.p
        if p.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if p.persistent_session:
                props.SessionExpiryInterval = p.session_expiry_s
            self.client.connect(
                p.host, p.port, p.keepalive_s, clean_start=not p.persistent_session,
                properties=props,
            )  # fmt: skip
        else:
            self.client.connect(p.host, p.port, p.keepalive_s)

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

    # -- what a connection offers -----------------------------------------------------------
    def subscribe(self, subs: Iterable[tuple[str, int]], *, no_local: bool = True) -> None:
        """Subscribe (MQTT 5 with noLocal by default: our own publishes are not echoed)."""
        subs = list(subs)
        if not subs or not self.connected:
            return
        if self.p.v5 and no_local:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            self.client.subscribe([(f, SubscribeOptions(qos=q, noLocal=True)) for f, q in subs])
        else:
            self.client.subscribe(subs)

    def unsubscribe(self, filters: list[str]) -> None:
        if filters and self.connected:
            self.client.unsubscribe(filters)

    def publish_nowait(
        self, topic: str, payload: bytes | str, qos: int, retain: bool
    ) -> int | None:
        """Hand one message to paho; its message id (0 for QoS 0), or None when paho
        refused it."""
        if qos == 0 and self.lean and isinstance(payload, bytes):
            self.client.queue_qos0(topic, payload, retain)  # not connected: lost, as in paho
            self._want_write(True)
            return 0
        info = self.client.publish(topic, payload, qos, retain)
        if info.rc not in self._ok:
            log.warning("mqtt: paho refused a publish: %s", info.rc)
            return None
        return int(info.mid)

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
        *, timeout: float = 5.0,
    ) -> None:  # fmt: skip
        """Publish and wait for the broker's acknowledgement (QoS >= 1)."""
        if not self.connected:
            raise MqttError(f"{topic}: not connected")
        mid = self.publish_nowait(topic, payload, qos, retain)
        if mid is None:
            raise MqttError(f"{topic}: the client refused the message")
        if qos == 0:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiting[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise MqttError(f"{topic}: no acknowledgement within {timeout:g} s") from None
        finally:
            self._waiting.pop(mid, None)

    def ack(self, m: Message) -> None:
        if m.qos and m.gen == self.gen and self.connected:
            self.client.ack(m.mid, m.qos)

    def matches(self, flt: str, topic: str) -> bool:
        return bool(self.mqtt.topic_matches_sub(flt, topic))

    def tick(self) -> None:
        """Once a second: keepalive pings and ping timeouts."""
        if self._fd is not None:
            self.client.loop_misc()

    # -- paho callbacks (on the loop thread, except socket_open/register_write in connect) ---
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            # Here, not after the CONNACK wait: messages the broker re-sends may be read in
            # this very batch, and their acks must count for this connection.
            self.gen += 1
            self.connected = True
            self.connected_at = time.time()
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.lost_reason = str(rc)
        self.connected = False
        self._lost.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.on_message(Message(msg.topic, msg.payload, msg.qos, msg.retain, msg.mid, self.gen))

    def _on_lean_message(
        self, topic: str, payload: bytes, qos: int, retain: bool, mid: int
    ) -> None:
        self.on_message(Message(topic, payload, qos, retain, mid, self.gen))

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        fut = self._waiting.pop(mid, None) if self._waiting else None
        if fut is None:
            self.on_acked(mid)
        elif not fut.done():
            fut.set_result(None)

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

    # -- the socket on the event loop -------------------------------------------------------
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
        if self.lean:
            self.client.push_qos0()
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
        if self.lean:
            self.client.push_qos0()
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
            if self.lean and c.buffered():
                pass  # read already (LeanClient reads 64 KiB at a time): no syscall
            elif isinstance(sock, ssl.SSLSocket):
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
        # More waiting: let others run first. Two hops, so that what this slice's messages
        # woke (the bus hand-off, then the subscribers it fed) runs before the next read: a
        # reader that outpaces its consumers only fills their queues.
        self.loop.call_soon(self.loop.call_soon, self._readable)


def _ssl_text(exc: ssl.SSLError) -> str:
    return getattr(exc, "verify_message", None) or exc.reason or str(exc)


class _TrackingContext(ssl.SSLContext):
    """Remembers the socket it wrapped last, so a failed handshake's socket can be closed."""

    last: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kw: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kw)
        self.last = sock
        return sock
