"""Test clouds: llama-cpp-python's own OpenAI-compatible server (requests counted from its
access log), and a small misbehaving server of ours (401/429/500/garbage/silence)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import free_port

CHAT_LINE = '"POST /v1/chat/completions HTTP/1.1"'


class LlamaServer:
    def __init__(self, model: Path, log: Path, api_key: str = "") -> None:
        self.port = free_port()
        self.log = log
        self.api_key = api_key
        args = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(self.port), "--model_alias", "cloud",
            "--n_threads", "1", "--n_ctx", "2048", "--interrupt_requests", "False",
        ]  # fmt: skip
        if api_key:
            args += ["--api_key", api_key]
        self._out = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        req = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama_cpp.server died:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(req, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama_cpp.server not ready:\n{self.log.read_text()}")
            time.sleep(0.1)

    def chat_requests(self) -> int:
        """Chat completions the server has received (one access-log line each)."""
        return self.log.read_text(errors="replace").count(CHAT_LINE)

    @contextlib.contextmanager
    def asked(self, n: int) -> Iterator[None]:
        """The block must send the server exactly `n` chat completions."""
        before = self.chat_requests()
        yield
        assert self.chat_requests() == before + n

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()


def _sse(text: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


class BadCloud:
    """`http://127.0.0.1:PORT/<mode>/v1`: mode is one of ok, auth, rate-once, rate, error,
    garbage, silence, cut, tools, badtool. Runs on the test's own loop (aiohttp.web).

    `tools` is a peer speaking OpenAI's streamed tool-call wire format the way OpenAI does
    (id and name in the first delta only, the arguments string in fragments, two calls by
    index, finish_reason "tool_calls") for the tools the request offered; `badtool` calls a
    tool the request did not offer. The last request body is kept in `bodies`."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.bodies: dict[str, Any] = {}
        self.port = 0
        self._runner: Any = None
        self._closing = asyncio.Event()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    async def __aenter__(self) -> BadCloud:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/{mode}/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()  # releases the silent handlers
        await self._runner.cleanup()

    async def _chat(self, request: Any) -> Any:
        from aiohttp import web

        mode = request.match_info["mode"]
        n = self.hits[mode] = self.hits.get(mode, 0) + 1
        self.bodies[mode] = json.loads(await request.read() or b"null")
        if mode == "auth":
            return web.Response(status=401, text="bad key")
        if mode == "rate" or (mode == "rate-once" and n == 1):
            return web.Response(status=429, text="slow down")
        if mode == "error":
            return web.Response(status=500, text="boom")
        if mode == "silence":
            await self._closing.wait()
            return web.Response(status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if mode == "garbage":
            await resp.write(b"<html>not an event stream</html>\n")
            return resp
        if mode in ("tools", "badtool"):
            await self._tool_calls(resp, mode)
            return resp
        for word in ("hello", " from", " the", " cloud"):
            await resp.write(_sse(word))
        usage = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _tool_calls(self, resp: Any, mode: str) -> None:
        body = self.bodies[mode]
        names = [t["function"]["name"] for t in body.get("tools") or []]
        first = names[0] if mode == "tools" else "not_offered"
        plan = [(0, "call_a1", first, ['{"on"', ": tr", "ue}"])]
        if mode == "tools" and len(names) > 1:
            plan.append((1, "call_b2", names[1], ["{", "}"]))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            c = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(c)}\n\n".encode()

        await resp.write(chunk({"role": "assistant", "content": None}))
        for index, cid, name, parts in plan:
            head = {"index": index, "id": cid, "type": "function",
                    "function": {"name": name, "arguments": ""}}  # fmt: skip
            await resp.write(chunk({"tool_calls": [head]}))
            for part in parts:
                await resp.write(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
                )
        await resp.write(chunk({}, "tool_calls"))
        await resp.write(b"data: [DONE]\n\n")
