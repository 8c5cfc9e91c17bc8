"""An OpenAI-compatible endpoint on 127.0.0.1 (off by default), through the router.

Each `/v1/chat/completions` becomes a `ChatRequest` on `llm.chat`, so HTTP clients (the
`openai` package, LangChain, Home Assistant's OpenAI-compatible agents) get the same
policy, decisions and queue as everything else. The policy rides in headers
(`X-Loomd-Privacy`, `X-Loomd-Allow-Cloud`) or defaults to `[llm.policy]`. Tools work as
in OpenAI's API: `tools`, `tool_choice`, assistant `tool_calls` and `role: tool` messages
in; `tool_calls` out (arguments as a JSON string, `finish_reason: "tool_calls"`), streamed
or not (loomd/router/openai_wire.py, docs/design/tools.md).
aiohttp is imported when the endpoint starts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from loomd.bus.api import Bus
from loomd.messages import ChatChunk, ChatDone, ChatRequest, EventType, Policy, Topic
from loomd.router.openai_wire import (
    calls_to_wire,
    choice_from_wire,
    messages_from_wire,
    tools_from_wire,
)
from loomd.web.auth import HttpGuard

__all__ = ["HttpEndpoint"]

log = logging.getLogger(__name__)


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
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        @web.middleware
        async def auth(request: Any, handler: Any) -> Any:
            return await self._auth(request, handler)

        app = web.Application(middlewares=[auth])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _auth(self, request: Any, handler: Any) -> Any:
        """Every route: 403 for a foreign browser origin, 401 without a valid token when
        bound beyond loopback (an OpenAI-style error body, so clients raise the right error)."""
        from aiohttp import web

        refusal = self.guard.check(
            request.headers.get("Authorization"), request.headers.get("Origin")
        )
        if refusal is None:
            return await handler(request)
        kind = "invalid_api_key" if refusal.status == 401 else "forbidden"
        body = {"error": {"message": refusal.message, "type": kind, "code": refusal.status}}
        headers = {"WWW-Authenticate": 'Bearer realm="loomd"'} if refusal.status == 401 else {}
        return web.json_response(body, status=refusal.status, headers=headers)

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        model = {"id": self.model_name, "object": "model", "owned_by": "loomd", "created": 0}
        return web.json_response({"object": "list", "data": [model]})

    def _error(self, status: int, message: str) -> Any:
        from aiohttp import web

        self.errors += 1
        body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
        return web.json_response(body, status=status)

    async def _chat(self, request: Any) -> Any:
        from aiohttp import web

        from loomd.errors import LoomdError

        self.requests += 1
        try:
            body = await request.json()
            req = _request(body, request.headers)
            if not req.messages:
                raise ValueError("messages is empty")
        except (ValueError, TypeError, AttributeError, LoomdError) as exc:
            return self._error(400, f"bad request: {exc}")
        cid = "chatcmpl-" + os.urandom(8).hex()
        created = int(time.time())
        stream = bool(body.get("stream"))
        thread = os.urandom(16)
        reply_to = f"thread.{thread.hex()}.reply"
        resp: Any = None
        async with self.bus.subscribe(reply_to, "reliable") as sub:
            await sub.ready()
            ev = await self.bus.publish(
                Topic.LLM_CHAT, req.to_payload(), thread_id=thread, reply_to=reply_to
            )
            if stream:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
            async for reply in sub:
                if reply.correlation_id != ev.id:
                    continue
                if reply.type == EventType.LLM_CHUNK and resp is not None:
                    delta: dict[str, Any] = {"content": ChatChunk.from_event(reply).text}
                    await resp.write(self._sse(cid, created, delta, None))
                elif reply.type == EventType.LLM_DONE:
                    done = ChatDone.from_payload(reply.payload)
                    if done.phase == "quick":
                        continue  # hybrid: HTTP answers with the refined phase
                    break
            else:
                return self._error(503, "the router went away")
        headers = {"X-Loomd-Route": done.route, "X-Loomd-Decision": done.decision_id}
        if done.error:
            status = 403 if done.route == "deny" else 503
            if resp is None:
                err = self._error(status, done.error)
                err.headers.update(headers)
                return err
            await resp.write(f"data: {json.dumps({'error': {'message': done.error}})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            return resp
        finish = "tool_calls" if done.tool_calls else "stop"
        if resp is not None:
            if done.tool_calls:
                delta = {
                    "role": "assistant",
                    "tool_calls": calls_to_wire(done.tool_calls, indexed=True),
                }
                await resp.write(self._sse(cid, created, delta, None))
            await resp.write(self._sse(cid, created, {}, finish))
            await resp.write(b"data: [DONE]\n\n")
            return resp
        message: dict[str, Any] = {"role": "assistant", "content": done.text}
        if done.tool_calls:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": calls_to_wire(done.tool_calls),
            }
        return web.json_response(
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
            headers=headers,
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
