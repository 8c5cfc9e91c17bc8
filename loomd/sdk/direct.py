"""One-hop request/reply between two SDK processes on one box, beside their daemon sockets.

A capability provider serves calls on a `DirectServer` and callers reach it with a
`DirectLink`: a call is two socket hops, caller -> provider -> caller, instead of four
through the daemon. What may be called is still the daemon's decision: the frames carry
the broker's grant, which the provider checks (`loomd.agents.direct`); this module only
moves bytes.

A plain unix stream socket in the abstract namespace (`ipc://@name`: nothing on disk,
reachable from a caller of another uid), not ZeroMQ: a ZeroMQ message crosses libzmq's I/O
thread on each side, four thread wake-ups per direction instead of one, and on a loaded
2-core box those wake-ups are the p99 (a ping-pong between two processes at load 3.7:
ZeroMQ ipc p50 0.15-0.20 ms / p99 3.9-7.1 ms, this socket 0.02-0.03 / 0.08-0.10 ms;
docs/design/fast-hops-calls.md).

Frames, both ways: `u32 length | u64 rid | body` (length counts rid and body). `rid` is the
caller's request id; the provider answers each request once, in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from loomd.errors import LoomdError

__all__ = ["DirectLink", "DirectServer", "Gone", "Unreachable", "local_endpoint"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20  # a larger request frame closes the caller's connection
MAX_REPLY_BYTES = 1 << 26  # a caller takes answers up to this (a result is not a stream)
MAX_INFLIGHT = 1024  # requests a server runs at once; more are answered `busy`
MAX_UNSENT = 16 << 20  # replies queued to a caller that does not read: then it is cut off
MAX_CONNECTIONS = 256  # callers connected at once; one more is closed at once
_HEAD = struct.Struct("!IQ")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Gone(LoomdError):
    """The peer went away (disconnected, or never accepted the connection)."""


class Unreachable(Gone):
    """The peer could not be reached at all: nothing was sent."""


def local_endpoint(name: str) -> str:
    """A fresh abstract-namespace endpoint: nothing on disk, nothing to clean up. Any local
    process can connect; what a connection may do is for the server to check."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
    return f"ipc://@loomd-direct-{safe}-{os.urandom(6).hex()}"


def _address(endpoint: str) -> str:
    if not endpoint.startswith("ipc://@") or len(endpoint) > 100:
        raise Gone(f"{endpoint!r}: not a local abstract endpoint")
    return "\0" + endpoint[len("ipc://@") :]


class _Frames(asyncio.Protocol):
    """Length-prefixed frames in, `on_frame(rid, body)` out; a frame over `limit` ends the
    connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= _HEAD.size:
            size, rid = _HEAD.unpack_from(buf, pos)
            if size < 8 or size > self.limit:
                self.bad(f"frame of {size} bytes")
                return
            end = pos + 4 + size
            if end > n:
                break
            self.on_frame(rid, bytes(buf[pos + _HEAD.size : end]))
            pos = end
        if pos:
            del buf[:pos]

    def bad(self, why: str) -> None:
        self._buf.clear()
        if self.transport is not None:
            self.transport.abort()

    def send(self, rid: int, body: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        t.write(_HEAD.pack(len(body) + 8, rid) + body)
        return True

    def on_frame(self, rid: int, body: bytes) -> None:
        raise NotImplementedError


Handler = Callable[[bytes, int], Awaitable[bytes]]  # (body, the caller's uid) -> answer


class DirectServer:
    """Serves requests: `handler(body, uid)` runs as a task per request (`uid`: the calling
    process's, from the kernel) and its bytes go back to the connection that asked.
    `busy(body)` answers a request over `MAX_INFLIGHT`. A frame over `MAX_REQUEST_BYTES`,
    or a caller that lets `MAX_UNSENT` of replies pile up, loses its connection."""

    def __init__(self, handler: Handler, busy: Callable[[bytes], bytes], *, name: str = "") -> None:
        self.handler = handler
        self.busy = busy
        self.name = name
        self.endpoint = ""
        self.cut_off = 0  # connections closed for a bad frame or unread replies
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_ServerConn] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.endpoint = local_endpoint(self.name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(_address(self.endpoint))
            sock.listen(128)
            sock.setblocking(False)
            self._server = await loop.create_unix_server(lambda: _ServerConn(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        return self.endpoint

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in list(self._conns):
            if c.transport is not None:
                c.transport.abort()
        self._conns.clear()

    def _request(self, conn: _ServerConn, rid: int, body: bytes) -> None:
        if len(self._tasks) >= MAX_INFLIGHT:
            conn.reply(rid, self.busy(body))
            return
        task = asyncio.get_running_loop().create_task(self._run(conn, rid, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: _ServerConn, rid: int, body: bytes) -> None:
        try:
            reply = await self.handler(body, conn.uid)
        except Exception:
            log.exception("direct request handler failed")
            return
        conn.reply(rid, reply)


class _ServerConn(_Frames):
    def __init__(self, server: DirectServer) -> None:
        super().__init__(MAX_REQUEST_BYTES)
        self.server = server
        self.uid = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self.server._conns) >= MAX_CONNECTIONS:
            self.bad("one connection too many")
            return
        self.server._conns.add(self)
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
            self.uid = _CRED.unpack(cred)[1]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        self.transport = None

    def bad(self, why: str) -> None:
        n = self.server.cut_off = self.server.cut_off + 1
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: a flood of them does not flood the log
            log.warning(
                "one-hop server %s: %s: connection closed (%d so far)", self.server.name, why, n
            )
        super().bad(why)

    def on_frame(self, rid: int, body: bytes) -> None:
        self.server._request(self, rid, body)

    def reply(self, rid: int, body: bytes) -> None:
        if self.send(rid, body) and self.transport is not None:
            if self.transport.get_write_buffer_size() > MAX_UNSENT:
                self.bad("replies left unread")


class DirectLink(_Frames):
    """A caller's connection to one `DirectServer`. `request` raises `Gone` when the server
    disconnects (its process died, it closed) or cannot be reached; the deadline is the
    caller's (`asyncio.timeout` around `request`)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(MAX_REPLY_BYTES)
        self.endpoint = endpoint
        self.closed = False
        self._why = ""
        self._rids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._opening: asyncio.Future[None] | None = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, _address(self.endpoint))
            await loop.create_unix_connection(lambda: self, sock=sock)
        except (OSError, Gone) as exc:
            sock.close()
            raise Unreachable(f"cannot connect: {exc}") from None

    async def request(self, body: bytes) -> bytes:
        """The answer to `body`. `Unreachable` if the server could not be reached (nothing
        was sent), `Gone` if the connection ended before the answer."""
        if self.closed:
            raise Gone(f"{self.endpoint}: {self._why}")
        if self.transport is None:
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open())
            try:
                await asyncio.shield(self._opening)
            except Gone as exc:
                self.close(str(exc))
                raise Unreachable(f"{self.endpoint}: {exc}") from None
        rid = next(self._rids)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            if not self.send(rid, body):
                raise Gone(f"{self.endpoint}: {self._why or 'closed'}")
            return await fut
        finally:
            self._waiting.pop(rid, None)

    def on_frame(self, rid: int, body: bytes) -> None:
        fut = self._waiting.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.close("disconnected")

    def bad(self, why: str) -> None:
        super().bad(why)
        self.close(why)

    def close(self, why: str = "closed") -> None:
        """Fail every waiting request with `Gone` and drop the connection."""
        if self.closed:
            return
        self.closed = True
        self._why = why
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Gone(f"{self.endpoint}: {why}"))
        self._waiting.clear()
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
