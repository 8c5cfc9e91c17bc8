"""The cloud: any OpenAI-compatible `/chat/completions`, streamed, behind the policy.

The client refuses (and counts) any request whose policy keeps it on the board, even if
`decide()` were wrong: privacy is enforced twice. Retries with backoff on 429/5xx and
connection errors before the first token; a circuit breaker marks the cloud unreachable
after repeated failures; spend is counted from the returned usage (or estimated) into an
LMDB ledger with daily and monthly totals that survive restarts. aiohttp is imported
when the client opens, never at module import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loomd.config import read_credential
from loomd.errors import LoomdError
from loomd.messages import ToolCall, ToolSpec
from loomd.router.openai_wire import CallAssembler, choice_to_wire, tools_to_wire
from loomd.router.policy import ON_BOARD, Resolved
from loomd.router.settings import CloudSettings

__all__ = [
    "Breaker",
    "CloudClient",
    "CloudError",
    "CloudRefused",
    "CloudResult",
    "Ledger",
    "read_key",
]

log = logging.getLogger(__name__)

SPEND_NS = "llm.spend"


class CloudRefused(LoomdError):
    """The policy forbids the cloud for this request."""


class CloudError(LoomdError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # auth | rate | server | garbage | timeout | connect | cap


def read_key(s: CloudSettings, env: dict[str, str] | None = None) -> str:
    """The key from systemd's credential directory (LoadCredential=) or the environment."""
    env = dict(os.environ) if env is None else env
    key = read_credential(s.key_name, env)
    if key is not None:
        return key.strip()
    return env.get(s.key_env, "").strip() if s.key_env else ""


