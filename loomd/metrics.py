"""Prometheus text exposition (format 0.0.4) without a client library.

Components keep their own counters and histograms; on each scrape the server
calls one `collect()` function that returns `Family` tuples, and `render`
turns them into text. Nothing is registered globally, so there is no
registry to reset between tests and no lock on the hot path: everything runs
on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from loomd.component import Component, StatusBlock
from loomd.config import IP_TEXT, Section, _is_ip, option
from loomd.messages import ErrorCode

if TYPE_CHECKING:
    from loomd.web import StatusPage

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "Family",
    "Histogram",
    "MetricsComponent",
    "MetricsServer",
    "MetricsSettings",
    "Request",
    "Response",
    "Sample",
    "Streamer",
    "render",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# 50 µs .. 1 s: bus hops sit at the low end, model stages at the high end.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Histogram:
    """Counts observations into fixed buckets (`le` = less than or equal)."""

    __slots__ = ("_bounds", "_count", "_counts", "_sum")

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        bounds = sorted({float(b) for b in buckets if b != math.inf})
        if not bounds or any(math.isnan(b) for b in bounds):
            raise ValueError("a histogram needs at least one finite bucket bound")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last slot is the +Inf bucket
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        if math.isnan(value):
            return  # a NaN would poison the sum forever; it carries no latency anyway
        # bisect_left finds the first bound >= value: exactly Prometheus' `le`.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._count += 1

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def bounds(self) -> tuple[float, ...]:
        return tuple(self._bounds)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) for every bucket, ending with +Inf."""
        total, out = 0, []
        for bound, n in zip([*self._bounds, math.inf], self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float:
        """Estimate like PromQL's histogram_quantile: linear within the bucket."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        if self._count == 0:
            return math.nan
        rank = q * self._count
        below = 0
        for i, n in enumerate(self._counts):
            if n and below + n >= rank:
                return self._interpolate(i, (rank - below) / n)
            below += n
        return self._bounds[-1]  # unreachable: the loop always reaches the count

    def _interpolate(self, i: int, fraction: float) -> float:
        if i == len(self._bounds):
            return self._bounds[-1]  # +Inf bucket: the highest finite bound is all we know
        upper = self._bounds[i]
        lower = self._bounds[i - 1] if i > 0 else min(0.0, upper)
        return lower + (upper - lower) * fraction


Sample = tuple[Mapping[str, str], float | Histogram]


class Family(NamedTuple):
    """One metric: name, type (counter, gauge, histogram, ...), help, samples."""

    name: str
    type: str
    help: str
    samples: Sequence[Sample]


def render(families: Iterable[Family]) -> str:
    """The text exposition format 0.0.4 for `families`."""
    return "".join(_render_family(family) for family in families)


def _render_family(family: Family) -> str:
    name, kind = family.name, family.type
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}")
    if kind not in TYPES:
        raise ValueError(f"{name}: invalid metric type {kind!r}")
    lines = [f"# HELP {name} {_escape_help(family.help)}", f"# TYPE {name} {kind}"]
    for labels, value in family.samples:
        if isinstance(value, Histogram):
            if kind != "histogram":
                raise ValueError(f"{name}: a histogram sample in a {kind} family")
            lines.extend(_histogram_lines(name, labels, value))
        else:
            if kind == "histogram":
                raise ValueError(f"{name}: histogram families take Histogram samples")
            lines.append(f"{name}{_labels(labels)} {_value(value)}")
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, labels: Mapping[str, str], hist: Histogram) -> list[str]:
    if "le" in labels:
        raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
    lines = [
        f"{name}_bucket{_labels({**labels, 'le': _bound(bound)})} {n}"
        for bound, n in hist.cumulative()
    ]
    lines.append(f"{name}_sum{_labels(labels)} {_value(hist.sum)}")
    lines.append(f"{name}_count{_labels(labels)} {hist.count}")
    return lines


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for key in labels:
        if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise ValueError(f"invalid label name {key!r}")
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    # HELP escapes only backslash and newline; quotes stay as they are.
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _value(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _bound(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


# --- the HTTP endpoint -----------------------------------------------------------

_MAX_LINE = 8192  # request line or header line
_MAX_HEADERS = 100
_REQUEST_TIMEOUT = 10.0  # a client that dribbles bytes must not pin a task forever
_LINGER_TIMEOUT = 1.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
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
    ) -> None:
        self._bind, self._port, self._collect, self._app = bind, port, collect, app
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
        log.info("metrics on %s", self.url, extra={"fields": {"port": self.port}})

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
        if self._app is not None and path != "/metrics":
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


# --- the component ------------------------------------------------------------


@dataclass(frozen=True)
class MetricsSettings(Section):
    SECTION: ClassVar[str] = "metrics"

    enabled: bool = option(True, reload=True)
    bind: str = option("127.0.0.1", valid=_is_ip, expected=IP_TEXT, reload=True)
    port: int = option(9478, min=1, max=65535, reload=True)
    # The status page at / (loomd/web): "local" answers loopback peers only, whatever
    # `bind` says; "on" anyone who reaches the port; "off" serves metrics only.
    page: str = option("local", choices=("local", "on", "off"), reload=True)
    page_clients: int = option(4, min=1, max=64, reload=True)  # live-tail (SSE) clients


@dataclass(frozen=True)
class MetricsStatus(StatusBlock):
    url: str | None
    page: str = "off"

    def lines(self) -> list[str]:
        if self.url is None:
            return ["off"]
        if self.page == "off":
            return [self.url]
        return [self.url, f"status page: {self.url.removesuffix('metrics')} ({self.page})"]


class MetricsComponent(Component[MetricsSettings]):
    """Serves every component's families (`ctx.services.collect`) as Prometheus text."""

    name = "metrics"
    Settings = MetricsSettings
    summary = "Prometheus metrics and the status page over HTTP on localhost"

    server: MetricsServer | None = None
    page: StatusPage | None = None
    _sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._open()

    async def stop(self) -> None:
        await self._close()

    async def reload(self, new: MetricsSettings) -> list[str]:
        changed = new != self.settings
        self.ctx.settings = new
        if changed:
            await self._close()
            await self._open()
        return []

    async def _open(self) -> None:
        m = self.settings
        if not m.enabled:
            return
        page = None
        if m.page != "off":
            from loomd.web import StatusPage  # only when the page is on

            page = StatusPage(self.ctx, m.page, max_clients=m.page_clients)
            await page.load()
        server = MetricsServer(
            m.bind, m.port, self.ctx.services.collect, page.handle if page else None
        )
        try:
            await server.start()
        except OSError as exc:  # the daemon runs on without metrics, and says so
            self.ctx.error(
                ErrorCode.METRICS, f"metrics disabled: cannot listen on {m.bind}:{m.port}: {exc}"
            )
            return
        self.server = server
        if page is not None:
            self.page = page
            self._sampler = self.spawn(page.history.run, "page-history", restart=True)

    async def _close(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()  # ends the live-tail streams too
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        self.page = None

    def status(self) -> MetricsStatus:
        if self.server is None:
            return MetricsStatus(None)
        return MetricsStatus(self.server.url, self.page.mode if self.page else "off")

    def metrics(self) -> Iterable[Family]:
        return self.page.families() if self.page is not None else ()
