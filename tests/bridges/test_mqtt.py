"""The MQTT bridge against a real mosquitto, with mosquitto_pub/mosquitto_sub as the
third-party clients on the other side."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.harness import mqtt_map
from tests.bridges.conftest import (
    Mosquitto,
    bridge,
    connected,
    make_certs,
    mqtt_of,
    mqtt_section,
    running,
    wait_for,
)

IN_TEMP = mqtt_map("in", "sensors/+/temp", "sensor.*.temp", qos=1)
OUT_SAY = mqtt_map("out", "boards/+/say", "say.*", qos=1, codec="text")


async def test_sensor_to_bus_and_bus_to_mqtt(short_tmp: Path, broker: Mosquitto) -> None:
    async with bridge(short_tmp / "a", mqtt_section(broker, IN_TEMP + OUT_SAY)) as c:
        bus = c.ctx.bus
        async with bus.subscribe("sensor.*.temp", "reliable") as sub:
            await asyncio.to_thread(broker.pub, "sensors/kitchen/temp", '{"c": 21.5}')
            ev = await sub.get(10)
        assert ev.topic == "sensor.kitchen.temp"
        assert ev.payload == {"c": 21.5}
        assert ev.meta["mqtt_topic"] == "sensors/kitchen/temp"

        with broker.sub("boards/#") as watcher:
            await watcher.ready()
            await bus.publish("say.hall", "hello there")
            assert await watcher.wait(1) == ["boards/hall/say hello there"]
        await wait_for(lambda: len(c.outbox) == 0)
        assert c.maps[0].in_count == 1 and c.maps[1].out_count == 1


async def test_status_topic_and_will(short_tmp: Path, broker: Mosquitto) -> None:
    async with running(short_tmp / "a", mqtt_section(broker)) as host:
        await connected(host)
        with broker.sub("loomd/test-box/status") as w:
            assert await w.wait(1) == ["loomd/test-box/status online"]  # retained
    with broker.sub("loomd/test-box/status") as w:
        assert await w.wait(1) == ["loomd/test-box/status offline"]


# --- nothing lost ------------------------------------------------------------------------


def first_seen(values: list[int]) -> list[int]:
    """At-least-once delivery may repeat a message after a reconnect: keep first sightings."""
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


OUT_SEQ = mqtt_map("out", "seq/out", "seq.out", qos=1)
IN_SEQ = mqtt_map("in", "seq/in", "seq.in", qos=1)


async def test_broker_restart_mid_stream_outbound(short_tmp: Path, broker: Mosquitto) -> None:
    n = 600
    async with bridge(short_tmp / "a", mqtt_section(broker, OUT_SEQ)) as c:
        # a persistent mosquitto_sub session: it gets what was queued for it while it was away
        with broker.sub("seq/out", "-c", "-i", "watcher") as w:
            await w.ready()
            for i in range(n):
                await c.ctx.bus.publish("seq.out", i)
                if i == n // 3:
                    await asyncio.to_thread(broker.restart)
            lines = await w.wait_distinct(n, timeout=60)
            got = first_seen([int(line.split()[1]) for line in lines])
            assert got == list(range(n))
        await wait_for(lambda: len(c.outbox) == 0)
        assert c.connects >= 2


class PahoPublisher:
    """A plain paho client (a sensor): QoS 1, reconnecting on its own."""

    def __init__(self, broker: Mosquitto) -> None:
        import paho.mqtt.client as mqtt

        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor",
                             clean_session=False)  # fmt: skip
        self.c.reconnect_delay_set(0.05, 0.2)
        self.acked: set[int] = set()
        self.all_acked = threading.Event()
        self.want: set[int] | None = None
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()

    def publish_all(
        self, topic: str, values: list[int], restart_at: int, broker: Mosquitto
    ) -> None:
        mids = []
        for i in values:
            # published while the broker is away, paho keeps it and sends it on reconnect
            mids.append(self.c.publish(topic, str(i), qos=1).mid)
            if i == restart_at:
                broker.restart()
        self.want = set(mids)
        self._on_publish(None, None, -1, None, None)
        assert self.all_acked.wait(30), f"{len(self.want - self.acked)} never acknowledged"

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        self.acked.add(mid)
        if self.want is not None and self.want <= self.acked:
            self.all_acked.set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def test_broker_restart_mid_stream_inbound(short_tmp: Path, broker: Mosquitto) -> None:
    n = 600
    async with bridge(short_tmp / "a", mqtt_section(broker, IN_SEQ)) as c:
        got: list[int] = []
        async with c.ctx.bus.subscribe("seq.in", "reliable") as sub:
            pub = await asyncio.to_thread(PahoPublisher, broker)
            try:
                job = asyncio.create_task(
                    asyncio.to_thread(pub.publish_all, "seq/in", list(range(n)), n // 3, broker)
                )
                while len(set(got)) < n:
                    got.append((await sub.get(30)).payload)
                await job
            finally:
                await asyncio.to_thread(pub.close)
        assert first_seen(got) == list(range(n))
        assert c.connects >= 2


async def test_outbox_survives_broker_outage_and_daemon_restart(
    short_tmp: Path, broker: Mosquitto
) -> None:
    n = 300
    with broker.sub("seq/out", "-c", "-i", "watcher") as w:
        await w.ready()
        async with running(short_tmp / "a", mqtt_section(broker, OUT_SEQ)) as host:
            c = await connected(host)
            await asyncio.to_thread(broker.stop)
            await wait_for(lambda: not c.connected)
            for i in range(n):
                await c.ctx.bus.publish("seq.out", i)
            await wait_for(lambda: len(c.outbox) == n)
            assert c.status().outbox_depth == n
        # the daemon stopped with the broker away: the outbox is in LMDB
        async with running(short_tmp / "a", mqtt_section(broker, OUT_SEQ)) as host:
            c = mqtt_of(host)
            assert len(c.outbox) == n
            await asyncio.to_thread(broker.start)
            await connected(host, 20)
            await wait_for(lambda: len(c.outbox) == 0, 30)
        lines = await w.wait_distinct(n, timeout=30)
        assert first_seen([int(line.split()[1]) for line in lines]) == list(range(n))


# --- bad input ---------------------------------------------------------------------------


async def test_unreachable_broker_logs_once_per_state_change(
    short_tmp: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    broker.stop()
    caplog.set_level(logging.INFO, logger="loomd.mqtt")
    async with running(short_tmp / "a", mqtt_section(broker, IN_TEMP)) as host:
        c = mqtt_of(host)
        await wait_for(lambda: c.attempts >= 4)
        assert c.state == "unreachable" and not c.connected
        assert c.errors["unreachable"] == 1
        await asyncio.to_thread(broker.start)
        await connected(host, 20)
    lines = [r.getMessage() for r in caplog.records if r.name == "loomd.mqtt"]
    assert sum("unreachable" in line for line in lines) == 1, lines
    assert sum(line.endswith(": connected") for line in lines) == 1, lines


async def test_wrong_password_is_refused_right_one_connects(short_tmp: Path) -> None:
    broker = Mosquitto(short_tmp / "broker", users={"loomd": "s3cret"})
    broker.start()
    try:
        pw = short_tmp / "pw"
        pw.write_text("wrong\n")
        section = mqtt_section(broker, IN_TEMP, username="loomd", password_file=str(pw))
        async with running(short_tmp / "a", section) as host:
            c = mqtt_of(host)
            await wait_for(lambda: c.attempts >= 2 and c.state == "refused")
            assert "authori" in c.detail.lower(), c.detail
            assert c.errors["refused"] == 1 and c.connects == 0
        pw.write_text("s3cret\n")
        async with running(short_tmp / "a", section) as host:
            await connected(host)
    finally:
        broker.stop()


async def test_the_password_from_a_systemd_credential_wins(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`password_credential`: $CREDENTIALS_DIRECTORY/<name> (LoadCredential=), read before
    `password_file` (wrong here), connects to a broker that wants the password."""
    broker = Mosquitto(short_tmp / "broker", users={"loomd": "s3cret"})
    broker.start()
    try:
        creds = short_tmp / "creds"
        creds.mkdir()
        (creds / "mqtt-password").write_text("s3cret\n")
        pw = short_tmp / "pw"
        pw.write_text("wrong\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        section = mqtt_section(broker, IN_TEMP, username="loomd", password_file=str(pw),
                               password_credential="mqtt-password")  # fmt: skip
        async with running(short_tmp / "a", section) as host:
            await connected(host)
        monkeypatch.delenv("CREDENTIALS_DIRECTORY")  # no credential: the file's (wrong) one
        async with running(short_tmp / "b", section) as host:
            c = mqtt_of(host)
            await wait_for(lambda: c.state == "refused")
    finally:
        broker.stop()


