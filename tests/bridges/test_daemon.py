"""The bridges in a real daemon process, driven with loomctl; and a fleet on one broker."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from loomd.bridges.peers import load_or_make_keys
from tests.bridges.conftest import Mosquitto, connected, mqtt_section, running, wait_for
from tests.conftest import LoomdProcess, loomctl


def test_loomctl_mqtt_status_forget_and_keys_show(short_tmp: Path, broker: Mosquitto) -> None:
    maps = '[[mqtt.map]]\nmqtt = "sensors/+/temp"\nbus = "sensor.*.temp"\n'
    peers = "[peers]\nenabled = true\n"
    (short_tmp / "d").mkdir()
    d = LoomdProcess(short_tmp / "d")
    d.write_config(mqtt_section(broker, maps) + peers)
    try:
        d.start()
        deadline = time.monotonic() + 15
        while "connected 127.0.0.1" not in (out := loomctl(d, "mqtt", "status").stdout):
            assert time.monotonic() < deadline, out
            time.sleep(0.1)
        assert "outbox 0" in out and "map sensors/+/temp -> sensor.*.temp" in out
        r = loomctl(d, "mqtt", "forget")
        assert r.returncode == 0 and "cleared 8" in r.stdout, r.stderr
        key = loomctl(d, "keys", "show").stdout.strip()
        assert key == load_or_make_keys(short_tmp / "d" / "state" / "peers")[0].decode()
        mode = (short_tmp / "d" / "state" / "peers" / "curve.secret").stat().st_mode & 0o777
        assert mode == 0o600
    finally:
        d.close()


async def test_twenty_boards_on_one_broker(short_tmp: Path, broker: Mosquitto) -> None:
    """The fleet shape: every board announces itself and hears every other board."""
    n = 20
    maps = (
        '[[mqtt.map]]\ndirection = "out"\nmqtt = "fleet/+/hello"\nbus = "hello.*"\n'
        '[[mqtt.map]]\ndirection = "in"\nmqtt = "fleet/+/hello"\nbus = "heard.*"\n'
    )
    section = mqtt_section(broker, maps, discovery=False)
    async with contextlib.AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(running(short_tmp / f"b{i}", section, f"board{i}"))
            for i in range(n)
        ]
        comps = [await connected(h, 30) for h in hosts]
        subs = [await stack.enter_async_context(c.ctx.bus.subscribe("heard.*", "reliable"))
                for c in comps]  # fmt: skip
        for i, c in enumerate(comps):
            await c.ctx.bus.publish(f"hello.board{i}", i)
        for i, sub in enumerate(subs):
            # MQTT 5 noLocal: a board does not hear its own hello back from the broker
            heard = {(await sub.get(30)).payload for _ in range(n - 1)}
            assert heard == set(range(n)) - {i}
        await wait_for(lambda: all(len(c.outbox) == 0 for c in comps), 30)
