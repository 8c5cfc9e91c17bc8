"""paho-mqtt's client with a lean data path: the three per-message costs a profile found.

Under a QoS 0 blast through the bridge (`bench/profile_case.py --bench bridges qos0`,
docs/perf/), paho spent most of the daemon's time on objects the bridge never uses:

- every PUBLISH in builds an `MQTTMessage`, its `MQTTMessageInfo` and that one's
  `threading.Condition` (~5 us), and under MQTT 5 a `Properties` object (~18 us, even
  when the packet has no properties);
- every QoS 0 PUBLISH out builds an `MQTTMessageInfo` + `Condition`, and once written
  paho calls `on_publish` with a fresh `ReasonCode` and `Properties` (~20 us);
- every packet in is read by two or three `recv()` calls (type byte, length bytes, rest),
  through paho's per-byte state machine (`_packet_read`, a quarter of the daemon's time
  once the objects above were gone).

`LeanClient` keeps paho for everything else (CONNECT/CONNACK, SUBSCRIBE, keepalive, TLS,
QoS 1 out with its session and re-sends, QoS 2 both ways, the acks) and overrides only:

- `_packet_read` / `_handle_publish`: a QoS 0/1 PUBLISH without properties is decoded
  here (topic, packet id, payload: slices), straight from the read buffer when the whole
  packet is in it, and handed to `sink(topic, payload, qos, retain, mid)`; anything else
  (QoS 2, MQTT 5 properties, a topic that is not UTF-8, a malformed packet, any other
  packet type) goes to paho's own code, which behaves as before;
- `_sock_recv`: reads up to 64 KiB per syscall and serves paho's small reads from that;
- QoS 0 out: `queue_qos0()` encodes the PUBLISH packet; `push_qos0()` hands everything
  queued since the last push to paho's write queue as one raw chunk (written in order with
  paho's own packets, no per-message objects, no on_publish). Every call that makes paho
  queue a packet pushes first, so the order on the wire is the order of the calls.

These are paho 2.x's private methods, checked at import (`SUPPORTED`); with another paho
the transport uses paho's public API only (the old, slower path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["SUPPORTED", "LeanClient"]

RECV_BYTES = 65536
_RAW = 0x00  # packet type 0 is reserved in MQTT: paho writes it and looks no further

SUPPORTED = paho.mqtt.__version__.startswith("2.") and all(
    hasattr(mqtt.Client, name)
    for name in ("_handle_publish", "_sock_recv", "_sock_close", "_packet_queue")
)

Sink = Callable[[str, bytes, int, bool, int], None]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


class LeanClient(mqtt.Client):
    def __init__(self, *args: Any, sink: Sink, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lean_sink = sink
        self._rbuf = bytearray()
        self._q0: list[bytes] = []
        self.whole_reads = 0  # PUBLISH packets taken whole from the buffer (tests look)
        self._v5 = self._protocol == mqtt.MQTTv5

    # -- in ---------------------------------------------------------------------------------
    def buffered(self) -> bool:
        """Bytes already read from the socket and not yet parsed."""
        return bool(self._rbuf)

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            data = super()._sock_recv(RECV_BYTES)
            if len(data) <= bufsize:
                return data  # b"" (EOF) included
            buf.extend(data)
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def _sock_close(self) -> None:
        self._rbuf.clear()  # bytes of a dead connection never reach the next one
        self._q0.clear()  # QoS 0 not yet handed to paho: lost with the connection
        super()._sock_close()

    def _packet_read(self) -> MQTTErrorCode:
        """A whole PUBLISH in the buffer, at a packet boundary, is taken here in one go;
        anything else (another packet type, a packet cut by the read, a fallback) is read
        by paho, byte by byte from the same buffer."""
        buf = self._rbuf
        if self._in_packet["command"] == 0 and len(buf) >= 2 and buf[0] & 0xF0 == 0x30:
            size, mult, i, n = 0, 1, 1, len(buf)
            while i < n and i <= 4:
                byte = buf[i]
                size += (byte & 0x7F) * mult
                mult <<= 7
                i += 1
                if not byte & 0x80:
                    end = i + size
                    if end <= n and self._lean(buf[0], buf, i, end):
                        del buf[:end]
                        self.whole_reads += 1
                        self._last_bytes_received = time.monotonic()
                        return MQTTErrorCode.MQTT_ERR_SUCCESS
                    break
        return super()._packet_read()

    def _handle_publish(self) -> MQTTErrorCode:
        data: bytearray = self._in_packet["packet"]
        if self._lean(self._in_packet["command"], data, 0, len(data)):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_publish()

    def _lean(self, header: int, data: bytearray, start: int, end: int) -> bool:
        """Decode a QoS 0/1 PUBLISH without properties in `data[start:end]` and hand it to
        the sink; False (nothing done) for anything paho must handle."""
        qos = (header & 0x06) >> 1
        if qos == 2 or end - start < 2:
            return False
        tlen = (data[start] << 8) | data[start + 1]
        at = start + 2 + tlen
        mid = 0
        if qos:
            if at + 2 > end:
                return False
            mid = (data[at] << 8) | data[at + 1]
            at += 2
        if self._v5:
            if at >= end or data[at] != 0:  # properties (or malformed): paho's full decode
                return False
            at += 1
        elif at > end:
            return False
        if not tlen:
            return False
        try:
            topic = data[start + 2 : start + 2 + tlen].decode()
        except UnicodeDecodeError:
            return False
        self._lean_sink(topic, bytes(data[at:end]), qos, bool(header & 0x01), mid)
        return True

    # -- QoS 0 out --------------------------------------------------------------------------
    def queue_qos0(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Encode one QoS 0 PUBLISH for the next `push_qos0()`; False when not connected
        (lost, as paho loses it)."""
        if self._sock is None:
            return False
        t = topic.encode()
        size = 2 + len(t) + len(payload) + (1 if self._v5 else 0)
        head = bytes((0x30 | (0x01 if retain else 0x00),)) + _varint(size)
        self._q0.append(
            head + len(t).to_bytes(2, "big") + t + (b"\x00" if self._v5 else b"") + payload
        )
        return True

    def push_qos0(self) -> None:
        """Hand the queued QoS 0 packets to paho's write queue, as one chunk."""
        if self._q0:
            chunk, self._q0 = b"".join(self._q0), []
            self._packet_queue(_RAW, chunk, 0, 0)

    # Everything that makes paho queue a packet pushes first: the wire keeps call order.
    def publish(self, *args: Any, **kw: Any) -> mqtt.MQTTMessageInfo:
        self.push_qos0()
        return super().publish(*args, **kw)

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        self.push_qos0()
        return super().ack(mid, qos)

    def disconnect(self, *args: Any, **kw: Any) -> MQTTErrorCode:
        self.push_qos0()
        return super().disconnect(*args, **kw)
