"""An OpenAI-compatible endpoint on 127.0.0.1 (off by default), through the router.

Each `/v1/chat/completions` becomes a `ChatRequest` on `llm.chat`, so HTTP clients (the
`openai` package, LangChain, Home Assistant's OpenAI-compatible agents) get the same
policy, decisions and queue as everything else. The policy rides in headers
(`X-Loomd-Privacy`, `X-Loomd-Allow-Cloud`) or defaults to `[llm.policy]`. Tools work as
in OpenAI's API: `tools`, `tool_choice`, assistant `tool_calls` and `role: tool` messages
in; `tool_calls` out (arguments as a JSON string, `finish_reason: "tool_calls"`), streamed
or not (loomd/router/openai_wire.py, docs/design/tools.md).
An ASGI app on the daemon's one HTTP stack (`loomd.web.server`, uvicorn), imported when
the endpoint starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from loomd.bus.api import Bus
from loomd.messages import ChatChunk, ChatDone, ChatRequest, EventType, Policy, Topic
from loomd.router.openai_wire import (
    calls_to_wire,
    choice_from_wire,
    messages_from_wire,
    tools_from_wire,
)
from loomd.web.auth import HttpGuard, Refusal

if TYPE_CHECKING:
    from loomd.web.server import HttpServer, Receive, Scope, Send

__all__ = ["HttpEndpoint"]

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes of one request (aiohttp's default limit, which this had before)
JSON = "application/json; charset=utf-8"
SSE_HEADERS = [(b"Content-Type", b"text/event-stream"), (b"Cache-Control", b"no-cache")]


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _refusal(refusal: Refusal) -> tuple[bytes, str]:
    """401/403 as an OpenAI-style error body, so clients raise the right error."""
    kind = "invalid_api_key" if refusal.status == 401 else "forbidden"
    body = {"error": {"message": refusal.message, "type": kind, "code": refusal.status}}
    return json.dumps(body).encode(), JSON


def _policy(headers: Any) -> Policy:
    privacy = headers.get("X-Loomd-Privacy")
    allow = headers.get("X-Loomd-Allow-Cloud")
    return Policy(
        privacy=privacy or None,
        allow_cloud=None if allow is None else allow.strip().lower() in ("1", "true", "yes"),
    )


def _request(body: dict[str, Any], headers: Any) -> ChatRequest:
    msgs = messages_from_wire(body.get("messages") or [])
    tools = tools_from_wire(body.get("tools"))
    schema = None
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
    elif rf.get("type") == "json_object":
        schema = rf.get("schema") or {"type": "object"}
    return ChatRequest(
        msgs,
        policy=_policy(headers),
        max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
        temperature=float(body.get("temperature", 0.7)),
        stream=True,
        priority="interactive",
        json_schema=schema,
        agent=str(headers.get("X-Loomd-Agent", "http")),
        tools=tools,
        tool_choice=choice_from_wire(body.get("tool_choice")),
    )


def _no_tokens() -> Any:
    from loomd.errors import LoomdError

    raise LoomdError("no token store: bind the endpoint to loopback")


class HttpEndpoint:
    def __init__(
        self, bus: Bus, bind: str, port: int, model_name: str, guard: HttpGuard | None = None
    ) -> None:
        self.bus = bus
        self.guard = guard or HttpGuard(_no_tokens, "openai", bind)
        self.listening = False
        self.bind = bind
        self.port = port
        self.model_name = model_name or "loomd"
        self.requests = 0
        self.errors = 0
        self._server: HttpServer | None = None

    async def start(self) -> None:
        from loomd.web.server import HttpServer, guarded

        app = guarded(self._asgi, self.guard, _refusal)
        server = HttpServer(app, self.bind, self.port, name="openai")
        await server.start()
        self._server, self.port = server, server.port
        self.listening = True
        log.info("llm: OpenAI-compatible endpoint on %s (%s)", self.url, self.guard.describe())

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/v1"

    def describe(self) -> str:
        """For `loomctl status`: where it listens and whether tokens are needed."""
        if not self.listening:
            return f"not listening: {self.guard.missing_token() or 'stopped'}"
        g = self.guard
        return f"{self.url}, {g.describe()}; {g.unauthorized + g.forbidden} refused"

    async def stop(self) -> None:
        self.listening = False
        if self._server is not None:
            server, self._server = self._server, None
            await server.close()

    # -- the ASGI app ------------------------------------------------------------------------
    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route = {"/v1/models": ("GET", self._models), "/v1/chat/completions": ("POST", self._chat)}
        found = route.get(scope["path"])
        if found is None:
            await _json(send, 404, {"error": {"message": "not found", "code": 404}})
            return
        method, handler = found
        if scope["method"] != method and not (method == "GET" and scope["method"] == "HEAD"):
            await _json(send, 405, {"error": {"message": "method not allowed", "code": 405}},
                        [("Allow", method)])  # fmt: skip
            return
        body = b""
        if method == "POST":
            try:
                got = await _read_body(receive)
            except _HttpError as exc:
                await self._error(send, exc.status, str(exc))
                return
            if got is None:
                return  # the client went before it finished asking
            body = got
        # The handler runs until it is done or the client goes, whichever is first: a
        # client that leaves mid-stream unsubscribes, and the router stops its turn.
        work = asyncio.ensure_future(handler(scope, body, send))
        gone = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, gone, return_exceptions=True)
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

    async def _models(self, scope: Scope, body: bytes, send: Send) -> None:
        model = {"id": self.model_name, "object": "model", "owned_by": "loomd", "created": 0}
        await _json(send, 200, {"object": "list", "data": [model]})

    async def _error(self, send: Send, status: int, message: str,
                     headers: list[tuple[str, str]] | None = None) -> None:  # fmt: skip
        self.errors += 1
        body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
        await _json(send, status, body, headers or [])

    async def _chat(self, scope: Scope, raw: bytes, send: Send) -> None:
        from loomd.errors import LoomdError
        from loomd.web.server import header_map

        self.requests += 1
        headers = _Headers(header_map(scope))
        try:
            body = json.loads(raw)
            req = _request(body, headers)
            if not req.messages:
                raise ValueError("messages is empty")
        except (ValueError, TypeError, AttributeError, LoomdError) as exc:
            await self._error(send, 400, f"bad request: {exc}")
            return
        cid = "chatcmpl-" + os.urandom(8).hex()
        created = int(time.time())
        stream = bool(body.get("stream"))
        thread = os.urandom(16)
        reply_to = f"thread.{thread.hex()}.reply"

        async def chunk(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async with self.bus.subscribe(reply_to, "reliable") as sub:
            await sub.ready()
            ev = await self.bus.publish(
                Topic.LLM_CHAT, req.to_payload(), thread_id=thread, reply_to=reply_to
            )
            if stream:
                await send({"type": "http.response.start", "status": 200,
                            "headers": SSE_HEADERS})  # fmt: skip
            async for reply in sub:
                if reply.correlation_id != ev.id:
                    continue
                if reply.type == EventType.LLM_CHUNK and stream:
                    delta: dict[str, Any] = {"content": ChatChunk.from_event(reply).text}
                    await chunk(self._sse(cid, created, delta, None))
                elif reply.type == EventType.LLM_DONE:
                    done = ChatDone.from_payload(reply.payload)
                    if done.phase == "quick":
                        continue  # hybrid: HTTP answers with the refined phase
                    break
            else:
                if stream:
                    await send({"type": "http.response.body", "body": b""})
                else:
                    await self._error(send, 503, "the router went away")
                return
        route = [("X-Loomd-Route", done.route), ("X-Loomd-Decision", done.decision_id)]
        if done.error:
            status = 403 if done.route == "deny" else 503
            if not stream:
                await self._error(send, status, done.error, route)
                return
            await chunk(f"data: {json.dumps({'error': {'message': done.error}})}\n\n".encode())
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        finish = "tool_calls" if done.tool_calls else "stop"
        if stream:
            if done.tool_calls:
                delta = {
                    "role": "assistant",
                    "tool_calls": calls_to_wire(done.tool_calls, indexed=True),
                }
                await chunk(self._sse(cid, created, delta, None))
            await chunk(self._sse(cid, created, {}, finish))
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        message: dict[str, Any] = {"role": "assistant", "content": done.text}
        if done.tool_calls:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": calls_to_wire(done.tool_calls),
            }
        await _json(
            send,
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": self.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": 0,
                    "completion_tokens": done.tokens,
                    "total_tokens": done.tokens,
                },
            },
            route,
        )

    def _sse(self, cid: str, created: int, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()


class _Headers:
    """Request headers looked up case-insensitively (`X-Loomd-Privacy`)."""

    def __init__(self, by_lower_name: dict[str, str]) -> None:
        self._h = by_lower_name

    def get(self, name: str, default: Any = None) -> Any:
        return self._h.get(name.lower(), default)


async def _json(
    send: Send, status: int, data: Any, headers: list[tuple[str, str]] | None = None
) -> None:
    from loomd.web.server import respond

    await respond(send, status, json.dumps(data).encode(), JSON, headers or [])


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, at most MAX_BODY bytes (413 beyond); None if the client went."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            raise _HttpError(413, f"request body over {MAX_BODY} bytes")
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _until_disconnect(receive: Receive) -> None:
    """Returns when the client goes (the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
