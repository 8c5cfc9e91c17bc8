"""The status page: plain HTML/CSS/JS served by the metrics HTTP server, with JSON under
`/api/` and a live tail of bus events as server-sent events. See docs/design/statuspage.md.

Nothing here is imported unless `[metrics] page` is on."""

from __future__ import annotations

from loomd.web.page import MODES, StatusPage, allowed

__all__ = ["MODES", "StatusPage", "allowed"]
