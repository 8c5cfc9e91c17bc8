"""The `[bus]` section: sockets, frame and queue limits, QoS defaults, durable topics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from loomd.bus.acl import AclRule
from loomd.bus.envelope import QOS_CLASSES
from loomd.bus.topics import matches, validate_pattern
from loomd.config import (
    DIR_TEXT,
    IP_TEXT,
    MODE_TEXT,
    SOCKET_TEXT,
    Problem,
    Section,
    is_abs_or_auto,
    is_ip,
    is_octal_mode,
    is_socket_path,
    option,
)
from loomd.errors import ProtocolError

__all__ = ["BusSettings", "check_patterns", "check_qos_map", "pattern_problem"]


# Topic and QoS validation for any section that names topics (`option(check=...)`): the bus
# owns what a pattern and a QoS class are; config only knows how to report a Problem.
def pattern_problem(pattern: str) -> str | None:
    try:
        validate_pattern(pattern)
    except ProtocolError as exc:
        return f"a topic pattern ({exc.detail or exc.reason})"
    return None


def check_patterns(value: tuple[str, ...]) -> Problem | None:
    for i, pattern in enumerate(value):
        problem = pattern_problem(pattern)
        if problem is not None:
            return (f"[{i}]", pattern, problem)
    return None


def check_qos_map(value: Mapping[str, str]) -> Problem | None:
    for pattern, qos in value.items():
        problem = pattern_problem(pattern)
        if problem is not None:
            return (f'."{pattern}"', pattern, problem)
        if qos not in QOS_CLASSES:
            return (f'."{pattern}"', qos, "one of " + ", ".join(QOS_CLASSES))
    return None


@dataclass(frozen=True)
class BusSettings(Section):
    SECTION: ClassVar[str] = "bus"

    # "" means <runtime_dir>/bus.sock
    socket: str = option("", valid=is_socket_path, expected=SOCKET_TEXT)
    socket_mode: str = option("0660", valid=is_octal_mode, expected=MODE_TEXT)
    tcp_enabled: bool = option(False)
    tcp_bind: str = option("127.0.0.1", valid=is_ip, expected=IP_TEXT)
    tcp_port: int = option(7781, min=1, max=65535)
    tcp_auth: str = option("curve", choices=("curve", "none"))
    # "" means <state_dir>/curve: server.key / server.key_secret, and authorized/ with
    # the public keys of the clients that may connect over TCP
    tcp_keys_dir: str = option("")
    max_frame_bytes: int = option(1048576, min=1024, max=268435456)
    realtime_queue: int = option(1024, min=1, max=1000000, reload=True)
    realtime_policy: str = option(
        "drop_oldest", choices=("drop_oldest", "keep_latest"), reload=True
    )
    reliable_queue: int = option(4096, min=1, max=1000000, reload=True)
    credit_window: int = option(1024, min=1, max=100000)
    batch_max: int = option(100, min=1, max=100000, reload=True)
    batch_interval_ms: int = option(100, min=1, max=60000, reload=True)
    batch_budget: int = option(10000, min=1, max=10000000, reload=True)
    default_ttl: int = option(16, min=1, max=255, reload=True)
    client_timeout_s: float = option(15.0, min=1.0, max=3600.0, reload=True)
    slow_consumer_ms: int = option(500, min=10, max=600000, reload=True)
    max_hold_ms: int = option(50, min=10, max=600000, reload=True)
    client_pending_mb: int = option(16, min=1, max=65536, reload=True)
    max_subscriptions: int = option(256, min=1, max=1000000, reload=True)
    max_clients: int = option(1000, min=1, max=1000000)
    max_clients_per_uid: int = option(256, min=1, max=1000000)
    max_subscriptions_per_identity: int = option(1024, min=1, max=1000000, reload=True)
    # matching work a client's patterns may add to every publish (topics.match_cost)
    max_match_cost: int = option(16384, min=64, max=100000000, reload=True)
    max_match_cost_per_identity: int = option(65536, min=64, max=100000000, reload=True)
    durable: tuple[str, ...] = option(
        factory=lambda: ("control.#", "action.#"),
        check=check_patterns,
        expected="a list of topic patterns",
        reload=True,
    )
    default_qos: Mapping[str, str] = option(
        factory=lambda: MappingProxyType({}),
        check=check_qos_map,
        expected="a table of topic pattern = " + "|".join(QOS_CLASSES),
        reload=True,
    )

    # Who may do what (docs/design/acl.md): `[[acl]]` tables at the top of the file land
    # here; `acl_dir` ("" = acl.d/ beside the config file) adds one file of them per
    # application. Both reload on SIGHUP; the folder is also re-read when it changes.
    acl: tuple[AclRule, ...] = option(factory=tuple, reload=True)
    acl_dir: str = option("", valid=is_abs_or_auto, expected=DIR_TEXT, reload=True)

    @property
    def pending_bytes(self) -> int:
        return self.client_pending_mb * 1024 * 1024

    @property
    def socket_mode_int(self) -> int:
        return int(self.socket_mode, 8)

    def qos_for(self, topic: str) -> str | None:
        """The configured default QoS for `topic`: the first matching pattern, in file order."""
        for pattern, qos in self.default_qos.items():
            if matches(pattern, topic):
                return qos
        return None
