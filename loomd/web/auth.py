"""Who may use loomd's HTTP surfaces: bearer tokens (stored hashed in the state store) and
the `Origin` rule, shared by the status page and metrics (`loomd.web`), the OpenAI-compatible
endpoint (`loomd.router.http`) and the MCP Streamable HTTP server (`loomd.mcp`).

A surface bound to a loopback address (127.0.0.0/8, ::1) answers without a token, as
before; bound to anything else it requires `Authorization: Bearer <secret>` of a token
whose scopes include its own (or `all`), and it does not listen while no such token exists.
A request that carries an `Origin` (a browser's) is refused with 403 unless the origin is a
loopback one (`http://localhost:*`, `http://127.0.0.1:*`, `http://[::1]:*`) or listed in the
surface's `origins` option. See docs/design/http-auth.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from loomd.errors import LoomdError

if TYPE_CHECKING:
    from loomd.state.kv import KV

__all__ = [
    "NAMESPACE",
    "SCOPES",
    "HttpGuard",
    "Refusal",
    "TokenInfo",
    "TokenStore",
    "is_loopback",
    "origin_allowed",
]

log = logging.getLogger(__name__)

NAMESPACE = "http-tokens"  # the state namespace: `t/<name>` records, `u/<name>` last use
SCOPES = ("status", "openai", "mcp", "all")
SECRET_PREFIX = "loomd_"
TOUCH_EVERY_S = 60.0  # "last used" is written at most once a minute per token and surface
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LOOPBACK_HOSTS = ("localhost",)


def is_loopback(bind: str) -> bool:
    """Whether an address to listen on is reachable from this host only."""
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind in _LOOPBACK_HOSTS


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    """A browser's `Origin` may call: a loopback origin (any port) or one listed exactly."""
    origin = origin.strip().rstrip("/").lower()
    if origin in (o.rstrip("/").lower() for o in allowed):
        return True
    try:
        parts = urlsplit(origin)
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and is_loopback(host)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scopes: tuple[str, ...]
    created: float
    last_used: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": list(self.scopes)}


def parse_scopes(value: Any) -> tuple[str, ...]:
    """`"status,openai"` or a list: the scopes, checked."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    scopes = tuple(dict.fromkeys(str(s).strip() for s in items if str(s).strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise LoomdError(
            f"bad token scope {', '.join(bad) or '(none)'}: expected one or more of "
            f"{', '.join(SCOPES)}, comma-separated"
        )
    return scopes


class TokenStore:
    """Tokens in one state namespace. Only sha256 digests of the secrets are stored; a
    lookup reads the namespace each time, so a revoked token is refused on the next
    request and a new one works at once, in every surface and without a restart."""

    def __init__(self, kv: KV, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.clock = clock
        self._touched: dict[str, float] = {}

    async def create(self, name: str, scopes: Any) -> str:
        """Store a new token; returns its secret (shown once, never stored)."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise LoomdError(
                f"bad token name {name!r}: 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        chosen = parse_scopes(scopes)
        if self.kv.get(f"t/{name}") is not None:
            raise LoomdError(f"a token named {name!r} exists; revoke it first")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
        record = {"sha256": _digest(secret), "scopes": list(chosen), "created": self.clock()}
        await self.kv.put(f"t/{name}", record)
        log.info("http token %r created (scopes %s)", name, ",".join(chosen))
        return secret

    async def revoke(self, name: str) -> bool:
        found = await self.kv.delete(f"t/{name}")
        if found:
            await self.kv.delete(f"u/{name}")
            log.info("http token %r revoked", name)
        return found

    def list(self) -> list[TokenInfo]:
        used = {k[2:]: v for k, v in self.kv.items("u/")}
        return [
            TokenInfo(k[2:], tuple(rec["scopes"]), float(rec["created"]), used.get(k[2:]))
            for k, rec in self.kv.items("t/")
        ]

    def has(self, scope: str) -> bool:
        """Whether some token may use `scope`."""
        return any(scope in r["scopes"] or "all" in r["scopes"] for _, r in self.kv.items("t/"))

    def verify(self, secret: str, scope: str) -> str | None:
        """The name of the token whose secret this is, if it may use `scope`; else None.
        Every stored digest is compared in constant time, with no early exit."""
        digest = _digest(secret)
        match: tuple[str, list[str]] | None = None
        for key, rec in self.kv.items("t/"):
            if hmac.compare_digest(rec["sha256"], digest):
                match = (key[2:], rec["scopes"])
        if match is None or not (scope in match[1] or "all" in match[1]):
            return None
        self._touch(match[0])
        return match[0]

    def _touch(self, name: str) -> None:
        now = self.clock()
        if now - self._touched.get(name, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[name] = now
        try:
            fut = self.kv.put_nowait(f"u/{name}", now)
        except LoomdError as exc:  # over quota, say: the request still goes through
            log.warning("http token %r: last use not recorded: %s", name, exc)
            return
        fut.add_done_callback(_log_failure)


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("http token last use not recorded: %s", fut.exception())


@dataclass(frozen=True)
class Refusal:
    status: int  # 401 or 403
    message: str


class HttpGuard:
    """One surface's rule: `check(authorization, origin)` -> None (serve) or a Refusal.

    `store` is called per request (the state store may open after the surface is built).
    """

    def __init__(
        self,
        store: Callable[[], TokenStore],
        scope: str,
        bind: str,
        origins: Sequence[str] = (),
        option: str = "",
    ) -> None:
        self.store, self.scope, self.bind = store, scope, bind
        self.origins = tuple(origins)
        self.option = option  # the setting that chose the bind address, for messages
        self.required = not is_loopback(bind)
        self.unauthorized = 0
        self.forbidden = 0

    def missing_token(self) -> str | None:
        """Why the surface must not listen yet (bound beyond loopback, no token to
        accept), naming the option and the fix; None when it may."""
        if not self.required or self.store().has(self.scope):
            return None
        return (
            f"{self.option} = {self.bind!r} is beyond loopback, so bearer tokens are required, "
            f"and no token has scope {self.scope!r}: run `loomctl tokens create NAME --scope "
            f'{self.scope}` (it starts listening then), or set {self.option} = "127.0.0.1"'
        )

    async def wait_for_token(self, every_s: float = 1.0, preload: Sequence[str] = ()) -> None:
        """Return once a token for this surface exists (polls the store: a read of a
        few keys, so a refused surface starts within `every_s` of `loomctl tokens create`).
        Then imports `preload` (the surface's HTTP stack) in a worker thread: imported on
        the loop, it stalled other clients by 0.3-0.7 s here (bench/hostile.py)."""
        # The state store has no change notification to wait on; one read a second while
        # refused costs nothing, and `tokens` needs no link to the surfaces.
        while self.missing_token() is not None:  # noqa: ASYNC110
            await asyncio.sleep(every_s)
        for module in preload:
            await asyncio.to_thread(importlib.import_module, module)

    def describe(self) -> str:
        if not self.required:
            return "loopback only, no token needed"
        return f"beyond loopback: bearer tokens required (scope {self.scope})"

    def check(self, authorization: str | None, origin: str | None) -> Refusal | None:
        if origin is not None and not origin_allowed(origin, self.origins):
            self.forbidden += 1
            return Refusal(403, f"origin {origin!r} is not allowed")
        if not self.required:
            return None
        scheme, _, secret = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            self.unauthorized += 1
            return Refusal(401, "a bearer token is required (Authorization: Bearer ...)")
        if self.store().verify(secret.strip(), self.scope) is None:
            self.unauthorized += 1
            return Refusal(401, "invalid or revoked token")
        return None
