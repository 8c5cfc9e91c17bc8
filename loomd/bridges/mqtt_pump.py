"""The outbox pump: outbound QoS >= 1 messages from the LMDB outbox to the transport.

An entry leaves the outbox only when the broker's PUBACK/PUBCOMP comes back (`acked()`).
Entries are handed to the transport at most `window` at a time while connected; paho
re-sends the handed ones after a reconnect, the rest follow in order (`pump()` on
connect)."""

from __future__ import annotations

from loomd.bridges.mqtt_transport import MqttTransport
from loomd.bridges.outbox import Entry, Outbox

__all__ = ["OutboxPump"]


class OutboxPump:
    def __init__(self, outbox: Outbox, transport: MqttTransport, window: int) -> None:
        self.outbox = outbox
        self.transport = transport
        self.window = window
        self.inflight: dict[int, Entry] = {}  # message id -> outbox entry

    def send(self, topic: str, payload: bytes, qos: int, retain: bool) -> Entry | None:
        """Queue one message (durable once its LMDB write commits); None: the outbox is full."""
        e = self.outbox.add(topic, payload, qos, retain)
        if e is not None and self.transport.connected:
            self.pump()
        return e

    def pump(self) -> None:
        """Hand queued outbox entries to the transport, in order, up to the window."""
        unsent, t = self.outbox.unsent, self.transport
        while t.connected and unsent and len(self.inflight) < self.window:
            seq, e = unsent.popitem(last=False)
            mid = t.publish_nowait(e.topic, e.payload, e.qos, e.retain)
            if mid is None:
                unsent[seq] = e
                unsent.move_to_end(seq, last=False)
                return
            e.mid = mid
            self.inflight[mid] = e

    def acked(self, mid: int) -> None:
        e = self.inflight.pop(mid, None)
        if e is not None:
            self.outbox.remove(e.seq)
            self.pump()
