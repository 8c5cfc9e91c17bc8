"""The bus server's own control operations (`hello`, `ping`, `sub`, `unsub`, `ack`, `bye`),
checked field by field: a client's control map is hostile until proven otherwise. Any other
op goes to the control handler (the host: `status`, `<component>.<op>`)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from loomd import __version__
from loomd.bus import wire
from loomd.bus.access import IdentityQuota
from loomd.bus.broker import Broker
from loomd.bus.conns import QuotaError
from loomd.bus.envelope import QOS_VALUES, QoS
from loomd.bus.session import Session
from loomd.bus.subscriber import Subscriber
from loomd.bus.topics import match_cost
from loomd.errors import LoomdError, ProtocolError

__all__ = ["CoreOps"]

MAX_WINDOW = 100_000  # the largest credit window a subscription may ask for
MAX_AGE_MS = 3_600_000
EVICTED_MEMORY_S = 60.0  # how long an eviction costs a client its say in back-pressure


class CoreOps:
    """`_op_<name>(session, msg) -> reply fields`, mixed into `BusServer` (which sets the
    attributes below and implements the methods it declares)."""

    broker: Broker
    boot_id: str
    credit_window: int
    max_frame_bytes: int
    max_subscriptions: int
    max_match_cost: int
    quota: IdentityQuota
    _ack_dirty: set[Session]
    _sub_session: dict[int, tuple[Session, int]]

    def refuse(self, quota: str) -> None:
        raise NotImplementedError

    def check_subscribe(self, session: Session, pattern: str) -> None:
        raise NotImplementedError

    def mark_dirty(self, sub: Subscriber) -> None:
        raise NotImplementedError

    def drop_session(self, session: Session) -> None:
        raise NotImplementedError

    def _drop_sub(self, session: Session, sub: Subscriber) -> None:
        raise NotImplementedError

    def _op_hello(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        secret = msg.get("secret")
        if secret is not None and (type(secret) is not bytes or not 16 <= len(secret) <= 64):
            raise ProtocolError("malformed control message", "'secret' must be 16..64 bytes")
        if session.secret is not None and secret != session.secret:
            # the session (its subscriptions, its ack count) belongs to whoever greeted first
            self.refuse("session_secret")
            raise LoomdError("this session belongs to another client (secret mismatch)")
        session.secret = secret
        session.name = str(msg.get("name") or "")[:64]
        # A (re)greeting client re-sends every unacked publish: count acks afresh.
        session.greeted = True
        session.pub_fifo = deque()
        session.pub_acked = 0
        session.pub_errors = []
        self._ack_dirty.discard(session)
        return {
            "boot_id": self.boot_id,
            "version": __version__,
            "session": session.number,
            "credit_window": self.credit_window,
            "max_frame_bytes": self.max_frame_bytes,
            "max_subscriptions": self.max_subscriptions,
        }

    def _op_ping(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "subs": len(session.subs)}

    def _op_sub(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        csid, pattern, qos = msg.get("sid"), msg.get("pattern"), msg.get("qos")
        after, window, max_age = msg.get("after"), msg.get("window"), msg.get("max_age_ms")
        if type(csid) is not int or not 1 <= csid <= wire.MAX_SID or type(pattern) is not str:
            raise ProtocolError(
                "malformed control message",
                f"sub needs an int 'sid' in 1..{wire.MAX_SID} and a string 'pattern'",
            )
        if qos is not None and qos not in QoS.__members__.values():  # no hash: any type
            raise LoomdError(f"unknown qos {qos!r}: expected realtime, batched or reliable")
        if after is not None and (type(after) is not int or not 0 <= after <= wire.MAX_I64):
            raise ProtocolError("malformed control message", "'after' must be an int >= 0")
        if window is not None and (type(window) is not int or not 1 <= window <= MAX_WINDOW):
            raise ProtocolError("malformed control message", f"'window' must be 1..{MAX_WINDOW}")
        if max_age is not None and (type(max_age) is not int or not 1 <= max_age <= MAX_AGE_MS):
            raise ProtocolError(
                "malformed control message", f"'max_age_ms' must be an int in 1..{MAX_AGE_MS}"
            )
        classes = msg.get("classes")
        if classes is not None and (
            type(classes) is not list
            or not 1 <= len(classes) <= len(QoS)
            or any(type(c) is not str or c not in QOS_VALUES for c in classes)
        ):
            raise ProtocolError(
                "malformed control message",
                "'classes' must be a list of realtime, batched, reliable",
            )
        self.check_subscribe(session, pattern)
        old = session.subs.pop(csid, None)
        if old is not None:
            self._drop_sub(session, old)
        if len(session.subs) >= self.max_subscriptions:
            self.refuse("subscriptions")
            raise QuotaError(
                f"subscription quota reached: {len(session.subs)} "
                f"(bus.max_subscriptions = {self.max_subscriptions})"
            )
        cost = match_cost(pattern)
        if session.match_cost + cost > self.max_match_cost:
            self.refuse("match_cost")
            raise QuotaError(
                f"matching cost quota reached: {session.match_cost} + {cost} for {pattern!r} "
                f"(bus.max_match_cost = {self.max_match_cost}; a '#' early in a long "
                "pattern costs the most)"
            )
        too_many = self.quota.sub_refused(session.caller.identity, cost)
        if too_many:  # many clients of one identity hold no more than one identity may
            self.refuse("subscriptions_per_identity")
            raise QuotaError(too_many)
        sub = self.broker.subscribe(
            pattern,
            qos,
            sink=session,
            owner=session.label,
            after_seq=after,
            budget=session.budget,
            max_age_ms=max_age,
            classes=None if classes is None else frozenset(classes),
            # a client evicted lately does not get to hold publishers back again
            holds=time.monotonic() - session.evicted_at > EVICTED_MEMORY_S,
        )
        session.subs[csid] = sub
        self._sub_session[sub.sid] = (session, csid)
        self.quota.sub_added(session.caller.identity, cost)
        session.match_cost += cost
        if sub.qos is QoS.RELIABLE:
            session.windows[sub.sid] = window or self.credit_window
            session.sent[sub.sid] = session.acked[sub.sid] = 0
        head = self.broker.journal.head if self.broker.journal is not None else 0
        return {"sid": csid, "qos": str(sub.qos), "head": head}

    def release_quota(self, session: Session, sub: Subscriber) -> None:
        cost = match_cost(sub.pattern)
        session.match_cost -= cost
        self.quota.sub_dropped(session.caller.identity, cost)

    def _op_unsub(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        sub = session.subs.pop(msg.get("sid"), None)  # type: ignore[arg-type]
        if sub is not None:
            self._drop_sub(session, sub)
        return {}

    def _op_ack(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        sub = session.subs.get(msg.get("sid"))  # type: ignore[arg-type]
        n = msg.get("n")
        if sub is not None and type(n) is int and 0 <= n <= session.sent.get(sub.sid, 0):
            if n > session.acked.get(sub.sid, 0):
                sub.progress_at = self.broker.clock()  # progress is what the consumer acks
            session.acked[sub.sid] = max(session.acked.get(sub.sid, 0), n)
            self.mark_dirty(sub)
        return {}

    def _op_bye(self, session: Session, msg: dict[str, Any]) -> dict[str, Any]:
        self.drop_session(session)
        return {}
