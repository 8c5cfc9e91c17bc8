"""The HTTP endpoint of the metrics component: `GET /metrics` (Prometheus text) and, when
the status page is on, whatever its handler answers (`loomd.web.page`). An ASGI app on
the daemon's one HTTP stack (`loomd.web.server`, uvicorn)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from loomd.metrics import CONTENT_TYPE, Exposition, Family
from loomd.web.auth import HttpGuard
from loomd.web.server import HttpServer, Receive, Scope, Send, header_map, respond

__all__ = ["MetricsServer", "Request", "Response", "Streamer"]

log = logging.getLogger(__name__)


_MAX_HEADERS = 100
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

    async def send(self, send: Send) -> None:
        headers = self.headers
        if self.status == 405:
            headers = (*headers, ("Allow", "GET, HEAD"))
        await respond(
            send, self.status, self.body, self.content_type, headers, head_only=self.head_only
        )


class Request(NamedTuple):
    """What a mounted app sees of a request: `path` without the query, headers by
    lower-case name, and the peer's IP address."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    peer: str


# A mounted app's answer that streams (server-sent events): it sends its own response
# start and body parts (ASGI) and runs until the client goes (`http.disconnect`).
Streamer = Callable[[Receive, Send], Awaitable[None]]
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


class MetricsServer:
    """Serves `GET /metrics` (and the mounted app) over HTTP/1.1.

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
        self._bind, self._app, self._guard = bind, app, guard
        self.exposition = Exposition(collect)
        self._http = HttpServer(self, bind, port, name="metrics")

    @property
    def port(self) -> int:
        if not self._http.running:
            raise RuntimeError("the metrics server is not running")
        return self._http.port

    @property
    def url(self) -> str:
        return self._http.url("/metrics")

    async def start(self) -> None:
        await self._http.start()
        how = self._guard.describe() if self._guard else "no token check"
        log.info("metrics on %s (%s)", self.url, how, extra={"fields": {"port": self.port}})

    async def close(self) -> None:
        await self._http.close()  # the streams see their client leave, and end

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app."""
        if scope["type"] != "http":
            return
        if len(scope["headers"]) > _MAX_HEADERS:
            await _error(400).send(send)
            return
        headers = header_map(scope)
        method = scope["method"]
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        path = path.partition("?")[0]
        query = scope["query_string"].decode("latin-1")
        reply: Response | Streamer | None = None
        if self._guard is not None:
            reply = _refuse(self._guard, headers)
        if reply is None and self._app is not None and path != "/metrics":
            peer = (scope.get("client") or ("", 0))[0]
            reply = await self._app(Request(method, path, query, headers, str(peer)))
        if reply is not None and not isinstance(reply, Response):
            await reply(receive, send)  # as long as its client, or until the server closes
            return
        await (reply or self._route(method, path)).send(send)

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
            body = self.exposition.render()
        except Exception:
            # A buggy collector costs one scrape, never the server.
            log.exception("collecting metrics failed")
            return _error(500)
        return Response(200, body, CONTENT_TYPE, head_only=head)
