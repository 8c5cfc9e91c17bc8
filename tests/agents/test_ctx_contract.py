"""One contract for `AgentCtx`, run against the in-process ctx (over `LocalBus`) and the SDK
ctx (over `loomd.sdk.Client` on the daemon's real socket). Every primitive is also checked to
leave no subscription and no pending entry behind, including when it times out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvloop

from loomd.agents import AgentCtx, BarrierTimeout, CallError, FanoutTimeout
from loomd.agents.component import AgentsComponent
from loomd.agents.ctx import LocalBackend
from loomd.agents.sdk import sdk_ctx
from loomd.sdk import Client
from tests.agents.helpers import agent_state, running, wait_until, write_plugin

TEAM = """
import asyncio
from loomd.agents import Agent, CapabilityError, capability

class Member(Agent):
    delay = 0.0
    async def on_event(self, ctx, event):
        if event.type == "cnet.cfp":
            await ctx.bid(event, self.score, who=self.id)
        elif event.type == "cnet.award":
            await ctx.reply(event, {"done_by": self.id, "task": event.payload["cfp"]})
        elif event.type == "cnet.reject":
            pass
        else:
            await asyncio.sleep(self.delay)
            await ctx.reply(event, self.id)

class A(Member):
    id = "a"; topics = ("team.a", "cnet.task"); score = 0.4
class B(Member):
    id = "b"; topics = ("team.b", "cnet.task"); score = 0.9
class C(Member):
    id = "c"; topics = ("team.c", "cnet.task"); score = 0.1; delay = 3.0

@capability("math.add", version=1)
def add1(a: int, b: int) -> int:
    return a + b

class Calc(Agent):
    id = "calc"

    @capability("math.add", version=2)
    async def add2(self, a: int, b: int = 0) -> dict:
        \"\"\"Add two integers.

        Args:
            a: the first
            b: the second
        \"\"\"
        return {"sum": a + b}

    @capability("math.div")
    def div(self, a: float, b: float) -> float:
        if b == 0:
            raise CapabilityError("division by zero")
        return a / b
"""


def counts(comp: AgentsComponent) -> tuple[int, int, int]:
    broker = comp.ctx.services.broker
    assert broker is not None
    return len(list(broker.subscriptions())), comp.pending(), len(comp.barriers)


async def contract(ctx: AgentCtx, comp: AgentsComponent, peers: list[AgentCtx]) -> None:
    # A ctx keeps one reply subscription for its capability calls, and an SDK client one
    # for its requests, opened on first use: count after those, so what is measured is
    # what each primitive leaves behind.
    assert await ctx.call("math.add@1", a=0, b=0) == 0
    for c in (ctx, *peers):
        assert (await c.request("team.a", "warm", timeout=5)).payload == "a"
    before = counts(comp)
    assert before[1] == 0, "an idle component has nothing pending (or the drain would wait)"

    # request / reply / publish
    r = await ctx.request("team.a", "hi", timeout=5)
    assert r.payload == "a"

    # fanout strategies
    fast = ["team.a", "team.b"]
    assert len(await ctx.fanout(fast, 1, strategy="any", timeout=5)) == 1
    assert len(await ctx.fanout(fast, 1, strategy="first_k", k=2, timeout=5)) == 2
    got = await ctx.fanout([*fast, "team.c"], 1, strategy="majority", timeout=5)
    assert sorted(e.payload for e in got) == ["a", "b"]
    with pytest.raises(FanoutTimeout) as info:
        await ctx.fanout([*fast, "team.c"], 1, strategy="all", timeout=0.5)
    assert sorted(e.payload for e in info.value.replies) == ["a", "b"]

    # barrier: three participants meet; one alone times out and leaves nothing behind
    arrived = await asyncio.gather(*(p.barrier("meet", 3, timeout=5) for p in [ctx, *peers]))
    assert arrived == [3, 3, 3]
    with pytest.raises(BarrierTimeout):
        await ctx.barrier("lonely", 2, timeout=0.3)
    assert comp.barriers == {}

    # contract net: three bidders, the highest score wins and does the task
    award = await ctx.contract_net("cnet.task", {"job": "x"}, window=0.5, timeout=5)
    assert award.winner == "b" and award.bid["score"] == 0.9
    assert award.result == {"done_by": "b", "task": {"job": "x"}}
    assert {"a", "b"} <= {b.payload["who"] for b in award.bids}  # c may still be busy

    # capabilities: highest version unless named; params checked before the provider runs
    assert await ctx.call("math.add", a=1, b=2) == {"sum": 3}
    assert await ctx.call("math.add@1", a=1, b=2) == 3
    with pytest.raises(CallError) as bad:
        await ctx.call("math.add", a="one")
    assert bad.value.code == "invalid_params" and "a:" in bad.value.message
    with pytest.raises(CallError) as missing:
        await ctx.call("math.add@1", a=1)
    assert missing.value.code == "invalid_params" and "b: required" in missing.value.message
    with pytest.raises(CallError) as refused:
        await ctx.call("math.div", a=1, b=0)
    assert refused.value.code == "capability_error" and "division by zero" in str(refused.value)
    assert (await ctx.try_call("no.such")).code == "provider_unavailable"

    # state: the agent's own namespace
    await ctx.state.put("k1", {"n": 1})
    await ctx.state.put("k2", [1, 2])
    assert await ctx.state.get("k1") == {"n": 1}
    assert await ctx.state.get("nope", "dflt") == "dflt"
    assert await ctx.state.items("k") == [("k1", {"n": 1}), ("k2", [1, 2])]
    assert await ctx.state.delete("k1") is True
    assert await ctx.state.delete("k1") is False
    ctx.log.info("contract done")

    # nothing left behind (socket unsubscribes travel asynchronously)
    await wait_until(lambda: counts(comp) == before, what=f"counts back to {before}")


async def _team(root: Path) -> None:
    write_plugin(root, "team", TEAM)


@asynccontextmanager
async def _daemon(root: Path) -> AsyncIterator[AgentsComponent]:
    await _team(root)
    async with running(root) as (_host, comp):
        for aid in ("a", "b", "c", "calc"):
            await wait_until(lambda a=aid: agent_state(comp, a) == "running", what=aid)
        yield comp


def test_contract_in_process(short_tmp: Path) -> None:
    async def main() -> None:
        async with _daemon(short_tmp) as comp:
            assert comp.ctx.services.state is not None
            backend = LocalBackend(comp.broker, comp.ctx.services.state.kv)
            ctxs = [AgentCtx(f"t{i}", comp.ctx.bus, backend) for i in range(3)]
            await contract(ctxs[0], comp, ctxs[1:])

    uvloop.run(main())


def test_contract_over_the_sdk(short_tmp: Path) -> None:
    async def main() -> None:
        async with _daemon(short_tmp) as comp:
            endpoint = f"ipc://{short_tmp / 'run' / 'bus.sock'}"
            async with (
                Client(endpoint, name="t0") as c0,
                Client(endpoint, name="t1") as c1,
                Client(endpoint, name="t2") as c2,
            ):
                ctxs = [sdk_ctx(c, f"t{i}") for i, c in enumerate((c0, c1, c2))]
                await contract(ctxs[0], comp, ctxs[1:])

    uvloop.run(main())
