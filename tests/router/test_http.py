"""The OpenAI-compatible endpoint, driven by the official `openai` package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port

from .conftest import SWITCH, HostFactory, run
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


SWITCH_TOOL = {"type": "function", "function": SWITCH}


def test_openai_client_tools_streamed_and_not(llm_host: HostFactory, tiny: Path) -> None:
    port = free_port()

    async def body() -> None:
        async with llm_host(model=tiny, http_port=port):
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            force = {"type": "function", "function": {"name": "switch"}}
            ask = [{"role": "user", "content": "lights on"}]
            try:
                r = await client.chat.completions.create(
                    model="tiny-random", messages=ask, tools=[SWITCH_TOOL],  # type: ignore[list-item]
                    tool_choice=force, max_tokens=48,  # type: ignore[arg-type]
                )  # fmt: skip
                choice = r.choices[0]
                assert choice.finish_reason == "tool_calls" and choice.message.content is None
                call = choice.message.tool_calls[0]  # type: ignore[index]
                assert call.type == "function" and call.function.name == "switch"
                assert call.id.startswith("call_")
                assert json.loads(call.function.arguments) in ({"on": True}, {"on": False})

                stream = await client.chat.completions.create(
                    model="tiny-random", messages=ask, tools=[SWITCH_TOOL],  # type: ignore[list-item]
                    tool_choice=force, max_tokens=48, stream=True,  # type: ignore[arg-type]
                )  # fmt: skip
                names, args, finish, text = [], [], None, []
                async for chunk in stream:
                    delta = chunk.choices[0].delta
                    text.append(delta.content or "")
                    for tc in delta.tool_calls or []:
                        assert tc.index == 0
                        names.append(tc.function.name or "")  # type: ignore[union-attr]
                        args.append(tc.function.arguments or "")  # type: ignore[union-attr]
                    finish = chunk.choices[0].finish_reason or finish
                assert finish == "tool_calls" and "".join(names) == "switch" and not "".join(text)
                assert json.loads("".join(args)) in ({"on": True}, {"on": False})

                # the call and its result go back; tool_choice none gives a plain answer
                follow = [
                    *ask,
                    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                    {"role": "tool", "tool_call_id": call.id, "content": '{"on": true}'},
                ]
                r = await client.chat.completions.create(
                    model="tiny-random", messages=follow, tools=[SWITCH_TOOL],  # type: ignore[arg-type, list-item]
                    tool_choice="none", max_tokens=8,
                )  # fmt: skip
                assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content
                assert not r.choices[0].message.tool_calls

                # a tool_choice naming no tool, or arguments that are no JSON: 400
                with pytest.raises(openai.BadRequestError):
                    await client.chat.completions.create(
                        model="x", messages=ask, tools=[SWITCH_TOOL],  # type: ignore[list-item]
                        tool_choice={"type": "function", "function": {"name": "nope"}},
                    )  # fmt: skip
                broken = {"name": "switch", "arguments": "{no"}
                bad = [*follow[:1], {"role": "assistant", "tool_calls": [
                    {"id": "c", "type": "function", "function": broken}
                ]}]  # fmt: skip
                with pytest.raises(openai.BadRequestError):
                    await client.chat.completions.create(model="x", messages=bad)  # type: ignore[arg-type]
            finally:
                await client.close()

    run(body(), timeout=120)


@pytest.mark.models
def test_openai_client_tool_call_from_smollm2(llm_host: HostFactory, smol: Path) -> None:
    """The real model under the grammar, auto: an answer or a call that fits the schema."""
    jsonschema = pytest.importorskip("jsonschema")
    port = free_port()

    async def body() -> None:
        async with llm_host(model=smol, http_port=port, threads=2):
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            try:
                for text in ("Turn the light on", "Switch the light off", "Hi there"):
                    r = await client.chat.completions.create(
                        model="smol", messages=[{"role": "user", "content": text}],
                        tools=[SWITCH_TOOL], tool_choice="required", max_tokens=48,  # type: ignore[list-item]
                    )  # fmt: skip
                    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
                    jsonschema.validate(
                        json.loads(call.function.arguments),
                        SWITCH_TOOL["function"]["parameters"],  # type: ignore[index]
                    )
            finally:
                await client.close()

    run(body(), timeout=300)
