"""The HTTP endpoint of the metrics component: `GET /metrics` (Prometheus text) and, when
the status page is on, whatever its handler answers (`loomd.web.page`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from loomd.metrics import CONTENT_TYPE, Family, render
from loomd.web.auth import HttpGuard

__all__ = ["MetricsServer", "Request", "Response", "Streamer"]

log = logging.getLogger(__name__)


_MAX_LINE = 8192  # request line or header line
_MAX_HEADERS = 100
_REQUEST_TIMEOUT = 10.0  # a client that dribbles bytes must not pin a task forever
_LINGER_TIMEOUT = 1.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_INDEX = b"loomd metrics: GET /metrics (Prometheus text format 0.0.4)\n"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    head_only: bool = False
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        headers = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        if self.status == 405:
            headers.append("Allow: GET, HEAD")
        head = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii")
        return head if self.head_only else head + self.body


class Request(NamedTuple):
    """What a mounted app sees of a request: `path` without the query, headers by
    lower-case name, and the peer's IP address."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    peer: str


# A mounted app's answer that streams (server-sent events): it writes its own head and runs
# until the client goes; the request timeout no longer applies.
Streamer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# An app mounted on the metrics server (the status page): it answers every path but
# /metrics, or returns None to leave a path to the server.
App = Callable[[Request], Awaitable["Response | Streamer | None"]]


def _error(status: int) -> Response:
    return Response(status, f"{status} {_REASONS[status]}\n".encode())


def _refuse(guard: HttpGuard, headers: Mapping[str, str]) -> Response | None:
    """401 or 403 when the guard says no (a bad token, a browser's foreign origin)."""
    refusal = guard.check(headers.get("authorization"), headers.get("origin"))
    if refusal is None:
        return None
    extra = (("WWW-Authenticate", 'Bearer realm="loomd"'),) if refusal.status == 401 else ()
    body = f"{refusal.status} {_REASONS[refusal.status]}: {refusal.message}\n".encode()
    return Response(refusal.status, body, headers=extra)


class _BadRequest(Exception):
    pass


class MetricsServer:
    """Serves `GET /metrics` over HTTP/1.1, one request per connection.

    `async with MetricsServer("127.0.0.1", 9478, collect) as server: ...`
    Port 0 picks a free port; read it back from `server.port`.
    """

    def __init__(
        self,
        bind: str,
        port: int,
        collect: Callable[[], Iterable[Family]],
        app: App | None = None,
        guard: HttpGuard | None = None,
    ) -> None:
        self._bind, self._port, self._collect, self._app = bind, port, collect, app
        self._guard = guard
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self._bind}]" if ":" in self._bind else self._bind
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self._bind, self._port, limit=_MAX_LINE
        )
        how = self._guard.describe() if self._guard else "no token check"
        log.info("metrics on %s (%s)", self.url, how, extra={"fields": {"port": self.port}})

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's wait_closed() does not wait for connection handlers: end them here.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Serve from a task of our own: on Python 3.11 the stream callback's task
        # logs a spurious error when it ends cancelled, and close() must cancel.
        task = asyncio.create_task(self._handle(reader, writer), name="metrics-client")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Close from a callback: a task cancelled before its first step runs no `finally`.
        task.add_done_callback(lambda _: writer.close())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT) as deadline:
                await self._serve(reader, writer, deadline)
        except (TimeoutError, ConnectionError) as exc:
            log.debug("metrics client dropped: %r", exc)
        except Exception:
            log.exception("metrics connection failed")

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        deadline: asyncio.Timeout,
    ) -> None:
        try:
            method, target, headers = await _read_request(reader)
        except _BadRequest as exc:
            log.debug("bad metrics request: %s", exc)
            writer.write(_error(400).encode())
            await writer.drain()
            await _linger(reader, writer)
            return
        path, _, query = target.partition("?")
        reply: Response | Streamer | None = None
        if self._guard is not None:
            reply = _refuse(self._guard, headers)
        if reply is None and self._app is not None and path != "/metrics":
            peer = writer.get_extra_info("peername")
            reply = await self._app(Request(method, path, query, headers, str(peer[0])))
        if reply is not None and not isinstance(reply, Response):
            deadline.reschedule(None)  # a stream lives as long as its client
            await reply(reader, writer)
            return
        response = reply or self._route(method, path)
        writer.write(response.encode())
        await writer.drain()
        await _linger(reader, writer)

    def _route(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _error(405)
        head = method == "HEAD"
        if path == "/metrics":
            return self._scrape(head)
        if path == "/":
            return Response(200, _INDEX, head_only=head)
        return _error(404)

    def _scrape(self, head: bool) -> Response:
        try:
            body = render(self._collect()).encode()
        except Exception:
            # A buggy collector costs one scrape, never the server.
            log.exception("collecting metrics failed")
            return _error(500)
        return Response(200, body, CONTENT_TYPE, head_only=head)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """Method, target (path and query) and headers (by lower-case name) of the request."""
    parts = (await _read_line(reader)).split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _BadRequest("malformed request line")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = await _read_line(reader)
        if not line:
            return parts[0], parts[1], headers
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    raise _BadRequest("too many headers")


async def _read_line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readline()
    except ValueError as exc:  # the stream limit was hit: the line is too long
        raise _BadRequest("line too long") from exc
    if not raw.endswith(b"\n"):
        raise _BadRequest("connection closed mid-request")
    # latin-1 decodes any byte, so garbage becomes a 400, never a decode error.
    return raw.decode("latin-1").rstrip("\r\n")


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then let the client finish: closing with unread input sends a RST
    that can destroy the response before the client has read it."""
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(_LINGER_TIMEOUT):
            while await reader.read(_MAX_LINE):
                pass
