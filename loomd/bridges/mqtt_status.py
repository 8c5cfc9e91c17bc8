"""The MQTT bridge's operator view: per-mapping counters, the status block, the metrics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loomd.bridges.outbox import Outbox
from loomd.bridges.settings import MapSettings
from loomd.bridges.topics import Translator
from loomd.component import StatusBlock
from loomd.metrics import Family

__all__ = ["MapState", "MqttStatus", "families"]


@dataclass
class MapState:
    index: int
    s: MapSettings
    tr: Translator
    in_count: int = 0
    out_count: int = 0
    errors: int = 0
    looped: int = 0
    forwarding: bool = False  # its bus -> MQTT task ran (a restart resubscribes)
    out_cache: dict[str, str | None] = field(default_factory=dict)  # bus topic -> MQTT topic

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


def families(
    connected: bool, connects: int, outbox: Outbox, inflight: int, maps: list[MapState],
    errors: dict[str, int],
) -> Iterable[Family]:  # fmt: skip
    """The `loomd_mqtt_*` metric families."""

    def one(name: str, kind: str, help: str, value: float) -> Family:
        return Family(f"loomd_mqtt_{name}", kind, help, [({}, float(value))])

    yield one("connected", "gauge", "1 while connected to the broker.", connected)
    yield one("connects_total", "counter", "Successful connections.", connects)
    yield one("outbox_depth", "gauge", "Messages in the outbox.", len(outbox))
    yield one("outbox_oldest_seconds", "gauge", "Age of the oldest.", outbox.oldest_age_s())
    yield one("outbox_overflow_total", "counter", "Refused: outbox full.", outbox.overflow)
    yield one("outbox_expired_total", "counter", "Expired unsent.", outbox.expired)
    yield one("inflight", "gauge", "Published, not yet acknowledged.", inflight)
    yield one(
        "outbox_write_errors_total", "counter", "LMDB writes that failed.",
        outbox.write_errors,
    )  # fmt: skip
    yield Family(
        "loomd_mqtt_messages_total",
        "counter",
        "Messages carried, per mapping and direction.",
        [({"map": str(m.index), "dir": "in"}, float(m.in_count)) for m in maps]
        + [({"map": str(m.index), "dir": "out"}, float(m.out_count)) for m in maps],
    )
    yield Family(
        "loomd_mqtt_errors_total",
        "counter",
        "Errors by kind.",
        [({"kind": k}, float(v)) for k, v in sorted(errors.items())],
    )
