"""The status page's routes, its exposure rule, and where its data comes from.

Everything it shows comes through the component seam: the host's `status` tree and the
other components' operations (`voice.last`, `assist.last`, `llm.recent`) through `ctx.services.call`
(the same entry `loomctl` uses), the bus counters through `ctx.bus.stats()`, and
the live tail through `ctx.bus`. It never imports another component's module."""

from __future__ import annotations

import asyncio
import importlib.resources
import ipaddress
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from loomd.bus.topics import validate_pattern
from loomd.errors import LoomdError, ProtocolError
from loomd.messages import ErrorCode, TurnStage
from loomd.metrics import Family
from loomd.web.history import History
from loomd.web.http import Request, Response, Streamer
from loomd.web.sse import KEEPALIVE_S, WRITE_STALL_S, EventStream, summarise

if TYPE_CHECKING:
    from loomd.component import Context
    from loomd.web.server import Receive, Send

__all__ = ["MODES", "StatusPage", "allowed"]

log = logging.getLogger(__name__)

MODES = ("local", "on", "off")
QUEUE = 256  # events queued per live-tail client before the oldest are dropped
VOICE_TURNS = 5
ASSIST_TURNS = 5
ROUTES = 10
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# No inline script or style, no other origin: data shown with textContent is the first
# defence against markup in bus payloads, this is the second.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = (
    ("Content-Security-Policy", _CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
JSON_TYPE = "application/json"
# The voice flight recorder's stages, in order, with their labels.
STAGES = tuple((s.value, s.label) for s in TurnStage)


def allowed(mode: str, peer: str, host: str | None) -> bool:
    """May `peer` (an IP address) see the page under `mode`? "on": anyone who reaches the
    port; "local": loopback peers only, and only under a loopback Host name, so a web page
    elsewhere cannot read it through DNS rebinding; "off": nobody."""
    if mode == "on":
        return True
    if mode != "local":
        return False
    return _loopback_ip(peer) and (host is None or _loopback_host(host))


def _loopback_ip(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _loopback_host(host: str) -> bool:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:9478
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name == "localhost" or name.endswith(".localhost") or _loopback_ip(name)


class StatusPage:
    """Mounted on the metrics server (`MetricsServer(app=page.handle)`)."""

    def __init__(self, ctx: Context[Any], mode: str, *, max_clients: int) -> None:
        self.ctx = ctx
        self.mode = mode
        self.max_clients = max_clients
        self.keepalive_s = KEEPALIVE_S
        self.stall_s = WRITE_STALL_S
        self.history = History(lambda: ctx.bus.stats())
        self.streams: set[EventStream] = set()
        self.requests = 0
        self.refused = 0  # not a loopback peer under "local"
        self.bad = 0  # bad input: an invalid ?pattern=
        self.sse_refused = 0  # over the client cap
        self.sse_dropped = 0
        self._files: dict[str, bytes] = {}
        self._api: dict[str, Callable[[Request], Awaitable[dict[str, Any]]]] = {
            "/api/status": self._status,
            "/api/history": self._history,
            "/api/voice": self._voice,
            "/api/routes": self._routes,
            "/api/assist": self._assist,
        }

    async def load(self) -> None:
        """Read the static files once (package data; a few kB)."""
        root = importlib.resources.files("loomd.web") / "static"

        def read() -> dict[str, bytes]:
            return {name: (root / name).read_bytes() for name, _ in _STATIC.values()}

        self._files = await asyncio.to_thread(read)

    # -- routing ------------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response | Streamer | None:
        known = req.path in _STATIC or req.path in self._api or req.path == "/api/events"
        if not known or req.method not in ("GET", "HEAD"):
            return None  # the metrics server answers 404 / 405
        self.requests += 1
        if not allowed(self.mode, req.peer, req.headers.get("host")):
            self.refused += 1
            return Response(
                403,
                b'the status page answers only on localhost ([metrics] page = "local")\n',
            )
        head = req.method == "HEAD"
        if req.path in _STATIC:
            name, ctype = _STATIC[req.path]
            return Response(200, self._files[name], ctype, head_only=head, headers=_HEADERS)
        if req.path == "/api/events":
            return self._events(req, head)
        try:
            data = await self._api[req.path](req)
        except LoomdError as exc:
            return _json({"error": str(exc)}, head, status=503)
        except Exception as exc:  # one broken view costs one answer, never the page
            log.exception("status page: %s failed", req.path)
            return _json({"error": f"{type(exc).__name__}: {exc}"}, head, status=500)
        return _json(data, head)

    # -- the views ----------------------------------------------------------------------------
    async def _op(self, op: str, *args: Any) -> dict[str, Any]:
        return await self.ctx.services.call(op, *args)

    async def _status(self, req: Request) -> dict[str, Any]:
        st = (await self._op("status"))["status"]
        components = [
            {
                "name": name,
                "state": view["state"],
                "healthy": view["healthy"],
                "reason": view["reason"],
                "text": summarise(view["text"]),
            }
            for name, view in st["components"].items()
        ]
        agents_view = st["components"].get("agents", {})
        agents = (agents_view.get("status") or {}).get("agents", [])
        bus = await self.ctx.bus.stats()
        return {
            "daemon": st["daemon"],
            "components": components,
            "agents": {
                "state": agents_view.get("state", "absent"),
                "list": [summarise(a) for a in agents],
            },
            "bus": {
                "events_in": bus.events_in,
                "events_out": bus.events_out,
                "dropped": sum(bus.drops.values()),
            },
            "page": {
                "mode": self.mode,
                "sse_clients": len(self.streams),
                "sse_max_clients": self.max_clients,
            },
        }

    async def _history(self, req: Request) -> dict[str, Any]:
        return self.history.to_dict()

    async def _component(self, name: str) -> tuple[str, str]:
        """(state, reason) of a component: running, disabled, unavailable, ..., absent."""
        states = (await self._op("commands"))["components"]
        state = str(states.get(name, "absent"))
        if state in ("running", "absent"):
            return state, ""
        view = (await self._op("status"))["status"]["components"][name]
        return state, str(view.get("reason") or "")

    async def _recent(self, component: str, op: str, n: int, key: str) -> dict[str, Any]:
        """A component's (state, reason) and, while it runs, the last `n` records its `op`
        returns under `key`, newest first."""
        state, reason = await self._component(component)
        out: dict[str, Any] = {"state": state, "reason": reason, key: []}
        if state == "running":
            records = (await self._op(op, n))[key]
            out[key] = [summarise(r) for r in reversed(records)]
        return out

    async def _voice(self, req: Request) -> dict[str, Any]:
        out = await self._recent("voice", "voice.last", VOICE_TURNS, "turns")
        out["stages"] = [list(s) for s in STAGES]
        if out["state"] == "running":
            view = (await self._op("status"))["status"]["components"]["voice"]
            out["muted"] = bool((view.get("status") or {}).get("muted"))
        return out

    async def _assist(self, req: Request) -> dict[str, Any]:
        return await self._recent("assist", "assist.last", ASSIST_TURNS, "turns")

    async def _routes(self, req: Request) -> dict[str, Any]:
        return await self._recent("llm", "llm.recent", ROUTES, "decisions")

    def _events(self, req: Request, head: bool) -> Response | Streamer:
        query = urllib.parse.parse_qs(req.query)
        pattern = (query.get("pattern") or ["#"])[0]
        try:
            validate_pattern(pattern)
        except ProtocolError as exc:
            self.bad += 1
            self.ctx.error(ErrorCode.PAGE_BAD_PATTERN, f"status page: bad live-tail pattern: {exc}")
            return Response(400, f"bad pattern: {exc}\n".encode())
        if len(self.streams) >= self.max_clients:
            self.sse_refused += 1
            msg = f"live tail full: {self.max_clients} clients ([metrics] page_clients)\n"
            return Response(503, msg.encode(), headers=(("Retry-After", "10"),))
        if head:
            return Response(200, b"", "text/event-stream; charset=utf-8", head_only=True)
        stream = EventStream(
            self.ctx.bus,
            pattern,
            queue=QUEUE,
            on_drop=self._dropped,
            keepalive_s=self.keepalive_s,
            stall_s=self.stall_s,
        )
        self.streams.add(stream)  # counted now: the cap holds even before it subscribes

        async def run(receive: Receive, send: Send) -> None:
            try:
                await stream(receive, send)
            finally:
                self.streams.discard(stream)

        return run

    def _dropped(self, n: int) -> None:
        self.sse_dropped += n

    # -- metrics ------------------------------------------------------------------------------
    def families(self) -> Iterable[Family]:
        yield Family(
            "loomd_metrics_page_requests_total", "counter", "Status page requests.",
            [({}, self.requests)],
        )  # fmt: skip
        yield Family(
            "loomd_metrics_page_refused_total", "counter",
            "Status page requests refused: not a loopback peer under page = \"local\".",
            [({}, self.refused)],
        )  # fmt: skip
        yield Family(
            "loomd_metrics_page_sse_clients", "gauge", "Live-tail (SSE) clients connected.",
            [({}, len(self.streams))],
        )  # fmt: skip
        yield Family(
            "loomd_metrics_page_sse_refused_total", "counter",
            "Live-tail clients refused: over [metrics] page_clients.",
            [({}, self.sse_refused)],
        )  # fmt: skip
        yield Family(
            "loomd_metrics_page_sse_dropped_total", "counter",
            "Events a slow live-tail client missed (its queue was full).",
            [({}, self.sse_dropped)],
        )  # fmt: skip


def _json(data: Any, head: bool, status: int = 200) -> Response:
    body = json.dumps(data, default=str, separators=(",", ":")).encode()
    return Response(status, body, JSON_TYPE, head_only=head, headers=_HEADERS)
