"""One connected client of the bus server: what it subscribed, what it was sent and acked,
its publishes awaiting their ack, and its budget of pending bytes."""

from __future__ import annotations

import errno
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from loomd.bus import wire
from loomd.bus.acl import Caller
from loomd.bus.subscriber import Budget, Subscriber
from loomd.bus.zmqio import send_frames

__all__ = ["CTL_BACKLOG_MAX", "INBOX_MAX_BYTES", "Session", "SessionOwner"]

# Control replies and acks held, in order, for a client whose pipe is full (it still gets
# every one once it reads); a client this far behind reads nothing and is dropped.
CTL_BACKLOG_MAX = 1024
INBOX_MAX_BYTES = 4 << 20  # frames put off per client; past it they run at once


class SessionOwner(Protocol):
    """What a session asks of the server that holds it (`BusServer`)."""

    pending_bytes: int

    def mark_dirty(self, sub: Subscriber) -> None: ...

    def mark_acks(self, session: Session) -> None: ...

    def on_evicted(self, session: Session, sub: Subscriber, reason: str) -> None: ...


class Session:
    """One connected client (SDK agent or loomctl), keyed by its ZeroMQ routing id."""

    def __init__(
        self,
        server: SessionOwner,
        sock: zmq.Socket[bytes],
        ident: bytes,
        number: int,
        caller: Caller,
    ) -> None:
        self.server = server
        self.caller = caller  # who it is (from the transport) and what it may do
        self.peer = ""  # the connection's Peer-Address (+ Curve key): `access.peer_of`
        self.sock = sock
        self.ident = ident  # assigned by libzmq per connection (clients may not choose one)
        self.number = number  # what status shows instead of the routing id
        self.secret: bytes | None = None  # from the first hello: later hellos must match
        self.budget = Budget(server.pending_bytes)
        self.evicted_at = -1e9  # when the broker last shed one of its subscriptions
        self.retry_s = 0.0  # current back-off while its pipe is full (0: not blocked)
        self.progressed = False  # a send to it went through in this flush round
        self.blocked_until = 0.0
        self.name = ""
        self.last_seen = time.monotonic()
        self.subs: dict[int, Subscriber] = {}  # client sid -> subscription
        self.match_cost = 0  # what its patterns add to matching every publish
        self.sent: dict[int, int] = {}  # daemon sid -> deliveries sent (reliable)
        self.acked: dict[int, int] = {}  # daemon sid -> deliveries acked (reliable)
        self.windows: dict[int, int] = {}
        self.pub_fifo: deque[list[Any]] = deque()  # reliable publishes awaiting their ack
        self.pub_acked = 0
        self.pub_errors: list[tuple[int, str]] = []
        self.alive = True
        self.greeted = False  # said hello to *this* daemon: its reliable acks count from there
        self.ctl_backlog: deque[dict[str, Any]] = deque()  # replies its full pipe refused
        self.inbox: deque[bytes] = deque()  # frames put off to a later pump round, in order
        self.inbox_bytes = 0

    # -- frames put off to a later pump round (the server's work slice was spent) ----------------
    def put_off(self, frames: list[bytes], *, first: bool = False) -> bool:
        """Keep `frames`, in order (at the head if `first`: the rest of a batch being run);
        False if that would hold more than INBOX_MAX_BYTES (memory stays bounded)."""
        size = sum(len(f) for f in frames)
        if self.inbox_bytes + size > INBOX_MAX_BYTES:
            return False
        if first:
            self.inbox.extendleft(reversed(frames))
        else:
            self.inbox.extend(frames)
        self.inbox_bytes += size
        return True

    def take_inbox(self) -> bytes:
        data = self.inbox.popleft()
        self.inbox_bytes -= len(data)
        return data

    # -- control replies ------------------------------------------------------------------------
    def send_control(self, msg: dict[str, Any]) -> str:
        """Send a control reply or ack: `sent`, `held` (the pipe is full: kept in order for
        `flush_control`), `overflow` (more than CTL_BACKLOG_MAX held) or `gone`."""
        if self.ctl_backlog:
            self._hold(msg)
            if len(self.ctl_backlog) > CTL_BACKLOG_MAX:
                return "overflow"
            return "sent" if self.flush_control() else "held"
        try:
            send_frames(self.sock, [self.ident, wire.pack_control(msg)])
        except zmq.Again:
            self._hold(msg)
            return "held"
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            return "gone"
        return "sent"

    def flush_control(self) -> bool:
        """Send what was held, in order, until the pipe is full again; True once all went."""
        while self.ctl_backlog:
            try:
                send_frames(self.sock, [self.ident, wire.pack_control(self.ctl_backlog[0])])
            except zmq.Again:
                return False
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                self.ctl_backlog.clear()  # the client is gone
                return True
            self.ctl_backlog.popleft()
        return True

    def _hold(self, msg: dict[str, Any]) -> None:
        last = self.ctl_backlog[-1] if self.ctl_backlog else None
        if last is not None and last.get("op") == msg.get("op") == "ack":  # acks add up
            errors = [*last.get("errors", ()), *msg.get("errors", ())]
            self.ctl_backlog[-1] = {**msg, **({"errors": errors} if errors else {})}
        else:
            self.ctl_backlog.append(msg)

    def wake(self, sub: Subscriber) -> None:
        self.server.mark_dirty(sub)

    def evicted(self, sub: Subscriber, reason: str) -> None:
        self.server.on_evicted(self, sub, reason)

    @property
    def label(self) -> str:
        return f"{self.name or 'client'}#{self.number}"

    def ack_callback(self) -> Callable[[str | None], None]:
        cell: list[Any] = [None, False]
        self.pub_fifo.append(cell)

        def done(err: str | None) -> None:
            cell[0], cell[1] = err, True
            self.server.mark_acks(self)

        return done

    def settled_ack(self) -> dict[str, Any] | None:
        """The `ack` control message for the reliable publishes settled, in order, since the
        last one (with the errors among them); None when no more are settled."""
        fifo, n0 = self.pub_fifo, self.pub_acked
        while fifo and fifo[0][1]:
            err = fifo.popleft()[0]
            self.pub_acked += 1
            if err is not None:
                self.pub_errors.append((self.pub_acked, err))
        if self.pub_acked == n0:
            return None
        msg: dict[str, Any] = {"op": "ack", "n": self.pub_acked}
        if self.pub_errors:
            msg["errors"], self.pub_errors = self.pub_errors, []
        return msg

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "identity": self.caller.label,
            "subscriptions": len(self.subs),
            "idle_s": round(time.monotonic() - self.last_seen, 1),
            "unacked_publishes": len(self.pub_fifo),
            "pending_bytes": self.budget.used,
        }
