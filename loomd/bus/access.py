"""The bus server's door: a new session gets its identity from the transport (never from
the client), its grants from the ACL in force, and a refusal (forbidden, or a bad frame)
is one clear answer.

Mixed into `BusServer`, like `CoreOps`."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from typing import Any, cast

import zmq

from loomd.bus import wire
from loomd.bus.acl import Acl, Caller, Forbidden
from loomd.bus.broker import Broker
from loomd.bus.conns import ConnectionGuard, CurveSetup
from loomd.bus.envelope import QoS, peek_qos
from loomd.bus.identity import Identity, IdentityKind
from loomd.bus.session import Session, SessionOwner
from loomd.bus.topics import validate_pattern
from loomd.bus.zmqio import send_frames
from loomd.errors import ProtocolError
from loomd.messages import ErrorCode

__all__ = ["AccessOps", "IdentityQuota", "identify", "peer_of", "seed_routing_ids"]

log = logging.getLogger(__name__)


def identify(frame: Any, unix: bool, curve_names: dict[str, str] | None) -> Identity:
    """The identity of the peer that sent `frame` (a `zmq.Frame` with libzmq's metadata).

    On the unix socket libzmq appends `:uid:gid:pid` from SO_PEERCRED to `Peer-Address`;
    over Curve the ZAP handler's answer is the frame's `User-Id` (the key's file name)."""
    if unix:
        try:
            parts = str(frame.get("Peer-Address")).rsplit(":", 3)
            return Identity.unix(int(parts[1]), int(parts[2]))
        except (zmq.ZMQError, ValueError, IndexError):
            log.warning("no peer credentials on a unix connection: treated as nobody")
            return Identity(IdentityKind.ANONYMOUS, "unix-unknown")
    if curve_names is not None:
        try:
            user = str(frame.get("User-Id"))
        except zmq.ZMQError:
            user = ""
        return Identity(IdentityKind.CURVE, curve_names.get(user, user) or "unknown")
    try:
        addr = str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        addr = "?"
    return Identity(IdentityKind.ANONYMOUS, f"tcp:{addr}")


def peer_of(frame: Any) -> str:
    """What ties a session to its connection: `Peer-Address` (with `:uid:gid:pid` on the
    unix socket) and, over Curve, the key (`User-Id`)."""
    if frame is None:
        return ""
    out = []
    for prop in ("Peer-Address", "User-Id"):
        try:
            out.append(str(frame.get(prop)))
        except zmq.ZMQError:
            out.append("")
    return "|".join(out)


def seed_routing_ids() -> None:
    """libzmq numbers a ROUTER's peers from C `rand()`, which nothing seeds: the ids were
    the same in every run, so a client could predict (and take) the next ones. Seeded from
    the kernel's random source before any ROUTER exists, the start is unguessable."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    except (OSError, AttributeError) as exc:
        log.warning("could not seed routing ids (they stay predictable): %s", exc)


class IdentityQuota:
    """Quotas per identity, not per client: 250 clients of one uid, each within its own
    256 subscriptions, held 64k (+259 MB). Superusers are not counted (the attacker is a
    local client without rights; root can stop the daemon anyway)."""

    def __init__(self, max_sessions: int, max_subs: int, max_cost: int = 65536) -> None:
        self.max_sessions = max_sessions
        self.max_subs = max_subs
        self.max_cost = max_cost
        self.sessions: dict[Identity, int] = {}
        self.subs: dict[Identity, int] = {}
        self.costs: dict[Identity, int] = {}

    def session_refused(self, who: Identity) -> str:
        """Why a new session of `who` is refused ("" if it is not); counts it if not."""
        if who.superuser:
            return ""
        n = self.sessions.get(who, 0)
        if n >= self.max_sessions:
            return f"too many clients of {who.label}: {n} (bus.max_clients_per_uid)"
        self.sessions[who] = n + 1
        return ""

    def session_dropped(self, who: Identity) -> None:
        _down(self.sessions, who)

    def sub_refused(self, who: Identity, cost: int = 0) -> str:
        if who.superuser:
            return ""
        n = self.subs.get(who, 0)
        if n >= self.max_subs:
            return (
                f"subscription quota of {who.label} reached: {n} across its clients "
                f"(bus.max_subscriptions_per_identity = {self.max_subs})"
            )
        held = self.costs.get(who, 0)
        if held + cost > self.max_cost:
            return (
                f"matching cost quota of {who.label} reached: {held} + {cost} across its "
                f"clients (bus.max_match_cost_per_identity = {self.max_cost})"
            )
        return ""

    def sub_added(self, who: Identity, cost: int = 0) -> None:
        if not who.superuser:
            self.subs[who] = self.subs.get(who, 0) + 1
            self.costs[who] = self.costs.get(who, 0) + cost

    def sub_dropped(self, who: Identity, cost: int = 0) -> None:
        if not who.superuser:
            _down(self.subs, who)
            _down(self.costs, who, cost)


def _down(counts: dict[Identity, int], who: Identity, by: int = 1) -> None:
    n = counts.get(who, 0) - by
    if n > 0:
        counts[who] = n
    else:
        counts.pop(who, None)


class AccessOps:
    """`acl`, `caller_for`, `forbid`; `BusServer` sets `acl` and `broker`."""

    acl: Acl
    broker: Broker
    max_frame_bytes: int
    sessions: dict[bytes, Session]
    refused: dict[str, int]
    quota: IdentityQuota
    conns: ConnectionGuard
    curve: CurveSetup | None
    _unix: set[int]
    _numbers: Iterator[int]

    def refuse(self, quota: str) -> None:
        raise NotImplementedError

    def _reply(self, session: Session, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def set_acl(self, acl: Acl) -> None:
        """New rules: every live session gets its grants again at once (the next publish,
        subscribe or call is judged by them; existing subscriptions the new rules no longer
        allow are closed)."""
        self.acl = acl
        for session in list(self.sessions.values()):
            session.caller = acl.caller(session.caller.identity)
            for csid, sub in list(session.subs.items()):
                if not session.caller.grants.may_subscribe(sub.pattern):
                    self.unsubscribe_forbidden(session, csid)

    def unsubscribe_forbidden(self, session: Session, csid: int) -> None:
        raise NotImplementedError

    def same_peer(self, session: Session, frame: Any) -> bool:
        """False (and the frame refused) when another connection presents this session's
        routing id: it gets neither the session's subscriptions nor its grants."""
        if frame is None or not session.peer or peer_of(frame) == session.peer:
            return True
        self.refused["session_peer"] = self.refused.get("session_peer", 0) + 1
        self.broker.count_rejected("session taken over")
        self.broker.error(ErrorCode.PROTOCOL, f"a connection presented {session.label}'s id")
        why = "this routing id belongs to another connection"
        self._reply(session, {"rid": None, "ok": False, "code": "protocol", "error": why})
        return False

    def caller_for(self, identity: Identity) -> Caller:
        return self.acl.caller(identity)

    def forbid(self, session: Session, what: str, rid: Any = None, *, reply: bool = True) -> None:
        """Count it, say so on `loomd.error` (rate limited) and answer the client."""
        self.refused["forbidden"] = self.refused.get("forbidden", 0) + 1
        text = f"forbidden: {session.caller.label} ({session.label}) may not {what}"
        self.broker.error(ErrorCode.FORBIDDEN, text, client=session.label)
        log.debug("%s", text)
        if reply:
            self._reply(session, {"rid": rid, "ok": False, "code": "forbidden", "error": text})

    def forbid_event(self, session: Session, topic: str, header: bytes) -> None:
        """A publish no rule allows: refused whole; a reliable one fails its ack too, so
        the publisher's `publish()` raises and the acks after it stay in step."""
        if session.greeted and peek_qos(header) == QoS.RELIABLE:
            # its ack carries the refusal; no reply besides: a flood of replies filled the
            # client's pipe (100 messages) and the acks behind them were lost
            self.forbid(session, f"publish on {topic!r}", reply=False)
            session.ack_callback()("forbidden")
        else:
            self.forbid(session, f"publish on {topic!r}")

    def check_control(self, session: Session, op: str, rid: Any) -> bool:
        if op in ("status", "commands") or session.caller.grants.may_control(op):
            return True
        self.forbid(session, f"run {op!r}", rid)
        return False

    def check_subscribe(self, session: Session, pattern: Any) -> None:
        if not isinstance(pattern, str):
            return  # the op's own check answers that
        validate_pattern(pattern)
        if not session.caller.grants.may_subscribe(pattern):
            self.forbid(session, f"subscribe to {pattern!r}", reply=False)
            raise Forbidden(f"forbidden: {session.caller.label} may not subscribe to {pattern!r}")

    @staticmethod
    def _send(sock: zmq.Socket[bytes], ident: bytes, msg: dict[str, Any]) -> None:
        try:
            send_frames(sock, [ident, wire.pack_control(msg)])
        except zmq.ZMQError as exc:
            log.debug("reply to %s lost: %s", ident.hex(), exc)

    def _new_session(self, sock: zmq.Socket[bytes], ident: bytes, first: Any) -> Session | None:
        if not ident or ident[0] != 0:
            # libzmq's own ids start with a zero byte and a client cannot choose one that
            # does: so a client-chosen id (which another client could squat) is refused.
            self.refuse("client_chosen_id")
            self.broker.count_rejected("client-chosen routing id")
            self._send(
                sock,
                ident,
                {
                    "rid": None,
                    "ok": False,
                    "code": "protocol",
                    "error": "client-chosen routing ids are not accepted: leave ZMQ_IDENTITY unset",
                },
            )
            return None
        if len(self.sessions) >= self.conns.max_clients:
            self.refuse("clients")
            self._send(
                sock,
                ident,
                {
                    "rid": None,
                    "ok": False,
                    "code": "quota",
                    "error": f"too many clients ({len(self.sessions)})",
                },
            )
            return None
        curve = self.curve.names if self.curve is not None else None
        identity = identify(first, id(sock) in self._unix, curve)
        too_many = self.quota.session_refused(identity)
        if too_many:
            self.refuse("clients_per_identity")
            self._send(sock, ident, {"rid": None, "ok": False, "code": "quota", "error": too_many})
            return None
        number = next(self._numbers)
        owner = cast(SessionOwner, self)  # the BusServer this is mixed into
        session = Session(owner, sock, ident, number, self.acl.caller(identity))
        session.peer = peer_of(first)
        self.sessions[ident] = session
        return session

    # -- refusals of bad frames ---------------------------------------------------------------
    def _reject(self, session: Session, exc: ProtocolError, rid: Any = None) -> None:
        self.broker.count_rejected(exc.reason)
        self.broker.error(ErrorCode.PROTOCOL, str(exc), client=session.label)
        log.debug("rejected frame from %s: %s", session.label, exc)
        self._reply(session, {"rid": rid, "ok": False, "code": "protocol", "error": str(exc)})

    def _too_large(self, session: Session, data: bytes) -> None:
        exc = ProtocolError(
            "frame too large", f"{len(data)} bytes > bus.max_frame_bytes {self.max_frame_bytes}"
        )
        kind = data[0]
        if kind == wire.EVENT:
            self._reject_event(session, data, exc)
        elif kind == wire.BATCH and session.greeted:
            # keep the ack count in step: each reliable event in it is refused on its own
            try:
                items = wire.unpack_batch(data)
            except ProtocolError:
                items = []
            for item in items:
                if item[0] == wire.EVENT:
                    self._reject_event(session, item, exc)
        else:
            self._reject(session, exc)

    def _reject_event(self, session: Session, data: bytes, exc: ProtocolError) -> None:
        """A refused event. If it asked to be reliable it still takes its place in the
        client's ack count, as an error: so the publish that caused it fails, and the acks
        of the ones after it stay in step (an ack must only ever mean durable)."""
        self._reject(session, exc)
        if not session.greeted:
            return
        try:
            header = wire.unpack_event(data)[1]
        except ProtocolError:
            return
        if peek_qos(header) == QoS.RELIABLE:
            session.ack_callback()(exc.reason.replace(" ", "_"))