async def test_tls_checks_the_certificate_and_the_host_name(short_tmp: Path) -> None:
    broker = Mosquitto(short_tmp / "broker", tls=True)
    broker.start()
    try:
        ca = broker.certs / "ca.pem"
        good = mqtt_section(broker, IN_TEMP, tls=True, ca_file=str(ca), host="localhost")
        async with running(short_tmp / "a", good) as host:
            c = await connected(host)
            async with c.ctx.bus.subscribe("sensor.*.temp", "reliable") as sub:
                await asyncio.to_thread(
                    broker.pub, "sensors/x/temp", "1", 1, "--cafile", str(ca), "-h", "localhost"
                )
                assert (await sub.get(10)).payload == 1
        # the certificate names localhost, not 127.0.0.1: refused, no insecure fallback
        wrong_name = mqtt_section(broker, IN_TEMP, tls=True, ca_file=str(ca), host="127.0.0.1")
        async with running(short_tmp / "b", wrong_name) as host:
            c = mqtt_of(host)
            await wait_for(lambda: c.state == "tls error")
            assert "mismatch" in c.detail.lower() or "match" in c.detail.lower(), c.detail
        # a CA that did not sign the broker's certificate
        other = make_certs(short_tmp / "other")
        wrong_ca = mqtt_section(
            broker, IN_TEMP, tls=True, ca_file=str(other / "ca.pem"), host="localhost"
        )
        async with running(short_tmp / "c", wrong_ca) as host:
            c = mqtt_of(host)
            await wait_for(lambda: c.state == "tls error")
            assert "verif" in c.detail.lower() or "certificate" in c.detail.lower(), c.detail
    finally:
        broker.stop()


