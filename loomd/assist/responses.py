"""Replies from home-assistant-intents' response templates (Jinja, as Home Assistant renders
them), in a sandbox, with the objects those templates read: `slots` (the spoken values),
`state` (the device acted on or asked about), `query` (matched/unmatched states)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["Responses", "StateView"]

log = logging.getLogger("loomd.assist")


class StateView:
    """What a template calls `state`: `name`, `domain`, `state`, `state_with_unit`."""

    def __init__(self, name: str, domain: str, state: str = "", unit: str = "") -> None:
        self.name, self.domain, self.state = name, domain, state
        self.state_with_unit = f"{state} {unit}".strip() if state else "unknown"


class Responses:
    def __init__(self, responses: Mapping[str, Any]) -> None:
        from jinja2.sandbox import SandboxedEnvironment

        self.env = SandboxedEnvironment(autoescape=False)
        self.intents: Mapping[str, Any] = responses.get("intents") or {}
        self.errors: Mapping[str, Any] = responses.get("errors") or {}

    def intent(self, intent: str, key: str, fallback: str, **values: Any) -> str:
        table = self.intents.get(intent) or {}
        template = table.get(key) if key in table else table.get("default")
        return self._render(template, fallback, values)

    def refusal(self, key: str, fallback: str, **values: Any) -> str:
        return self._render(self.errors.get(key), fallback, values)

    def _render(self, template: Any, fallback: str, values: dict[str, Any]) -> str:
        if not isinstance(template, str):
            return fallback
        try:
            text = self.env.from_string(template).render(**values)
        except Exception as exc:  # a template reading what we do not provide
            log.debug("response template failed (%s): %s", exc, template[:80])
            return fallback
        text = " ".join(text.split())
        return text or fallback
