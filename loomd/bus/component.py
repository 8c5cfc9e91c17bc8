"""The `bus` component: the broker and its sockets, their status, metrics and rates."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomd.bus.acl import Acl, current_caller, read_acl_dir
from loomd.bus.broker import Broker
from loomd.bus.conns import CurveSetup, connection_cap, raise_nofile
from loomd.bus.server import BusServer
from loomd.bus.settings import BusSettings
from loomd.component import Command, Component, StatusBlock
from loomd.errors import LoomdError
from loomd.messages import ErrorCode
from loomd.metrics import Family, Histogram

__all__ = ["BusComponent", "BusStatus"]

log = logging.getLogger(__name__)
MAX_STATUS_SUBSCRIPTIONS = 100  # the deepest ones; the status reply stays small
ACCESS_POLL_S = 2.0  # how often acl.d/ and the authorized keys are looked at


@dataclass(frozen=True)
class BusStatus(StatusBlock):
    endpoints: list[str]
    clients: dict[str, dict[str, Any]]
    events_in: int
    events_out: int
    in_per_s: float
    out_per_s: float
    drops: dict[str, int]
    rejected: dict[str, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    topics: dict[str, dict[str, int]]
    subscriptions: list[dict[str, Any]]
    subscriptions_total: int = 0
    quotas: dict[str, int | str] | None = None  # the limits in force
    refused: dict[str, int] | None = None  # over-quota refusals, by quota
    shed: dict[str, int] | None = None  # slow consumers detached / evicted
    you: str = ""  # the identity of whoever asked (socket clients)
    acl: str = ""  # the rules in force

    def lines(self) -> list[str]:
        dropped = sum(self.drops.values())
        out = [
            *([f"you: {self.you}"] if self.you else []),
            f"acl: {self.acl or 'no rules (sensitive capabilities closed)'}",
            f"endpoints: {', '.join(self.endpoints)}",
            f"clients: {len(self.clients)}",
            f"events: {self.events_in} in, {self.events_out} out, {dropped} dropped; "
            f"now {self.in_per_s:.0f}/s in, {self.out_per_s:.0f}/s out"
            + (f" ({_pairs(self.drops)})" if dropped else ""),
            f"rejected: {sum(self.rejected.values())} frames"
            + (f" ({_pairs(self.rejected)})" if self.rejected else ""),
            f"latency: p50 {self.latency_p50_ms} ms, p99 {self.latency_p99_ms} ms",
        ]
        if self.quotas:
            out.append(f"quotas: {_pairs(self.quotas)}")
        if self.refused:
            out.append(f"refused: {_pairs(self.refused)}")
        if self.shed and any(self.shed.values()):
            out.append(f"slow consumers: {_pairs(self.shed)}")
        if self.topics:
            out.append("topics:")
            for name, t in sorted(self.topics.items(), key=lambda kv: -kv[1]["in"])[:20]:
                out.append(
                    f"  {name:40} in {t['in']:>9}  out {t['out']:>9}  dropped {t['dropped']}"
                )
        if self.subscriptions:
            out.append("subscriptions:")
            for s in self.subscriptions:
                out.append(
                    f"  {s['pattern']:30} {s['qos']:9} {s['owner'][:20]:20} depth {s['depth']:>6} "
                    f"delivered {s['delivered']:>9} dropped {sum(s['dropped'].values())}"
                )
        return out


def _pairs(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


class BusComponent(Component[BusSettings]):
    summary = "the event bus: ipc socket (and TCP), QoS classes, durable journal"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.broker: Broker | None = None
        self.server: BusServer | None = None
        self.latency = Histogram()
        self.rate_in = 0.0
        self.rate_out = 0.0
        self.nofile = (0, 0)
        self.curve: CurveSetup | None = None
        self._acl_seen: tuple[tuple[str, float], ...] = ()

    async def start(self) -> None:
        state = self.ctx.services.state
        if state is None:
            raise LoomdError("the bus needs the state component (its journal) to start first")
        s = self.settings
        # Before any socket exists: libzmq aborts the process on EMFILE, so take the hard
        # limit and keep the connection cap well below it.
        self.nofile = raise_nofile()
        max_clients = connection_cap(s.max_clients, self.nofile[0])
        if max_clients < s.max_clients:
            log.warning(
                "bus.max_clients %d lowered to %d: the open-files limit is %d",
                s.max_clients,
                max_clients,
                self.nofile[0],
            )
        self.broker = Broker(s, state.journal)
        self.broker.acl = self._read_acl(s)
        endpoints = [f"ipc://{self.ctx.services.bus_socket}"]
        if s.tcp_enabled:
            endpoints.append(f"tcp://{s.tcp_bind}:{s.tcp_port}")
            if s.tcp_auth == "none":
                log.warning(
                    'bus TCP endpoint %s:%d has NO authentication (bus.tcp_auth = "none"): '
                    "anyone who can reach it may publish, subscribe and write state",
                    s.tcp_bind,
                    s.tcp_port,
                )
            else:
                keys = Path(s.tcp_keys_dir) if s.tcp_keys_dir else self.ctx.state_dir / "curve"
                self.curve = CurveSetup(keys)
        self.server = BusServer(
            self.broker,
            endpoints,
            max_frame_bytes=s.max_frame_bytes,
            socket_mode=s.socket_mode_int,
            client_timeout_s=s.client_timeout_s,
            credit_window=s.credit_window,
            max_subscriptions=s.max_subscriptions,
            max_clients=max_clients,
            max_clients_per_uid=min(s.max_clients_per_uid, max_clients),
            max_subscriptions_per_identity=s.max_subscriptions_per_identity,
            max_match_cost=(s.max_match_cost, s.max_match_cost_per_identity),
            pending_bytes=s.pending_bytes,
            curve=self.curve,
            control=self.ctx.services.control,
            acl=self.broker.acl,
        )
        self.server.latency = self._observe_latency
        if self.curve is not None:
            self.curve.start(self.server.ctx)
        try:
            await self.server.__aenter__()
        except BaseException:
            if self.curve is not None:
                self.curve.stop()
            raise
        self.ctx.services.broker = self.broker
        self.spawn(self._rates, "rates")
        self.spawn(self._watch_access, "access", restart=True)

    async def stop_intake(self) -> None:
        if self.server is not None:
            self.server.stop_intake()

    def pending(self) -> int:
        b = self.broker
        if b is None:
            return 0
        return sum(sub.pending() for sub in b.subscriptions() if sub.sink is not None)

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.__aexit__(None, None, None)
        if self.curve is not None:
            self.curve.stop()
            self.curve = None
        self.ctx.services.broker = None

    async def reload(self, new: BusSettings) -> list[str]:
        acl = self._read_acl(new)  # a bad acl.d file raises: the old rules stay in force
        self.ctx.settings = new
        self._apply_acl(acl)
        if self.curve is not None:
            self.curve.refresh()
        if self.broker is not None:
            self.broker.reconfigure(new)
        if self.server is not None:
            srv = self.server
            srv.client_timeout_s = new.client_timeout_s
            srv.max_subscriptions = new.max_subscriptions
            srv.quota.max_subs = new.max_subscriptions_per_identity
            srv.max_match_cost = new.max_match_cost
            srv.quota.max_cost = new.max_match_cost_per_identity
            srv.pending_bytes = new.pending_bytes  # new sessions; live ones keep theirs
        return []

    # -- who may do what ------------------------------------------------------------------------
    def acl_dir(self, s: BusSettings) -> Path:
        if s.acl_dir:
            return Path(s.acl_dir)
        return Path("/etc/loomd/acl.d") if os.geteuid() == 0 else self.ctx.state_dir / "acl.d"

    def _acl_files(self, s: BusSettings) -> tuple[tuple[str, float], ...]:
        folder = self.acl_dir(s)
        try:
            return tuple((p.name, p.stat().st_mtime) for p in sorted(folder.glob("*.toml")))
        except OSError:
            return ()

    def _read_acl(self, s: BusSettings) -> Acl:
        self._acl_seen = self._acl_files(s)
        rules = (*s.acl, *read_acl_dir(self.acl_dir(s)))
        acl = Acl(
            rules, f"{len(s.acl)} [[acl]] rules, {len(rules) - len(s.acl)} in {self.acl_dir(s)}"
        )
        log.info(
            "bus ACL: %s",
            acl.source if acl.configured else "no rules (sensitive capabilities closed)",
        )
        return acl

    def _apply_acl(self, acl: Acl) -> None:
        if self.broker is not None:
            self.broker.acl = acl
        if self.server is not None:
            self.server.set_acl(acl)

    async def _watch_access(self) -> None:
        """Pick up a changed `acl.d/` folder and `authorized/` keys without a SIGHUP."""
        while True:
            await asyncio.sleep(ACCESS_POLL_S)
            if self._acl_files(self.settings) != self._acl_seen:
                try:
                    self._apply_acl(self._read_acl(self.settings))
                except LoomdError as exc:
                    self.ctx.error(ErrorCode.CONFIG, f"acl.d not applied, old rules kept: {exc}")
            if self.curve is not None:
                self.curve.refresh()

    def _observe_latency(self, ns: int) -> None:
        self.latency.observe(ns / 1e9)

    async def _rates(self) -> None:
        """Once a second: events in/out per second, a moving average over ~5 s."""
        assert self.broker is not None
        b, last_in, last_out = self.broker, self.broker.events_in, self.broker.events_out
        while True:
            await asyncio.sleep(1.0)
            self.rate_in += 0.2 * ((b.events_in - last_in) - self.rate_in)
            self.rate_out += 0.2 * ((b.events_out - last_out) - self.rate_out)
            last_in, last_out = b.events_in, b.events_out

    # -- the operator's view ------------------------------------------------------------------
    def summary_line(self) -> str:
        b, srv = self.broker, self.server
        if b is None or srv is None:
            return "bus starting"
        return (
            f"{len(srv.sessions)} clients, {len(list(b.subscriptions()))} subscriptions, "
            f"{b.events_in} events in ({self.rate_in:.0f}/s), {sum(b.drops.values())} dropped"
        )

    def commands(self) -> Mapping[str, Command]:
        return {
            "listeners": Command(self._cmd_listeners, "subscriptions a topic reaches", ("topic",)),
            "stats": Command(self._cmd_stats, "counters and every subscription"),
        }

    def _live(self) -> Broker:
        if self.broker is None:
            raise LoomdError("the bus is not running")
        return self.broker

    async def _cmd_listeners(self, topic: Any) -> dict[str, Any]:
        return {"topic": str(topic), "listeners": self._live().listeners(str(topic))}

    async def _cmd_stats(self) -> dict[str, Any]:
        return {"stats": self._live().summary().to_payload()}

    def status(self) -> BusStatus | None:
        b, srv = self.broker, self.server
        if b is None or srv is None:
            return None
        st = b.stats()
        lat = self.latency
        asking = current_caller()  # None in process: the daemon's own parts see everything
        everyone = asking is None or asking.identity.superuser
        mine = {s.label for s in srv.sessions.values() if everyone or s.caller is asking}
        if not everyone:  # other clients' labels, names and identities only to root
            for sub in st["subscriptions"]:
                if sub["owner"] not in mine:
                    sub["owner"] = "(another client)"
        return BusStatus(
            you=asking.label if asking is not None else "",
            acl=b.acl.source if b.acl.configured else "",
            endpoints=srv.bound,
            # by session number: routing ids are nobody's business (and unusable anyway)
            clients={s.label: s.info() for s in srv.sessions.values() if s.label in mine},
            events_in=st["events_in"],
            events_out=st["events_out"],
            in_per_s=round(self.rate_in, 1),
            out_per_s=round(self.rate_out, 1),
            drops=st["drops"],
            rejected=st["rejected"],
            latency_p50_ms=round(lat.quantile(0.5) * 1000, 3) if lat.count else None,
            latency_p99_ms=round(lat.quantile(0.99) * 1000, 3) if lat.count else None,
            topics=st["topics"],
            subscriptions=sorted(st["subscriptions"], key=lambda x: -x["depth"])[
                :MAX_STATUS_SUBSCRIPTIONS
            ],
            subscriptions_total=len(st["subscriptions"]),
            quotas={
                "max_clients": srv.conns.max_clients,
                "max_clients_per_uid": srv.conns.max_per_uid,
                "max_subscriptions": srv.max_subscriptions,
                "max_subscriptions_per_identity": srv.quota.max_subs,
                "max_match_cost": srv.max_match_cost,
                "max_match_cost_per_identity": srv.quota.max_cost,
                "client_pending_bytes": srv.pending_bytes,
                "max_frame_bytes": srv.max_frame_bytes,
                "slow_consumer_ms": self.settings.slow_consumer_ms,
                "open_files_limit": self.nofile[0],
                "tcp_auth": self.settings.tcp_auth if self.settings.tcp_enabled else "off",
            },
            refused=dict(srv.refused),
            shed=dict(b.shed_counts),
        )

    def metrics(self) -> Iterable[Family]:
        b, srv = self.broker, self.server
        if b is None or srv is None:
            return
        qos_out: dict[str, float] = {}
        qos_drop: dict[str, float] = {}
        depth: list[tuple[dict[str, str], float]] = []
        for sub in b.subscriptions():
            q = str(sub.qos)
            qos_out[q] = qos_out.get(q, 0) + sub.stats.delivered
            qos_drop[q] = qos_drop.get(q, 0) + sum(sub.stats.dropped.values())
            depth.append(({"sid": str(sub.sid), "pattern": sub.pattern, "qos": q}, sub.depth()))
        yield Family(
            "loomd_bus_events_in_total",
            "counter",
            "Events published into the bus.",
            [({}, float(b.events_in))],
        )
        yield Family(
            "loomd_bus_events_out_total",
            "counter",
            "Events delivered, by subscription QoS class.",
            [({"qos": q}, v) for q, v in qos_out.items()],
        )
        yield Family(
            "loomd_bus_events_dropped_total",
            "counter",
            "Events dropped, by reason.",
            [({"reason": r}, float(v)) for r, v in b.drops.items()],
        )
        yield Family(
            "loomd_bus_subscription_dropped_total",
            "counter",
            "Events dropped, by subscription QoS class.",
            [({"qos": q}, v) for q, v in qos_drop.items()],
        )
        yield Family(
            "loomd_bus_frames_rejected_total",
            "counter",
            "Malformed frames rejected, by reason.",
            [({"reason": r}, float(v)) for r, v in b.rejected.items()],
        )
        yield Family("loomd_bus_queue_depth", "gauge", "Events queued per subscription.", depth)
        yield Family(
            "loomd_bus_clients",
            "gauge",
            "Connected socket clients.",
            [({}, float(len(srv.sessions)))],
        )
        yield Family(
            "loomd_bus_publish_deliver_seconds",
            "histogram",
            "Latency from publish (header ts) to hand-off to a socket subscriber.",
            [({}, self.latency)],
        )
