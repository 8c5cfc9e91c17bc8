"""loomd's one HTTP stack: an ASGI app served by uvicorn in the daemon's own event loop,
on a socket of its own (docs/design/http.md). The metrics server and the status page
(`loomd.web.http`), the OpenAI-compatible endpoint (`loomd.router.http`, Starlette) and
MCP's Streamable HTTP (`loomd.mcp`, the SDK's Starlette app) all run on it.

uvicorn is told to leave the process alone: no signal handlers (the daemon owns SIGTERM
and SIGHUP), no logging configuration (the daemon's handlers stay), no proxy headers (the
peer address is the socket's: the status page's loopback rule and the tokens depend on
it), the pure-Python h11 parser (no compiled dependency; httptools measured +15 %
scrapes/s, bench/httpstack.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from loomd.web.auth import HttpGuard, Refusal

__all__ = [
    "ASGIApp", "HttpServer", "Message", "Receive", "Scope", "Send", "guarded", "header_map",
    "host_port", "respond",
]  # fmt: skip

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STARTUP_TIMEOUT_S = 10.0
# A connection gets this long to finish its request's head (and again after each
# response): a client that dribbles bytes, or connects and says nothing, is hung up on.
# uvicorn alone arms no timer before the first request.
REQUEST_TIMEOUT_S = 10.0
# A stream whose client stopped reading is ended by returning (ASGI has no "close"):
# uvicorn then closes the connection and says this at error level. It is expected here.
_EXPECTED = "ASGI callable returned without completing response."


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _EXPECTED


def host_port(bind: str, port: int) -> str:
    """`127.0.0.1:9478`, `[::1]:9478`: an address for a URL."""
    return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"


class HttpServer:
    """One surface: `app` on `bind:port` (port 0 picks a free one; read it back from
    `port`). `lifespan=True` runs the app's lifespan (MCP's session manager needs it)."""

    def __init__(
        self, app: ASGIApp, bind: str, port: int, *, name: str, lifespan: bool = False
    ) -> None:
        self.app, self.bind, self.name, self.lifespan = app, bind, name, lifespan
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"the {self.name} server is not running")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def url(self, path: str = "/") -> str:
        return f"http://{host_port(self.bind, self.port)}{path}"

    async def start(self) -> None:
        """Listen (OSError when the address is taken), then serve in a task of its own."""
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.create_server((self.bind, self._port), family=family)
        sock.setblocking(False)
        self._port = int(sock.getsockname()[1])
        self._closing = asyncio.Event()
        server = _server(self._serve, self.lifespan)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http-{self.name}")
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                while not server.started:
                    if task.done():  # the app's startup failed: uvicorn said why
                        task.result()
                        raise RuntimeError(f"the {self.name} server did not start")
                    await asyncio.sleep(0.005)
        except BaseException:
            server.exit()  # type: ignore[attr-defined]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            sock.close()
            raise
        self._server, self._task = server, task

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            receive = _until(self._closing, receive)
        await self.app(scope, receive, send)

    async def close(self) -> None:
        """Stop listening and end the connections: closing reads as the client leaving
        to every app waiting on `receive()` (live tails, MCP's streams), so streams end
        at once; other requests get uvicorn's graceful second. Then wait for the task."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        self._closing.set()
        server.exit()  # type: ignore[attr-defined]
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        except Exception:
            log.exception("%s server: shutdown failed", self.name)


def _until(closing: asyncio.Event, receive: Receive) -> Receive:
    """`receive`, except that `closing` reads as the client leaving (`http.disconnect`)."""

    async def wrapped() -> Message:
        if closing.is_set():
            return {"type": "http.disconnect"}
        get = asyncio.ensure_future(receive())
        stop = asyncio.ensure_future(closing.wait())
        done, pending = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return get.result() if get in done else {"type": "http.disconnect"}

    return wrapped


def _server(app: ASGIApp, lifespan: bool) -> uvicorn.Server:
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_QUIET)
    config = uvicorn.Config(
        app,
        interface="asgi3",
        http=_protocol(),
        lifespan="on" if lifespan else "off",
        log_config=None,
        log_level="error",  # not a warning per malformed request a client can send
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=1,
        ws="none",
    )

    class Server(uvicorn.Server):
        wake: asyncio.Event | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield  # the daemon owns SIGTERM/SIGHUP; uvicorn must not take them

        async def main_loop(self) -> None:
            # uvicorn's own ticks 10 times a second per server to notice should_exit;
            # this one wakes once a second (the Date header) or when told to exit.
            self.wake = asyncio.Event()
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 10) % 864000  # uvicorn's on_tick: % 10 == 0 each second
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.wake.wait()

        def exit(self) -> None:
            self.should_exit = True
            if self.wake is not None:
                self.wake.set()

    return Server(config)


_QUIET = _Quiet()


@functools.cache
def _protocol() -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for each request's head."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            cycle = self.cycle  # a new request's head, once complete, makes a new cycle
            self._deadline = self.loop.call_later(REQUEST_TIMEOUT_S, self._expire, cycle)

        def _expire(self, cycle: object) -> None:
            if self.cycle is cycle and not self.transport.is_closing():
                log.debug(
                    "http client %s: no request within %.0f s", self.client, REQUEST_TIMEOUT_S
                )
                self.transport.close()

    return Protocol


def header_map(scope: Scope) -> dict[str, str]:
    """A request's headers by lower-case name (the last one wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    head_only: bool = False,
) -> None:
    """One whole response (the body left out for HEAD; Content-Length says its size)."""
    head = [
        (b"Content-Type", content_type.encode("latin-1")),
        (b"Content-Length", str(len(body)).encode()),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


RefusalBody = Callable[["Refusal"], tuple[bytes, str]]


def _json_refusal(refusal: Refusal) -> tuple[bytes, str]:
    return json.dumps({"error": refusal.message}).encode(), "application/json"


def guarded(app: ASGIApp, guard: HttpGuard, body: RefusalBody = _json_refusal) -> ASGIApp:
    """`app` behind `guard`: 403 for a foreign browser `Origin`, 401 (with
    `WWW-Authenticate: Bearer`) without a valid token when bound beyond loopback.
    `body` words the refusal (plain text, JSON, OpenAI's error shape)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = header_map(scope)
        refusal = guard.check(headers.get("authorization"), headers.get("origin"))
        if refusal is None:
            await app(scope, receive, send)
            return
        data, ctype = body(refusal)
        extra = [("www-authenticate", 'Bearer realm="loomd"')] if refusal.status == 401 else []
        await respond(send, refusal.status, data, ctype, extra)

    return asgi
