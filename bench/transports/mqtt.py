"""mosquitto + paho: the MQTT baseline."""

from __future__ import annotations

import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.harness import BenchError, send_result, wait_go
from bench.workload import STAMP, PubSpec, Stopper, SubSpec, Tally, publish_for


def _mqtt_client(name: str, port: int, window: int = 20) -> Any:
    import paho.mqtt.client as mqtt

    def nodelay(client: Any, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}", protocol=mqtt.MQTTv311
    )
    client.on_socket_open = nodelay
    client.max_inflight_messages_set(window)  # only allowed before connecting
    client.connect("127.0.0.1", port, keepalive=60)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise BenchError("mqtt: no CONNACK within 10 s")
        client.loop(0.05)
    return client


def mqtt_pub(conn: Connection, spec: PubSpec) -> None:
    qos = int(spec.qos)
    client = _mqtt_client("bench-pub", int(spec.endpoint), spec.window)
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1

    if qos:
        client.on_publish = on_publish
    conn.send(("ready", {}))
    wait_go(conn)
    cpu0 = time.process_time()
    publish, topic, window = client.publish, spec.topic, spec.window
    sent = 0

    def send(data: bytes) -> None:
        nonlocal sent
        while qos and sent - acked >= window:
            client.loop(0.1)  # read PUBACKs: the QoS 1 window is full
        publish(topic, data, qos=qos)
        sent += 1
        if client.want_write():  # socket buffer full: wait like a blocking socket would
            client.loop(0.1)

    t0 = time.perf_counter()
    publish_for(spec, send, batch=256)
    deadline = time.monotonic() + 30
    while (client.want_write() or (qos and acked < sent)) and time.monotonic() < deadline:
        client.loop(0.1)
    elapsed = time.perf_counter() - t0
    acked_or_none = acked if qos else None
    send_result(conn, cpu0, sent=sent, acked=acked_or_none, elapsed_s=elapsed, expect=sent)
    client.disconnect()


class BrokerDrops:
    """mosquitto's own count of publishes it dropped ($SYS, refreshed every sys_interval)."""

    TOPIC = "$SYS/broker/publish/messages/dropped"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.value: int | None = None
        self.at = 0.0
        client.message_callback_add(self.TOPIC, self._on)
        client.subscribe(self.TOPIC, qos=0)

    def _on(self, client: Any, userdata: Any, msg: Any) -> None:
        self.value, self.at = int(msg.payload), time.monotonic()

    def read(self, newer_than: float, timeout: float = 1.6) -> int | None:
        """The value published after `newer_than`; mosquitto publishes $SYS values only when
        they change, so no update within one sys_interval (1 s) means it did not change."""
        deadline = time.monotonic() + timeout
        while (self.value is None or self.at <= newer_than) and time.monotonic() < deadline:
            self.client.loop(0.05)
        return self.value


def mqtt_sub(conn: Connection, spec: SubSpec) -> None:
    client = _mqtt_client("bench-sub", int(spec.endpoint))
    subscribed: list[bool] = []
    client.on_subscribe = lambda *_: subscribed.append(True)
    client.subscribe(spec.pattern, qos=int(spec.qos))
    deadline = time.monotonic() + 10
    while not subscribed:
        if time.monotonic() > deadline:
            raise BenchError("mqtt: no SUBACK within 10 s")
        client.loop(0.05)
    broker_drops = BrokerDrops(client)
    drops0 = broker_drops.read(newer_than=0.0)
    tally, stop = Tally(spec), Stopper(conn, spec)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        tally.arrive()
        if spec.latency:
            now = time.time_ns()
            tally.latency(STAMP.unpack_from(msg.payload)[1], now)

    client.on_message = on_message
    conn.send(("ready", {}))
    loop = client.loop
    while not stop.should_stop(tally):
        for _ in range(4096):
            n0 = tally.n
            loop(0.02)  # paho's own network loop step (what loop_forever() runs)
            if tally.n == n0:
                break  # idle: time to ask whether to stop
    result = tally.result(stop)
    drops1 = broker_drops.read(newer_than=time.monotonic())
    if drops0 is not None and drops1 is not None:
        result["dropped_broker"] = drops1 - drops0
    conn.send(("result", result))
    client.disconnect()
