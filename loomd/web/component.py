"""The `metrics` component: serves every component's families over HTTP on localhost, and
the status page beside them when `[metrics] page` is on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from loomd.component import Component, StatusBlock
from loomd.config import IP_TEXT, Section, is_ip, option
from loomd.messages import ErrorCode
from loomd.metrics import Family
from loomd.web.auth import NAMESPACE, HttpGuard, TokenStore
from loomd.web.http import MetricsServer

if TYPE_CHECKING:
    from loomd.web.page import StatusPage

__all__ = ["MetricsComponent", "MetricsSettings", "MetricsStatus"]


@dataclass(frozen=True)
class MetricsSettings(Section):
    SECTION: ClassVar[str] = "metrics"

    enabled: bool = option(True, reload=True)
    bind: str = option("127.0.0.1", valid=is_ip, expected=IP_TEXT, reload=True)
    port: int = option(9478, min=1, max=65535, reload=True)
    # The status page at / (loomd/web): "local" answers loopback peers only, whatever
    # `bind` says; "on" anyone who reaches the port; "off" serves metrics only.
    page: str = option("local", choices=("local", "on", "off"), reload=True)
    page_clients: int = option(4, min=1, max=64, reload=True)  # live-tail (SSE) clients
    # Browser origins allowed besides loopback ones ("https://grafana.example:3000").
    origins: tuple[str, ...] = option(factory=tuple, reload=True)


@dataclass(frozen=True)
class MetricsStatus(StatusBlock):
    url: str | None
    page: str = "off"
    auth: str = ""  # loopback only, or tokens required; or why it does not listen
    refused: int = 0  # requests answered 401 or 403

    def lines(self) -> list[str]:
        if self.url is None:
            return [f"off{': ' + self.auth if self.auth else ''}"]
        auth = f"{self.auth}; {self.refused} refused"
        if self.page == "off":
            return [self.url, auth]
        return [self.url, f"status page: {self.url.removesuffix('metrics')} ({self.page})", auth]


class MetricsComponent(Component[MetricsSettings]):
    """Serves every component's families (`ctx.services.collect`) as Prometheus text."""

    summary = "Prometheus metrics and the status page over HTTP on localhost"

    server: MetricsServer | None = None
    page: StatusPage | None = None
    guard: HttpGuard | None = None
    _sampler: asyncio.Task[None] | None = None
    _waiter: asyncio.Task[None] | None = None

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
        guard = HttpGuard(
            lambda: TokenStore(self.ctx.state.kv(NAMESPACE)), "status", m.bind, m.origins,
            "metrics.bind",
        )  # fmt: skip
        self.guard = guard
        why = guard.missing_token()
        if why is not None:  # refuse to listen unguarded; start once a token exists
            self.ctx.error(ErrorCode.CONFIG, f"metrics not listening: {why}")
            self._waiter = self.spawn(self._open_with_token, "await-token")
            return
        page = None
        if m.page != "off":
            from loomd.web.page import StatusPage  # only when the page is on

            page = StatusPage(self.ctx, m.page, max_clients=m.page_clients)
            await page.load()
        server = MetricsServer(
            m.bind, m.port, self.ctx.services.collect, page.handle if page else None, guard
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

    async def _open_with_token(self) -> None:
        assert self.guard is not None
        await self.guard.wait_for_token(preload=("loomd.web.page",))
        self._waiter = None
        await self._open()

    async def _close(self) -> None:
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()  # ends the live-tail streams too
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        self.page = None

    def status(self) -> MetricsStatus:
        g = self.guard
        if self.server is None or g is None:
            why = g.missing_token() if g is not None and self._waiter is not None else None
            return MetricsStatus(None, auth=why or "")
        return MetricsStatus(
            self.server.url, self.page.mode if self.page else "off", g.describe(),
            g.unauthorized + g.forbidden,
        )  # fmt: skip

    def metrics(self) -> Iterable[Family]:
        return self.page.families() if self.page is not None else ()