async def test_malformed_json_and_oversize_are_counted_reported_not_forwarded(
    short_tmp: Path, broker: Mosquitto
) -> None:
    section = mqtt_section(broker, IN_TEMP, max_payload_bytes=64)
    async with bridge(short_tmp / "a", section) as c:
        bus = c.ctx.bus
        async with (
            bus.subscribe("sensor.*.temp", "reliable") as sub,
            bus.subscribe("loomd.error", "reliable") as errors,
        ):
            await asyncio.to_thread(broker.pub, "sensors/a/temp", "{not json")
            await asyncio.to_thread(broker.pub, "sensors/b/temp", '"' + "x" * 100 + '"')
            await asyncio.to_thread(broker.pub, "sensors/c/temp", "20.5")
            ev = await sub.get(10)  # the good one, the bad two never reach the bus
            assert (ev.topic, ev.payload) == ("sensor.c.temp", 20.5)
            codes = {(await errors.get(10)).payload["code"] for _ in range(2)}
        assert codes == {"mqtt_bad_payload", "mqtt_oversize"}
        assert c.errors["bad_payload"] == 1 and c.errors["oversize"] == 1
        assert c.maps[0].in_count == 1 and c.maps[0].errors == 2


BOTH_ECHO = mqtt_map("both", "echo/#", "echo.#", qos=1, codec="text")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_both_mapping_does_not_loop(
    short_tmp: Path, broker: Mosquitto, protocol: str
) -> None:
    async with bridge(short_tmp / "a", mqtt_section(broker, BOTH_ECHO, protocol=protocol)) as c:
        bus = c.ctx.bus
        with broker.sub("echo/#") as w:
            await w.ready()
            async with bus.subscribe("echo.#", "reliable") as sub:
                await asyncio.to_thread(broker.pub, "echo/from/mqtt", "m1")
                ev = await sub.get(10)
                assert (ev.topic, ev.payload) == ("echo.from.mqtt", "m1")
                await bus.publish("echo.from.bus", "b1")
                assert (await sub.get(10)).payload == "b1"  # our own publish, locally
                # a sentinel from MQTT: anything looping would have arrived before it
                await asyncio.to_thread(broker.pub, "echo/sentinel", "s")
                rest = [(await sub.get(10)).payload]
                while rest[-1] != "s":
                    rest.append((await sub.get(10)).payload)
                assert rest == ["s"] if protocol == "5" else rest in (["s"], ["b1", "s"])
            lines = await w.wait(3)
            await asyncio.sleep(0.2)  # anything republished would follow within this
            assert sorted(w.lines) == ["echo/from/bus b1", "echo/from/mqtt m1", "echo/sentinel s"]
        if protocol == "3.1.1":
            # no noLocal in 3.1.1: our own b1 came back, carried the origin tag, went no further
            await wait_for(lambda: c.maps[0].looped >= 1)
        del lines
