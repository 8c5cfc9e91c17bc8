"""The OpenAI-compatible endpoint, driven by the official `openai` package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port

from .conftest import HostFactory, run
from .test_chat import llm_of

openai = pytest.importorskip("openai")


def test_openai_client_chat_stream_and_policy_header(llm_host: HostFactory, tiny: Path) -> None:
    port = free_port()

    async def body() -> None:
        async with llm_host(model=tiny, http_port=port) as host:
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            try:
                models = await client.models.list()
                assert [m.id for m in models.data] == ["tiny-random"]
                r = await client.chat.completions.create(
                    model="tiny-random",
                    messages=[{"role": "user", "content": "hello"}],
                    max_tokens=6,
                )
                assert r.choices[0].message.content and r.usage is not None
                assert r.usage.completion_tokens > 0
                parts = []
                stream = await client.chat.completions.create(
                    model="tiny-random",
                    messages=[{"role": "user", "content": "hello"}],
                    max_tokens=6,
                    stream=True,
                )
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                assert parts
                llm = llm_of(host)  # both went through the router
                assert llm.routes.get("local") == 2
            finally:
                await client.close()

    run(body())


def test_openai_client_sees_a_denial_as_an_error(llm_host: HostFactory, tmp_path: Path) -> None:
    port = free_port()

    async def body() -> None:
        async with llm_host(http_port=port):  # no model at all
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            try:
                with pytest.raises(openai.PermissionDeniedError) as err:
                    await client.chat.completions.create(
                        model="x",
                        messages=[{"role": "user", "content": "hello"}],
                        extra_headers={"X-Loomd-Privacy": "private"},
                    )
                assert "no local model" in str(err.value)
                with pytest.raises(openai.BadRequestError):
                    await client.chat.completions.create(model="x", messages=[])
            finally:
                await client.close()

    run(body())


@pytest.mark.models
def test_openai_client_json_schema(llm_host: HostFactory, smol: Path) -> None:
    port = free_port()
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }

    async def body() -> None:
        async with llm_host(model=smol, http_port=port, threads=1):
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            try:
                r = await client.chat.completions.create(
                    model="smol",
                    messages=[{"role": "user", "content": "Name a city."}],
                    max_tokens=32,
                    temperature=0.2,
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "city", "schema": schema},
                    },
                )
                value = json.loads(r.choices[0].message.content or "")
                assert isinstance(value["city"], str)
            finally:
                await client.close()

    run(body(), timeout=120)
