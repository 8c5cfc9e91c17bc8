"""The `tokens` component: `tokens.create|list|revoke`, the bearer tokens of the HTTP
surfaces (`loomd.web.auth`). Whoever may use the control socket (root, the `loomd` group)
manages them; the secret is returned once by `create` and never stored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from loomd.component import Command, Component, StatusBlock
from loomd.config import Section, option
from loomd.web.auth import NAMESPACE, TokenStore

__all__ = ["TokensComponent", "TokensSettings"]


@dataclass(frozen=True)
class TokensSettings(Section):
    SECTION: ClassVar[str] = "tokens"

    enabled: bool = option(True)


@dataclass(frozen=True)
class TokensStatus(StatusBlock):
    tokens: int

    def lines(self) -> list[str]:
        return [f"{self.tokens} HTTP bearer tokens (`loomctl tokens list`)"]


class TokensComponent(Component[TokensSettings]):
    summary = "bearer tokens for the HTTP surfaces beyond loopback"

    def store(self) -> TokenStore:
        return TokenStore(self.ctx.state.kv(NAMESPACE))

    def status(self) -> TokensStatus:
        return TokensStatus(len(self.store().list()))

    def commands(self) -> Mapping[str, Command]:
        return {
            "create": Command(
                self._create, "create a token; its secret is shown once", ("name", "scopes")
            ),
            "list": Command(self._list, "tokens: names, scopes, created, last used"),
            "revoke": Command(self._revoke, "revoke a token (refused from the next request)",
                              ("name",)),
        }  # fmt: skip

    async def _create(self, name: Any, scopes: Any = "all") -> dict[str, Any]:
        secret = await self.store().create(name, scopes)
        return {"name": name, "secret": secret}

    async def _list(self) -> dict[str, Any]:
        return {"tokens": [t.to_dict() for t in self.store().list()]}

    async def _revoke(self, name: Any) -> dict[str, Any]:
        from loomd.errors import LoomdError

        if not await self.store().revoke(str(name)):
            raise LoomdError(f"no token named {name!r}")
        return {"revoked": str(name)}
