"""`loomctl mqtt status|forget` and `loomctl keys show|init`."""

from __future__ import annotations

import dataclasses
from typing import Any

from loomd.cli import add_group, op

__all__ = ["add_mqtt_cli", "add_peers_cli"]


def add_mqtt_cli(cmds: Any) -> None:
    """`loomctl mqtt status|forget`."""
    add_group(cmds, "mqtt", "the MQTT bridge", {
        "status": "connection, outbox depth and age, per-map counts",
        "forget": "remove this board from Home Assistant (clear discovery)",
    }, _cli_mqtt)  # fmt: skip


async def _cli_mqtt(bus: Any, args: Any) -> int:
    from loomd.bridges.mqtt import MqttStatus

    if args.mqtt_cmd == "forget":
        r = await op(bus, "mqtt.forget")
        print(f"cleared {r['cleared']} Home Assistant discovery configs")
        return 0
    r = await op(bus, "mqtt.status")
    names = {f.name for f in dataclasses.fields(MqttStatus)}
    print("\n".join(MqttStatus(**{k: v for k, v in r.items() if k in names}).lines()))
    return 0


def add_peers_cli(cmds: Any) -> None:
    """`loomctl keys show|init`: this board's public key for other boards' peers.d."""
    add_group(cmds, "keys", "this board's Curve key for peer links", {
        "show": "print the public key",
        "init": "make the key pair if there is none; print the public key",
    }, _cli_keys)  # fmt: skip


async def _cli_keys(bus: Any, args: Any) -> int:
    r = await op(bus, "peers.key")
    print(r["public_key"])
    return 0
