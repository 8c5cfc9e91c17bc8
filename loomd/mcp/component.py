"""The `mcp` component: MCP servers' tools as capabilities, and loomd as an MCP server.

It runs when there is something to do (servers configured, capabilities exposed, or HTTP
serving on): `enabled` is derived, so an idle daemon never imports `mcp`. The tools of each
server are offered to the action broker over the bus like an SDK provider's
(`serve_capabilities` on `LocalBus`), so this component needs no reference into `agents`.

Each server acts on the bus as itself, `mcp:<name>` (as an in-process agent is
`plugin:<id>`): its capabilities are registered with that identity, its log messages and
sampling requests are published with it, and `[[acl]]` rules naming it decide what more it
may. Without rules it may what any local client may; with rules, only offering its own
tools (`server_manifest`) plus what the rules grant.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from loomd.agents.broker import ActionBroker
from loomd.agents.sdk import serve_capabilities
from loomd.bus.acl import Manifest
from loomd.bus.identity import Identity, IdentityKind
from loomd.component import Command, Component, StatusBlock
from loomd.config import IP_TEXT, Section, is_ip, option
from loomd.mcp.client import McpServerSettings, McpSupervisor
from loomd.messages import ErrorCode
from loomd.metrics import Family

if TYPE_CHECKING:
    from loomd.web.server import HttpServer

__all__ = ["McpComponent", "McpSettings", "server_identity", "server_manifest"]


def server_identity(name: str) -> Identity:
    """Who an MCP server is on the bus: given by loomd from its config, never chosen by
    the server."""
    return Identity(IdentityKind.MCP, name)


def server_manifest(name: str) -> Manifest:
    """What a server may do once `[[acl]]` rules exist, without a rule naming it: offer
    its own tools (register, renew, answer calls). Its log (`mcp.log.<name>`) and its
    sampling requests (`llm.chat`) need a rule."""
    pid = f"mcp-{name}"
    return Manifest(
        publish=("caps.register", "caps.unregister", f"caps.lease.{pid}"),
        subscribe=(f"caps.call.{pid}", f"caps.reregister.{pid}"),
    )


def _check_servers(value: tuple[McpServerSettings, ...]) -> tuple[str, Any, str] | None:
    seen = set()
    for i, s in enumerate(value):
        if not s.name:
            return (f"[{i}].name", s.name, "a name (tools become <name>:<tool>)")
        if s.name in seen:
            return (f"[{i}].name", s.name, "a name no other server has")
        seen.add(s.name)
    return None


@dataclass(frozen=True)
class McpSettings(Section):
    SECTION: ClassVar[str] = "mcp"

    servers: tuple[McpServerSettings, ...] = option(factory=tuple, check=_check_servers)
    expose: tuple[str, ...] = option(factory=tuple, reload=True)
    http_enabled: bool = option(False)
    http_port: int = option(7782, min=1, max=65535)
    # Beyond loopback, bearer tokens (scope mcp) are required (loomd/web/auth.py).
    http_bind: str = option("127.0.0.1", valid=is_ip, expected=IP_TEXT)
    # Browser origins allowed besides loopback ones; any other Origin gets 403.
    http_origins: tuple[str, ...] = option(factory=tuple)

    @property
    def enabled(self) -> bool:
        """The host starts the component only when it has work."""
        return bool(self.servers or self.expose or self.http_enabled)


@dataclass(frozen=True)
class McpStatus(StatusBlock):
    servers: list[dict[str, Any]]
    expose: list[str]
    http: str

    def lines(self) -> list[str]:
        out = [
            f"{s['name']} ({s['identity']}): {s['state']}, {len(s['tools'])} tools, "
            f"{s['restarts']} restarts, {s['refused']} refused"
            + (f" ({s['last_error']})" if s["last_error"] and s["state"] != "running" else "")
            for s in self.servers
        ]
        out.append(f"exposed: {', '.join(self.expose) or 'nothing'}; http: {self.http}")
        return out


class McpComponent(Component[McpSettings]):
    requires = ("mcp",)
    extra = "mcp"
    apt = "loomd-mcp"
    summary = "MCP servers' tools as capabilities; loomd as an MCP server"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.supervisors: dict[str, McpSupervisor] = {}
        self.errors = 0
        self.http_url = ""
        self.http_refused = ""  # why the HTTP server does not listen (no token yet)
        self.server: HttpServer | None = None
        self.guard: Any = None

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            self.http_url = ""
            await server.close()

    async def start(self) -> None:
        for s in self.settings.servers:
            broker = ActionBroker()
            changed = asyncio.Event()
            bus = self._bus_of(s.name)
            sup = McpSupervisor(s, broker, report=self._report, on_tools=changed.set, bus=bus)
            self.supervisors[s.name] = sup
            self.spawn(sup.run, f"server.{s.name}", restart=True)
            offer = functools.partial(self._offer, s.name, broker, changed, bus)
            self.spawn(offer, f"offer.{s.name}")
        if self.settings.http_enabled:
            from loomd.web.auth import NAMESPACE, HttpGuard, TokenStore

            ms = self.settings
            self.guard = HttpGuard(
                lambda: TokenStore(self.ctx.state.kv(NAMESPACE)), "mcp", ms.http_bind,
                ms.http_origins, "mcp.http_bind",
            )  # fmt: skip
            why = self.guard.missing_token()
            if why is not None:  # refuse to listen unguarded; start once a token exists
                self.http_refused = why
                self.ctx.error(ErrorCode.CONFIG, f"mcp http not listening: {why}")
                self.spawn(self._serve_http_with_token, "http-await-token")
                return
            await self._serve_http()

    async def _serve_http_with_token(self) -> None:
        await self.guard.wait_for_token(
            preload=(
                "loomd.web.server", "uvicorn", "mcp.server.lowlevel",
                "mcp.server.transport_security",
            )
        )  # fmt: skip
        self.http_refused = ""
        await self._serve_http()

    def _report(self, code: ErrorCode, message: str) -> None:
        self.errors += 1
        self.ctx.error(code, message)

    def _bus_of(self, name: str) -> Any:
        """The server's own handle on the bus: identity `mcp:<name>`, its manifest."""
        from loomd.bus.local import LocalBus

        bus = self.ctx.bus
        if not isinstance(bus, LocalBus):
            return bus
        return LocalBus(bus.broker, f"mcp-{name}", server_identity(name), server_manifest(name))

    async def _offer(
        self, name: str, broker: ActionBroker, changed: asyncio.Event, bus: Any
    ) -> None:
        """Keep the agents' broker in step with this server's tools (registered as the
        server itself, so `caps.list` shows its provider's owner as `mcp:<name>`)."""
        while True:
            changed.clear()
            async with serve_capabilities(bus, f"mcp-{name}", broker):
                await changed.wait()

    def bridge(self) -> Any:
        from loomd.mcp.server import Bridge

        async def state_get(ns: str, key: str) -> Any:
            return self.ctx.state.kv(ns).get(key)

        return Bridge(self.ctx.bus, self.settings.expose, state_get)

    async def _serve_http(self) -> None:
        """Listening when this returns (READY means listening; a taken port fails the start
        clearly), on the daemon's one HTTP stack; the app's lifespan runs the SDK's
        session manager."""
        from loomd.mcp.server import build_server, guarded
        from loomd.web.server import HttpServer

        s = self.settings
        app = guarded(build_server(self.bridge()), self.guard)
        server = HttpServer(app, s.http_bind, s.http_port, name="mcp", lifespan=True)
        await server.start()
        self.server = server
        self.http_url = server.url("/mcp")
        self.log.info("mcp: Streamable HTTP on %s (%s)", self.http_url, self.guard.describe())

    # -- operator ---------------------------------------------------------------------------
    def status(self) -> McpStatus:
        return McpStatus(
            [s.view() for s in self.supervisors.values()],
            list(self.settings.expose),
            self._http_line(),
        )

    def _http_line(self) -> str:
        if self.http_refused:
            return f"not listening: {self.http_refused}"
        if not self.http_url:
            return "off"
        g = self.guard
        return f"{self.http_url} ({g.describe()}; {g.unauthorized + g.forbidden} refused)"

    def metrics(self) -> Iterable[Family]:
        yield Family(
            "loomd_mcp_server_restarts_total", "counter", "Restarts per MCP server.",
            [({"server": n}, float(s.restarts)) for n, s in self.supervisors.items()],
        )  # fmt: skip
        yield Family(
            "loomd_mcp_errors_total", "counter", "Errors reported by the MCP component.",
            [({}, float(self.errors))],
        )  # fmt: skip

    def commands(self) -> Mapping[str, Command]:
        return {
            "servers": Command(self._servers, "MCP servers and their tools"),
            "restart": Command(self._restart, "restart one MCP server", ("name",)),
            "expose": Command(self._expose, "the capability patterns served over MCP"),
        }

    async def _servers(self) -> dict[str, Any]:
        return {"servers": [s.view() for s in self.supervisors.values()]}

    async def _restart(self, name: Any) -> dict[str, Any]:
        sup = self.supervisors.get(str(name))
        if sup is None:
            from loomd.errors import LoomdError

            raise LoomdError(f"no MCP server {name!r} (servers: {', '.join(self.supervisors)})")
        await sup.restart()
        return {"restarting": sup.settings.name}

    async def _expose(self) -> dict[str, Any]:
        return {"expose": list(self.settings.expose)}
