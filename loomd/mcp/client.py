"""MCP client: one supervised connection per configured server, its tools as capabilities
`server:tool`.

The `mcp` package is imported inside `run()`, never at module top. A connection is:
spawn (stdio) or connect (Streamable HTTP) -> initialize (with a deadline) -> list tools ->
register them -> serve calls until the server exits, stops answering pings, or times out
`hang_limit` calls in a row -> unregister (in-flight calls fail with `provider_unavailable`
at once) -> back off (capped) -> again. `notifications/tools/list_changed` re-lists the tools.

What a server does back on the bus, it does as itself (`bus`: a handle whose identity is
`mcp:<server>`, never the daemon's): its log messages are published on `mcp.log.<server>`
and its sampling requests (`sampling/createMessage`) go to the router as `llm.chat` turns;
the `[[acl]]` rules decide whether it may (a refusal is a `forbidden` answer to the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from loomd.agents.broker import (
    ActionBroker,
    CapabilityError,
    InvalidParams,
    Provider,
    ProviderUnavailable,
    unless_gone,
)
from loomd.agents.capability import CapabilitySpec
from loomd.config import Section, option
from loomd.errors import LoomdError
from loomd.messages import ChatDone, ChatMessage, ChatRequest, ErrorCode, McpLog, Topic

__all__ = ["McpProvider", "McpServerSettings", "McpSupervisor"]

log = logging.getLogger("loomd.mcp.client")


def _is_name(value: str) -> bool:
    return bool(value) and all(c.isalnum() or c in "_-" for c in value)


@dataclass(frozen=True)
class McpServerSettings(Section):
    """One `[[mcp.servers]]` entry: a stdio `command` or a Streamable HTTP `url`."""

    SECTION: ClassVar[str] = ""

    name: str = option("", valid=_is_name, expected="a name of letters, digits, _ and -")
    command: str = option("")
    args: tuple[str, ...] = option(factory=tuple)
    env: Mapping[str, str] = option(factory=dict)
    cwd: str = option("")
    url: str = option("")
    call_timeout_s: float = option(30.0, min=0.01, max=3600.0)
    init_timeout_s: float = option(15.0, min=0.1, max=600.0)
    ping_interval_s: float = option(5.0, min=0.1, max=3600.0)
    hang_limit: int = option(2, min=1, max=100)
    backoff_max_s: float = option(30.0, min=0.1, max=3600.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        from loomd.errors import ConfigError

        if bool(self.command) == bool(self.url):
            raise ConfigError("command", self.command or self.url, "exactly one of command or url")


class McpProvider(Provider):
    kind = "mcp"

    def __init__(self, name: str) -> None:
        self.id = name
        self.session: Any = None
        self.dead: asyncio.Future[None] | None = None
        self.timeouts = 0  # consecutive
        self.on_hang: Callable[[], None] = lambda: None
        self.call_timeout_s = 30.0

    async def invoke(self, spec: CapabilitySpec, params: dict[str, Any], left: float) -> Any:
        session, dead = self.session, self.dead
        if session is None or dead is None or dead.done():
            raise ProviderUnavailable(f"MCP server {self.id} is not connected")
        from mcp.shared.exceptions import MCPError

        tool = spec.name.split(":", 1)[1]
        limit = min(left, self.call_timeout_s)
        call = asyncio.ensure_future(session.call_tool(tool, params, read_timeout_seconds=limit))
        try:
            result = await unless_gone(call, dead, f"MCP server {self.id}")
        except MCPError as exc:
            code = exc.error.code
            if code == -32001:  # request timeout
                self.timeouts += 1
                self.on_hang()
                raise TimeoutError from None
            if code == -32000:  # connection closed
                raise ProviderUnavailable(f"MCP server {self.id}: {exc.error.message}") from None
            if code == -32602:
                raise InvalidParams(exc.error.message) from None
            raise CapabilityError(f"MCP error {code}: {exc.error.message}") from None
        self.timeouts = 0
        text = "\n".join(getattr(c, "text", "") for c in result.content if hasattr(c, "text"))
        if result.is_error:
            raise CapabilityError(text or "the tool reported an error")
        if result.structured_content is not None:
            return result.structured_content
        with contextlib.suppress(ValueError):
            return json.loads(text)
        return text


class McpSupervisor:
    """Keeps one MCP server connected and its tools registered in `broker`."""

    def __init__(
        self,
        settings: McpServerSettings,
        broker: ActionBroker,
        *,
        report: Callable[[ErrorCode, str], None] | None = None,
        on_tools: Callable[[], None] | None = None,
        bus: Any = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.bus = bus  # the server's own handle on the bus (identity `mcp:<name>`)
        self.logs = 0  # log messages published for it
        self.refused = 0  # what it asked of the bus and was not allowed
        self.provider = McpProvider(settings.name)
        self.provider.call_timeout_s = settings.call_timeout_s
        self.state = "created"
        self.restarts = 0
        self.last_error = ""
        self.tools: list[str] = []
        self._report = report or (lambda code, msg: log.error("%s", msg))
        self._on_tools = on_tools or (lambda: None)
        self._restart = asyncio.Event()
        self._relist = asyncio.Event()
        self.connected = asyncio.Event()

    def view(self) -> dict[str, Any]:
        return {
            "name": self.settings.name,
            "identity": f"mcp:{self.settings.name}",  # who it is on the bus
            "state": self.state,
            "tools": list(self.tools),
            "restarts": self.restarts,
            "last_error": self.last_error,
            "logs": self.logs,
            "refused": self.refused,
        }

    async def run(self) -> None:
        delay = 0.2
        while True:
            began = time.monotonic()
            try:
                await self._connect_once()
                why = "restart requested"
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # ExceptionGroup from anyio task groups too
                why = _describe(exc)
            finally:
                self._unregister()
            self.last_error = why
            self.restarts += 1
            self.state = "backoff"
            self._report(ErrorCode.MCP_SERVER_DOWN, f"MCP server {self.settings.name}: {why}")
            if time.monotonic() - began > 60:
                delay = 0.2
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.backoff_max_s)

    def _unregister(self) -> None:
        if self.provider.dead is not None and not self.provider.dead.done():
            self.provider.dead.set_result(None)
        self.provider.session = None
        self.broker.unregister_provider(self.provider)
        self.tools = []
        self.connected.clear()
        self._on_tools()

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        s = self.settings
        if s.url:
            from mcp.client.streamable_http import streamable_http_client

            async with streamable_http_client(s.url) as streams:
                yield streams[0], streams[1]
        else:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            params = StdioServerParameters(
                command=s.command,
                args=list(s.args),
                env={**os.environ, **s.env} if s.env else None,
                cwd=s.cwd or None,
            )
            # the server's stderr goes to the daemon's (journald): its complaints are useful
            async with stdio_client(params) as (r, w):
                yield r, w

    async def _connect_once(self) -> None:
        from mcp import ClientSession

        s = self.settings
        self.state = "starting"
        self._restart.clear()
        loop = asyncio.get_running_loop()
        dead: asyncio.Future[None] = loop.create_future()

        async def on_message(message: Any) -> None:
            if isinstance(message, Exception):
                log.warning("MCP server %s: transport error: %s", s.name, message)
                return
            method = getattr(getattr(message, "root", message), "method", "")
            if method == "notifications/tools/list_changed":
                self._relist.set()

        callbacks: dict[str, Any] = {}
        if self.bus is not None:
            callbacks = {"logging_callback": self._log, "sampling_callback": self._sample}
        async with (
            self._transport() as (read, write),
            ClientSession(read, write, message_handler=on_message, **callbacks) as session,
        ):
            try:
                async with asyncio.timeout(s.init_timeout_s):
                    await session.initialize()
            except TimeoutError:
                raise TimeoutError(
                    f"no answer to initialize within {s.init_timeout_s:g} s"
                ) from None
            self.provider.session = session
            self.provider.dead = dead
            self.provider.timeouts = 0
            self.provider.on_hang = self._hung
            await self._list(session)
            self.state = "running"
            self.connected.set()
            while True:
                relist = asyncio.ensure_future(self._relist.wait())
                restart = asyncio.ensure_future(self._restart.wait())
                try:
                    done, _ = await asyncio.wait(
                        (relist, restart), timeout=s.ping_interval_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )  # fmt: skip
                finally:
                    relist.cancel()
                    restart.cancel()
                if restart in done:
                    return
                if relist in done:
                    self._relist.clear()
                    await self._list(session)
                    continue
                try:  # a hung or vanished server stops answering pings
                    async with asyncio.timeout(min(s.call_timeout_s, 5.0)):
                        await session.send_ping()
                except TimeoutError:
                    raise TimeoutError("no answer to ping") from None

    def _hung(self) -> None:
        if self.provider.timeouts >= self.settings.hang_limit:
            log.warning(
                "MCP server %s: %d calls in a row timed out: restarting it",
                self.settings.name, self.provider.timeouts,
            )  # fmt: skip
            self._restart.set()

    async def _list(self, session: Any) -> None:
        result = await session.list_tools()
        self.broker.unregister_provider(self.provider)
        names = []
        for tool in result.tools:
            spec = CapabilitySpec(
                f"{self.settings.name}:{tool.name}",
                1,
                (tool.description or "").strip().split("\n")[0],
                dict(tool.input_schema or {"type": "object"}),
            )
            try:
                self.broker.register(spec, self.provider)
            except Exception as exc:
                self._report(ErrorCode.MCP_TOOL_REFUSED, f"MCP server {self.settings.name}: {exc}")
                continue
            names.append(spec.name)
        self.tools = names
        self._on_tools()

    async def restart(self) -> None:
        self._restart.set()

    # -- the server on the bus, as `mcp:<name>` -------------------------------------------------
    def _refused(self, what: str, exc: LoomdError) -> str:
        self.refused += 1
        log.info("MCP server %s: %s refused: %s", self.settings.name, what, exc)
        return str(exc)

    async def _log(self, params: Any) -> None:
        """`notifications/message`: on `mcp.log.<server>` (a refusal is only counted: the
        bus already says it on `loomd.error`, rate limited)."""
        name = self.settings.name
        msg = McpLog(name, str(params.level), params.data, str(params.logger or ""))
        try:
            await msg.publish(self.bus, f"{Topic.MCP_LOG}.{name}", wait=False)
        except LoomdError as exc:
            self._refused("a log message", exc)
            return
        self.logs += 1

    async def _sample(self, context: Any, params: Any) -> Any:
        """`sampling/createMessage`: one `llm.chat` turn of the router, asked as the server
        itself; its text content only (images and audio are refused)."""
        from mcp import types

        from loomd.router.client import chat_stream

        messages = [ChatMessage("system", params.system_prompt)] if params.system_prompt else []
        for m in params.messages:
            text = getattr(m.content, "text", None)
            if not isinstance(text, str):
                return types.ErrorData(code=types.INVALID_PARAMS, message="text content only")
            messages.append(ChatMessage(str(m.role), text))
        temperature = 0.7 if params.temperature is None else float(params.temperature)
        req = ChatRequest(
            tuple(messages),
            max_tokens=max(1, int(params.max_tokens)),
            temperature=temperature,
            stream=False,
            priority="background",
            agent=f"mcp-{self.settings.name}",
        )
        done: ChatDone | None = None
        try:
            async for piece in chat_stream(self.bus, req, timeout=self.settings.call_timeout_s):
                if isinstance(piece, ChatDone):
                    done = piece
        except LoomdError as exc:
            why = self._refused("a sampling request", exc)
            return types.ErrorData(code=types.INVALID_REQUEST, message=why)
        except TimeoutError:
            return types.ErrorData(code=types.INTERNAL_ERROR, message="the router did not answer")
        if done is None or done.error:
            why = done.error if done is not None else "no answer"
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"llm.chat: {why}")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=done.text),
            model=done.route or "loomd",
            stop_reason="endTurn",
        )


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
