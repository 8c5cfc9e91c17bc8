"""The MQTT bridge loses nothing the bus accepted when the daemon is killed before the event
reaches the outbox: a real daemon, a real mosquitto, SIGKILL while durable events are
acked by the bus but held out of the (full) outbox; after the restart every one of them
arrives at mosquitto_sub."""

from __future__ import annotations

import json
from pathlib import Path

from loomd.sdk import connect
from tests.bridges.conftest import Mosquitto, mqtt_section
from tests.conftest import LoomdProcess, loomctl, wait_until

N = 20
ROOM = 5  # outbox_max_messages: the rest wait in the journal


def _mqtt(d: LoomdProcess) -> dict[str, object]:
    p = loomctl(d, "status", "--json")
    if p.returncode != 0:
        return {}
    status = json.loads(p.stdout)["components"]["mqtt"]["status"]
    return dict(status or {})


async def test_killed_before_the_outbox_loses_nothing(short_tmp: Path, broker: Mosquitto) -> None:
    maps = '[[mqtt.map]]\ndirection = "out"\nmqtt = "out/+"\nbus = "action.out.*"\nqos = 1\n'
    (short_tmp / "d").mkdir()
    d = LoomdProcess(short_tmp / "d")
    d.write_config(
        mqtt_section(broker, maps, discovery=False, outbox_max_messages=ROOM)
        + '[bus]\ndurable = ["action.#"]\n'
    )
    broker.stop()  # nothing leaves the outbox: it fills, the rest is held in the journal
    try:
        d.start()
        async with connect(d.endpoint, name="publisher") as bus:
            for i in range(N):
                await bus.publish(f"action.out.m{i}", f"payload-{i}")  # acked: journaled
        st = wait_until(lambda: _mqtt(d).get("outbox_depth") == ROOM and _mqtt(d), 15, "full")
        assert st["outbox_overflow"] == 0, st  # held back, not dropped
        d.kill9()  # N - ROOM events the bus accepted are in no outbox
        broker.start()
        with broker.sub("out/+") as sub:
            await sub.ready()
            d.start()
            lines = await sub.wait_distinct(N, timeout=30)
        assert set(lines) == {f'out/m{i} "payload-{i}"' for i in range(N)}
        st = wait_until(lambda: _mqtt(d).get("outbox_depth") == 0 and _mqtt(d), 15, "drained")
        assert st["outbox_overflow"] == 0
    finally:
        d.close()