class Breaker:
    """Closed -> open after `failures` in a row -> half-open after `open_s` (one trial)."""

    def __init__(self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic):
        self.limit = failures
        self.open_s = open_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error = ""

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.open_s else "open"

    def ok(self) -> None:
        self.failures, self.opened_at, self.last_error = 0, None, ""

    def fail(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if self.failures >= self.limit or self.opened_at is not None:
            self.opened_at = self.clock()


class Ledger:
    """Spend per UTC day and month in LMDB (`llm.spend`)."""

    def __init__(self, kv: Any, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.clock = clock

    def _keys(self) -> tuple[str, str]:
        t = time.gmtime(self.clock())
        return time.strftime("day/%Y-%m-%d", t), time.strftime("month/%Y-%m", t)

    def today(self) -> float:
        return float(self.kv.get(self._keys()[0], 0.0))

    def month(self) -> float:
        return float(self.kv.get(self._keys()[1], 0.0))

    async def add(self, cost: float) -> None:
        day, month = self._keys()
        await asyncio.gather(
            self.kv.put(day, self.today() + cost), self.kv.put(month, self.month() + cost)
        )


@dataclass
class CloudResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    ttft_ms: float
    attempts: int
    tool_calls: tuple[ToolCall, ...] = ()
    finish: str = ""


class CloudClient:
    def __init__(self, settings: CloudSettings, ledger: Ledger, key: str = "") -> None:
        self.settings = settings
        self.ledger = ledger
        self.key = key
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_open_s)
        self.counts = {"requests": 0, "refused": 0, "errors": 0, "retries": 0}
        self._session: Any = None

    @property
    def configured(self) -> bool:
        return bool(self.settings.base_url and self.settings.model)

    async def open(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        s = self.settings
        return (prompt_tokens * s.price_in_per_1k + completion_tokens * s.price_out_per_1k) / 1000

    async def chat(
        self,
        messages: list[dict[str, Any]],
        policy: Resolved,
        *,
        max_tokens: int,
        temperature: float,
        json_schema: dict[str, Any] | None = None,
        tools: tuple[ToolSpec, ...] = (),
        tool_choice: str = "auto",
        on_token: Callable[[str], Awaitable[None]] | None = None,
    ) -> CloudResult:
        """One streamed completion; `messages` in OpenAI's wire format (openai_wire).
        With `tools`, the calls the model makes come back in `CloudResult.tool_calls`."""
        if policy.privacy in ON_BOARD or not policy.allow_cloud:
            self.counts["refused"] += 1
            why = f"privacy {policy.privacy}" if policy.privacy in ON_BOARD else "allow_cloud off"
            raise CloudRefused(f"cloud refused: {why} keeps this request on the board")
        s = self.settings
        if self.ledger.today() >= s.daily_cap > 0 or self.ledger.month() >= s.monthly_cap > 0:
            raise CloudError("cap", "cloud spend cap reached")
        if self.breaker.state == "open":
            raise CloudError("connect", f"cloud circuit open ({self.breaker.last_error})")
        body: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = tools_to_wire(tools)
            body["tool_choice"] = choice_to_wire(tool_choice)
        if json_schema is not None:
            body["response_format"] = (
                {"type": "json_object", "schema": json_schema}
                if s.schema_style == "json_object"
                else {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": json_schema},
                }
            )
        attempt = 0
        while True:
            attempt += 1
            self.counts["requests"] += 1
            streamed: list[str] = []
            try:
                result = await self._once(body, streamed, on_token)
            except CloudError as exc:
                retry = exc.kind in ("rate", "server", "connect", "timeout") and not streamed
                if retry and attempt <= s.retries:
                    self.counts["retries"] += 1
                    await asyncio.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
                    continue
                self.counts["errors"] += 1
                self.breaker.fail(str(exc))
                raise
            self.breaker.ok()
            result.attempts = attempt
            result.cost = self.cost(result.prompt_tokens, result.completion_tokens)
            await self.ledger.add(result.cost)
            return result

    async def _once(
        self,
        body: dict[str, Any],
        streamed: list[str],
        on_token: Callable[[str], Awaitable[None]] | None,
    ) -> CloudResult:
        import aiohttp

        s = self.settings
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        url = s.base_url.rstrip("/") + "/chat/completions"
        timeout = aiohttp.ClientTimeout(total=s.timeout_s, sock_read=s.timeout_s)
        began = time.perf_counter()
        first = 0.0
        usage: dict[str, Any] = {}
        calls = CallAssembler()
        finish = ""
        try:
            async with self._session.post(url, json=body, headers=headers, timeout=timeout) as r:
                if r.status in (401, 403):
                    raise CloudError("auth", f"cloud refused the key (HTTP {r.status})")
                if r.status == 429:
                    raise CloudError("rate", "cloud rate limit (HTTP 429)")
                if r.status >= 500:
                    raise CloudError("server", f"cloud server error (HTTP {r.status})")
                if r.status != 200:
                    raise CloudError("server", f"cloud answered HTTP {r.status}")
                async for raw in r.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line or line.startswith(":"):
                        continue
                    if not line.startswith("data:"):
                        raise CloudError("garbage", f"cloud sent garbage: {line[:60]!r}")
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                        usage = chunk.get("usage") or usage
                        choices = chunk.get("choices") or []
                        delta = (choices[0].get("delta") or {}) if choices else {}
                        text = delta.get("content")
                        calls.feed(delta.get("tool_calls"))
                        finish = (choices[0].get("finish_reason") if choices else "") or finish
                    except (ValueError, AttributeError, IndexError, LoomdError) as exc:
                        raise CloudError("garbage", f"cloud sent garbage: {exc}") from None
                    if text:
                        if not streamed:
                            first = time.perf_counter()
                        streamed.append(text)
                        if on_token is not None:
                            await on_token(text)
                else:
                    if not streamed and not calls:
                        raise CloudError("garbage", "cloud stream ended without [DONE]")
        except TimeoutError:
            raise CloudError("timeout", f"cloud silent for {s.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise CloudError("connect", f"cloud unreachable: {exc}") from None
        text = "".join(streamed)
        try:
            tool_calls = calls.calls()
        except LoomdError as exc:
            raise CloudError("garbage", f"cloud sent a bad tool call: {exc}") from None
        prompt = int(
            usage.get("prompt_tokens")
            or sum(len(str(m.get("content") or "")) // 4 + 4 for m in body["messages"])
        )
        completion = int(usage.get("completion_tokens") or len(streamed))
        return CloudResult(
            text, prompt, completion, 0.0, (first - began) * 1000 if first else 0.0, 0,
            tool_calls, finish,
        )  # fmt: skip
