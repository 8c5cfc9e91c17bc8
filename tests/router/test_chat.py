"""llm.chat through a real Host: streaming, the contract, priorities, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from loomd.messages import ChatDone, ChatMessage, ChatRequest, EventType, Policy, Topic
from loomd.router.cli import ask
from loomd.router.component import LlmComponent

from .conftest import HostFactory, run


def req(text: str = "hello", **kw: Any) -> ChatRequest:
    return ChatRequest((ChatMessage("user", text),), **kw)


def llm_of(host: Any) -> LlmComponent:
    c = host.get("llm")
    assert isinstance(c, LlmComponent)
    return c


class Sink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def flush(self) -> None:
        pass


def test_chat_streams_chunks_then_one_done(llm_host: HostFactory, tiny: Path) -> None:
    run(_chat_streams(llm_host, tiny))


async def _chat_streams(llm_host: HostFactory, tiny: Path) -> None:
    async with llm_host(model=tiny) as host:
        bus = llm_of(host).ctx.bus
        sink = Sink()
        done = await ask(bus, req(max_tokens=12, temperature=0.0), timeout=30, out=sink)
        assert done.error == ""
        assert done.route == "local"
        assert done.tokens > 0
        assert sink.parts and "".join(sink.parts) == done.text
        assert len(done.decision_id) == 32


async def _events(bus: Any, pattern: str) -> Any:
    sub = bus.subscribe(pattern, "reliable")
    await sub.ready()
    return sub


async def _open_turn(bus: Any, request: ChatRequest) -> tuple[Any, Any]:
    """Publish a turn by hand (subscribe first); return (reply subscription, request event)."""
    import os

    thread = os.urandom(16)
    reply_to = f"thread.{thread.hex()}.reply"
    sub = await _events(bus, reply_to)
    ev = await bus.publish(
        Topic.LLM_CHAT, request.to_payload(), thread_id=thread, reply_to=reply_to
    )
    return sub, ev


async def _until_done(sub: Any) -> tuple[int, ChatDone]:
    chunks = 0
    async for reply in sub:
        if reply.type == EventType.LLM_CHUNK:
            chunks += 1
        else:
            assert reply.type == EventType.LLM_DONE
            return chunks, ChatDone.from_payload(reply.payload)
    raise AssertionError("reply stream ended without a ChatDone")


LONG = 1500  # tokens: far more than a cancelled turn may produce


def test_voice_stop_cancels_within_a_token(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny, context=2048, max_tokens=4096) as host:
            llm = llm_of(host)
            bus = llm.ctx.bus
            sub, _ = await _open_turn(bus, req(max_tokens=LONG, priority="voice"))
            first = await sub.get(timeout=20)
            assert first.type == EventType.LLM_CHUNK
            await bus.publish(Topic.VOICE_STOP, {})
            _, done = await _until_done(sub)
            assert done.error == "cancelled" and done.text == ""
            assert 0 < done.tokens < LONG
            assert llm.engine is not None and llm.engine.counts["cancelled"] == 1
            # the model is free: the next turn runs at once
            done2 = await ask(bus, req(max_tokens=4), timeout=20)
            assert done2.error == "" and done2.tokens > 0

    run(body())


def test_requester_that_leaves_cancels_its_turn(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny, context=2048, max_tokens=4096) as host:
            llm = llm_of(host)
            bus = llm.ctx.bus
            sub, _ = await _open_turn(bus, req(max_tokens=LONG))
            assert (await sub.get(timeout=20)).type == EventType.LLM_CHUNK
            await sub.close()  # the requester goes away
            done2 = await ask(bus, req(max_tokens=4), timeout=30)
            assert done2.error == ""
            assert llm.engine is not None
            assert llm.engine.counts["cancelled"] == 1
            assert llm.engine.counts["generations"] == 2

    run(body())


def test_voice_jumps_the_queue(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny, context=2048, max_tokens=4096) as host:
            bus = llm_of(host).ctx.bus
            busy, _ = await _open_turn(bus, req(max_tokens=LONG, priority="voice"))
            assert (await busy.get(timeout=20)).type == EventType.LLM_CHUNK
            # both wait behind the running turn; the voice one was asked last
            bg, _ = await _open_turn(bus, req(max_tokens=4, priority="background"))
            voice, _ = await _open_turn(bus, req(max_tokens=4, priority="voice"))
            order: list[str] = []

            async def finish(name: str, sub: Any) -> None:
                await _until_done(sub)
                order.append(name)

            await bus.publish(Topic.VOICE_STOP, {})  # ends the running one (voice)
            await asyncio.gather(finish("bg", bg), finish("voice", voice), finish("x", busy))
            assert order.index("voice") < order.index("bg")

    run(body())


def test_full_queue_refuses_with_a_reason(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny, context=2048, max_tokens=4096, queue_max=1) as host:
            bus = llm_of(host).ctx.bus
            busy, _ = await _open_turn(bus, req(max_tokens=LONG, priority="voice"))
            assert (await busy.get(timeout=20)).type == EventType.LLM_CHUNK
            # two more turns, one queue slot: whichever is decided second is refused
            a, _ = await _open_turn(bus, req(max_tokens=4))
            b, _ = await _open_turn(bus, req(max_tokens=4))
            first = await asyncio.wait(
                [asyncio.ensure_future(_until_done(s)) for s in (a, b)],
                return_when=asyncio.FIRST_COMPLETED,
            )
            (done_first,) = first[0]
            assert "queue is full" in done_first.result()[1].error
            await bus.publish(Topic.VOICE_STOP, {})  # frees the model for the queued one
            (other,) = first[1]
            assert (await other)[1].error == ""

    run(body())


def test_bad_request_gets_an_error_and_the_rest_runs(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny) as host:
            bus = llm_of(host).ctx.bus
            errors = await _events(bus, Topic.ERROR)
            reply = await bus.request(Topic.LLM_CHAT, {"messages": []}, timeout=10)
            done = ChatDone.from_payload(reply.payload)
            assert "messages is empty" in done.error
            err = await errors.get(timeout=5)
            assert err.payload["code"] == "llm_bad_request"
            assert llm_of(host).bad_requests == 1
            ok = await ask(bus, req(max_tokens=4), timeout=20)
            assert ok.error == ""

    run(body())


def test_private_request_without_usable_model_is_denied(
    llm_host: HostFactory, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"not a model at all" * 100)

    async def body() -> None:
        async with llm_host(model=corrupt) as host:
            llm = llm_of(host)
            assert "not a valid GGUF file" in llm.problem
            done = await ask(llm.ctx.bus, req(policy=Policy(privacy="private")), timeout=10)
            assert done.route == "deny"
            assert "no local model" in done.error
            explained = await llm.commands()["explain"].call([done.decision_id], {})
            assert explained["decision"]["rule"] == "privacy-no-local"

    run(body())


def test_model_too_big_is_refused_with_a_clear_message(
    llm_host: HostFactory, tiny: Path, tmp_path: Path
) -> None:
    from loomd.router.facts import fit_problem

    # a valid GGUF header in a sparse 1 TB file: bigger than any board, no disk used
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(tiny.read_bytes())
    with huge.open("r+b") as f:
        f.truncate(2**40)

    async def body() -> None:
        async with llm_host(model=huge) as host:
            llm = llm_of(host)
            assert llm.engine is not None and not llm.engine.loaded
            assert "needs about" in llm.problem and "MB available" in llm.problem
            done = await ask(llm.ctx.bus, req(policy=Policy(privacy="local-only")), timeout=10)
            assert done.route == "deny"

    run(body())
    # the context counts too (KV cache from the GGUF header's shape)
    assert fit_problem(tiny, 2048, 100.0)[0] == ""
    problem, need = fit_problem(tiny, 1048576, 100.0)
    assert need > 100.0 and "1048576-token context" in problem


def test_idle_unload_and_reload_on_use(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny, idle_unload_s=0.2, load_at_start=False) as host:
            llm = llm_of(host)
            assert llm.engine is not None and not llm.engine.loaded
            assert (await ask(llm.ctx.bus, req(max_tokens=4), timeout=20)).error == ""
            assert llm.engine.counts["loads"] == 1
            async with asyncio.timeout(10):
                await llm.engine.unloaded.wait()
            assert (await ask(llm.ctx.bus, req(max_tokens=4), timeout=20)).error == ""
            assert llm.engine.counts["loads"] == 2

    run(body())


def test_decisions_are_published_stored_and_explained(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny) as host:
            llm = llm_of(host)
            decisions = await _events(llm.ctx.bus, Topic.ROUTE_DECISION)
            done = await ask(llm.ctx.bus, req(max_tokens=4), timeout=20)
            ev = await decisions.get(timeout=5)
            assert ev.payload["id"] == done.decision_id
            assert ev.payload["route"] == "local" and ev.payload["rule"] == "no-cloud"
            got = await llm.commands()["explain"].call([done.decision_id[:10]], {})
            assert got["decision"]["facts"]["local_loaded"] is True
            recent = await llm.commands()["recent"].call([5], {})
            assert [d["id"] for d in recent["decisions"]] == [done.decision_id]
            dry = await llm.commands()["test"].call(["hi", "local-only"], {})
            assert dry["route"] == "local" and dry["rule"] == "privacy"

    run(body())


def test_prompt_longer_than_the_context_is_a_clear_error(llm_host: HostFactory, tiny: Path) -> None:
    async def body() -> None:
        async with llm_host(model=tiny, context=64) as host:
            bus = llm_of(host).ctx.bus
            done = await ask(bus, req("word " * 400, max_tokens=4), timeout=20)
            assert done.route == "local" and "prompt does not fit" in done.error
            ok = await ask(bus, req("hi", max_tokens=4), timeout=20)
            assert ok.error == ""

    run(body())


def test_chat_stream_yields_chunks_then_done_and_leaving_cancels(
    llm_host: HostFactory, tiny: Path
) -> None:
    from loomd.messages import ChatChunk
    from loomd.router.client import chat_stream

    async def body() -> None:
        async with llm_host(model=tiny, context=2048, max_tokens=4096) as host:
            llm = llm_of(host)
            kinds = [type(p).__name__ async for p in chat_stream(llm.ctx.bus, req(max_tokens=5))]
            assert kinds[-1] == "ChatDone" and set(kinds[:-1]) == {"ChatChunk"}
            async with contextlib.aclosing(chat_stream(llm.ctx.bus, req(max_tokens=LONG))) as s:
                async for piece in s:
                    assert isinstance(piece, ChatChunk)
                    break  # the agent loses interest: the router cancels the generation
            done = await ask(llm.ctx.bus, req(max_tokens=4), timeout=30)
            assert done.error == ""
            assert llm.engine is not None and llm.engine.counts["cancelled"] == 1

    run(body())


def test_thread_chooser_measures_then_prefers_the_fastest() -> None:
    from loomd.router.engine import ThreadChooser

    c = ThreadChooser(cores=2, explore=4)
    tried = [c.choose(), c.choose()]
    assert tried == [2, 2]  # nothing measured yet: the largest first
    c.record(2, 30.0)
    assert c.choose() == 1  # the untried count next
    c.record(1, 70.0)  # one thread is faster when a core is busy elsewhere
    picks = [c.choose() for _ in range(8)]
    assert picks.count(1) >= 6 and 2 in picks  # mostly the best, sometimes a re-check
    assert ThreadChooser(fixed=3).choose() == 3


def test_loomctl_ask_without_the_component_says_so(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import LoomdProcess

    proc = LoomdProcess(tmp_path)  # [llm] stays disabled, as packaged
    try:
        proc.start()
        r = subprocess.run(
            [sys.executable, "-m", "loomd.ctl", "--socket", str(proc.socket), "ask", "hi"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
        )
        assert r.returncode == 1
        assert "the llm component is not running" in r.stderr
    finally:
        proc.close()


def test_decision_ring_is_bounded(llm_host: HostFactory) -> None:
    from loomd.router.component import DECISIONS_NS

    async def body() -> None:
        async with llm_host(decisions_kept=1) as host:  # no model: every private turn denied
            llm = llm_of(host)
            ids = []
            for _ in range(65):
                done = await ask(llm.ctx.bus, req(policy=Policy(privacy="private")), timeout=10)
                assert done.route == "deny"
                ids.append(done.decision_id)
            recent = await llm.commands()["recent"].call([100], {})
            assert [d["id"] for d in recent["decisions"]] == ids[-1:]
            kv = llm.ctx.state.kv(DECISIONS_NS)
            assert len(kv.keys("d/")) == 1 and len(kv.keys("r/")) == 1

    run(body())


def test_reload_applies_policy_defaults_live(llm_host: HostFactory, tiny: Path) -> None:
    import dataclasses

    async def body() -> None:
        async with llm_host(model=tiny) as host:
            llm = llm_of(host)
            before = await llm.commands()["test"].call(["hi"], {})
            assert before["policy"]["privacy"] == "sensitive"
            s = llm.settings
            new = dataclasses.replace(
                s, policy=dataclasses.replace(s.policy, privacy="local-only"), queue_max=3
            )
            assert await llm.reload(new) == []
            after = await llm.commands()["test"].call(["hi"], {})
            assert after["policy"]["privacy"] == "local-only" and after["rule"] == "privacy"
            assert llm.engine is not None and llm.engine.settings.queue_max == 3

    run(body())
