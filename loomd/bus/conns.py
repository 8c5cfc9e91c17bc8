"""Connections: the file-descriptor limit, a cap on connections below it, CurveZMQ on TCP.

libzmq accepts every connection a listening socket gets and aborts the process when
accept() fails with EMFILE. So the daemon raises its soft RLIMIT_NOFILE to the hard one,
and watches each ROUTER with a monitor socket: a connection accepted past the cap (in
total, or per peer uid on the unix socket) is shut down at once (`shutdown(2)` on the
accepted descriptor: libzmq sees the peer gone and closes it itself), so libzmq never
comes near the limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from loomd.errors import LoomdError
from loomd.messages import ErrorCode

if TYPE_CHECKING:
    from loomd.bus.server import BusServer

log = logging.getLogger(__name__)

__all__ = ["ConnectionGuard", "CurveSetup", "QuotaError", "raise_nofile"]

ZAP_DOMAIN = "loomd"
FD_RESERVE = 64  # descriptors kept free for LMDB, logs, sd_notify, the metrics server
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class QuotaError(LoomdError):
    """A client went over one of its quotas (subscriptions, state bytes, connections)."""

    code = "quota"


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
        log.warning("could not raise the open-files limit to %d: %s", target, exc)
        return soft, hard
    return target, hard


def connection_cap(wanted: int, soft_limit: int) -> int:
    """At most `wanted`, and always well below the descriptor limit."""
    return max(8, min(wanted, (soft_limit - FD_RESERVE) // 2))


class ConnectionGuard:
    """Counts accepted connections per listening socket (via libzmq monitor events) and
    shuts down those over the caps."""

    def __init__(self, server: BusServer, max_clients: int, max_per_uid: int) -> None:
        self.server = server
        self.max_clients = max_clients
        self.max_per_uid = max_per_uid
        self.open: dict[int, int] = {}  # accepted fd -> uid (-1 when not a unix peer)
        self.per_uid: dict[int, int] = {}
        self.refused = 0
        self._monitors: dict[int, tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] = {}

    def watch(self, sock: zmq.Socket[bytes]) -> None:
        mon = sock.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
        )
        fd = int(mon.getsockopt(zmq.FD))
        self._monitors[id(sock)] = (sock, mon)
        self.server.loop.add_reader(fd, self._drain, mon)
        self._drain(mon)

    def unwatch(self, sock: zmq.Socket[bytes]) -> None:
        entry = self._monitors.pop(id(sock), None)
        if entry is None:
            return
        _, mon = entry
        with contextlib.suppress(ValueError, OSError, zmq.ZMQError):
            self.server.loop.remove_reader(int(mon.getsockopt(zmq.FD)))
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        mon.close(linger=0)

    def close(self) -> None:
        for sock, _ in list(self._monitors.values()):
            self.unwatch(sock)

    def _drain(self, mon: zmq.Socket[bytes]) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                msg: Any = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            event, fd = msg["event"], int(msg["value"])
            if event == zmq.EVENT_ACCEPTED:
                self._accepted(fd)
            else:
                uid = self.open.pop(fd, None)
                if uid is not None:
                    self.per_uid[uid] -= 1
                    if not self.per_uid[uid]:
                        del self.per_uid[uid]

    def _accepted(self, fd: int) -> None:
        uid = _peer_uid(fd)
        if len(self.open) >= self.max_clients:
            self._refuse(fd, "clients", f"{len(self.open)} connections (cap {self.max_clients})")
        elif uid >= 0 and self.per_uid.get(uid, 0) >= self.max_per_uid:
            self._refuse(
                fd,
                "clients_per_uid",
                f"uid {uid} holds {self.per_uid[uid]} (cap {self.max_per_uid})",
            )
        else:
            self.open[fd] = uid
            self.per_uid[uid] = self.per_uid.get(uid, 0) + 1

    def _refuse(self, fd: int, quota: str, why: str) -> None:
        self.refused += 1
        self.server.refuse(quota)
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("connection refused: %s (%d refused so far)", why, self.refused)
            self.server.broker.error(ErrorCode.QUOTA, f"connection refused: {why}")
        try:
            # on a duplicate: shutdown acts on the connection, libzmq still owns and closes fd
            with socket.socket(fileno=os.dup(fd)) as s:
                s.shutdown(socket.SHUT_RDWR)
        except OSError as exc:  # already gone
            log.debug("shutdown of refused connection failed: %s", exc)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _peer_uid(fd: int) -> int:
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            if s.family != socket.AF_UNIX:
                return -1
            raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return -1
    return int(_PEERCRED.unpack(raw)[1])


class CurveSetup:
    """CurveZMQ for the TCP endpoint: the daemon's key pair and a folder of authorized
    client public keys (ZeroMQ certificate files, as `zmq.auth.create_certificates`
    writes them; the scheme the peer links use too)."""

    def __init__(self, keys_dir: Path) -> None:
        import zmq.auth

        self.keys_dir = keys_dir
        self.authorized = keys_dir / "authorized"
        self.authorized.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        secret_file = keys_dir / "server.key_secret"
        if not secret_file.exists():
            zmq.auth.create_certificates(str(keys_dir), "server")
            log.info("created the bus TCP server key pair in %s", keys_dir)
        self.public, secret = zmq.auth.load_certificate(str(secret_file))
        if secret is None:
            raise LoomdError(f"{secret_file} holds no secret key")
        self.secret: bytes = secret
        self._auth: Any = None
        self.names: dict[str, str] = {}  # z85 public key -> its file's name (the identity)
        self._seen: tuple[tuple[str, float], ...] = ()

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        import zmq.utils.z85
        from zmq.auth.thread import ThreadAuthenticator

        names = self.names

        class _Auth(ThreadAuthenticator):
            def curve_user_id(self, client_public_key: bytes) -> str:
                z85 = zmq.utils.z85.encode(client_public_key).decode("ascii")
                return names.get(z85, z85)

        self._auth = _Auth(ctx, log=logging.getLogger("loomd.bus.zap"))
        self._auth.start()
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> bool:
        """Read `authorized/` again if a key file came, went or changed: a key added is
        admitted, a key removed refused from the next connection on (no restart)."""
        files = sorted(self.authorized.glob("*.key"))
        seen = tuple((str(p), _mtime(p)) for p in files)
        if seen == self._seen and not force:
            return False
        import zmq.auth

        names: dict[str, str] = {}
        for path in files:
            try:
                public, _ = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError) as exc:
                log.warning("bus TCP: %s is not a ZeroMQ certificate: %s", path, exc)
                continue
            names[public.decode("ascii")] = path.name.removesuffix(".key")
        self.names.clear()
        self.names.update(names)
        if self._auth is not None:
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(self.authorized))
        self._seen = seen
        log.info("bus TCP: CurveZMQ, %d authorized client keys in %s", len(names), self.authorized)
        return True

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
